"""`python -m autotune ...`: see autotune/cli.py."""
from autotune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
