"""One place that decides how a user's mistake is reported.

A `UserError` is a problem with the user's input or machine (a missing path, a bad flag, a
profile from another schema). Entry points print it as one line naming the input and exit
non-zero; `--debug` shows the traceback as well. Anything else is our bug and keeps its
traceback.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""

    exit_code = 2


def wants_debug(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            prog: str = "smt-autotune") -> int:
    """Call `main(argv)` and turn user errors into one line on stderr.

    Returns the exit code instead of exiting so that tests can call entry points in-process.
    """
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        if wants_debug(argv):
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
