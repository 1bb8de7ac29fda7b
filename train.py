"""Entry point for `accelerate launch train.py ...` (same options as `bacon-zoo train`)."""

import sys

from bacon_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
