"""`python -m vslerp.ui ...`: the `vslerp` command line (as the console script)."""

import sys

from vslerp.ui.cli import main

if __name__ == "__main__":
    sys.exit(main())
