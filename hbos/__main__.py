"""`python -m hbos`: the hbos command line (hbos.cli)."""

import sys

from hbos.cli import main

sys.exit(main())
