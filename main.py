#!/usr/bin/env python
"""Train, erase or distill: `python main.py --base configs/a.yaml configs/b.yaml key=value ...`."""

import sys

from unlearn.cli import run

if __name__ == "__main__":
    sys.exit(run())
