"""pixelforge's one entry point: ``python main.py -t [experiment=NAME] [key=value ...]`` (see --help)."""

import sys

from pixelforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
