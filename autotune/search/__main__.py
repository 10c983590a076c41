"""`python -m autotune.search`: the same command as `python -m autotune search`."""
import sys

from autotune.search.cli import entry

sys.exit(entry())
