"""``python -m mibench_lib.studies``: the ``mibench`` command line."""

import sys

from mibench_lib.studies.cli import main

if __name__ == "__main__":
    sys.exit(main())
