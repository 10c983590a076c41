"""One place that decides how a user's mistake is reported.

A `UserError` is a problem with the user's input or machine (a missing path, a bad flag, a
profile from another schema). Entry points print it as one line naming the input and exit
non-zero; `--debug` shows the traceback as well. Anything else is our bug and keeps its
traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""

    exit_code = 2


# A run that stopped itself with its work saved (it diverged, or its RAM reached the limit):
# neither 2 (a mistake refused before the run) nor 137 (the OOM killer's SIGKILL), so that a
# script (the search) tells it from both.
STOPPED_EXIT_CODE = 3


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


class UserErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one UserError line instead of usage + exit 2;
    subcommand parsers inherit it."""

    # A CLI with subcommands sets this so the line names whose flag was wrong
    # ("autotune probe: argument --devices: ...").
    name_in_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}" if self.name_in_errors else message)


class SubcommandParser(UserErrorParser):
    """UserErrorParser for a CLI with subcommands: the error names the subcommand."""

    name_in_errors = True


# The longest time limit a flag takes: a week. Longer limits are typos, and inf/nan would
# disable the kill that keeps a hung child from holding a run.
MAX_FLAG_SECONDS = 7 * 86400.0


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse `type` for an integer flag bounded on both sides (absurd values included)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value
    return parse


def float_in(lo: float, hi: float, lo_open: bool = True) -> Callable[[str], float]:
    """An argparse `type` for a finite float in (lo, hi] (or [lo, hi] with lo_open=False)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {text}")
        return value
    return parse
