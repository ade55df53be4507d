"""The doit adapter: what dodo.py imports to build its task graph (light modules only).

    adapter   Stage, stage_task(), action(), late(): a stage as a doit task; config and
              graph-time errors as one line
    table     every build stage with the function that runs it and the config keys it reads
    params    the command-line params of the tasks that take them
    checker   SizeAwareChecker, doit's file check (mtime and size, md5 for small files)
"""
