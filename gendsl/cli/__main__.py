"""``python -m gendsl.cli``: the same as the ``gendsl`` command."""

import sys

from gendsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
