"""``python -m scoresde``: the ``scoresde`` command (see :mod:`scoresde.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
