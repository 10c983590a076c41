"""`python -m smt.train` (see smt.train)."""
import sys

from autotune.errors import run_cli
from smt.say import PROG
from smt.train.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
