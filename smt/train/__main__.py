"""`python -m smt.train` (see smt.train)."""
import sys

from autotune.errors import run_cli
from smt.train.cli import PROG, main

if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
