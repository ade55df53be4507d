import sys

from hbos.cli import main

sys.exit(main())
