"""The command line, autotune's top level (search/cli.py holds `autotune search`'s flags).

`python -m autotune {probe,show,plan,search,cache}`.

Each subcommand registers itself with `add_parser(subparsers)` and sets `func(args) -> int`.
`probe`, `search` and `cache` live in other modules and are imported only when registering
them, so one that is missing or broken does not take the others down.
"""
from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.bounds import count_arg
from autotune.errors import (MAX_FLAG_SECONDS, SubcommandParser, UserError, float_in, int_in,
                             run_cli)
from autotune.outdir import check_out_dir, check_out_file, replace_dir
from autotune.workload import DEFAULT_WORKLOAD

log = logging.getLogger(__name__)


# Far above any real recipe, low enough to catch a typo before hours of probing (the counts'
# bounds, --devices among them, are autotune.bounds.COUNTS, shared with smt.train).
MAX_EFFECTIVE_BATCH = 65536


# Bounded flags (autotune.errors holds the argparse types for every CLI in the project).
_positive_seconds = float_in(0.0, MAX_FLAG_SECONDS)


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _budget_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=count_arg("devices"), default=None,
                   help="devices to train on (default: every GPU, or 1 CPU process)")
    p.add_argument("--ram-budget", default=None, metavar="SIZE",
                   help="RAM the run may use, e.g. 24GB (default: 85%% of available)")
    p.add_argument("--vram-budget", default=None, metavar="SIZE",
                   help="GPU memory per device (default: each GPU's memory less 10%%)")
    p.add_argument("--effective-batch", type=int_in(1, MAX_EFFECTIVE_BATCH), default=16, metavar="N",
                   help="samples per optimizer step to keep with accumulation (default 16)")


# -- probe ------------------------------------------------------------------------------------

def add_probe(sub: Any) -> None:
    p = sub.add_parser("probe", help="measure this machine and the workload, write a profile",
                       description="Measure the machine, the dataset map, the model and the "
                                   "loader; decide every setting; write profiles/NAME.json.")
    p.add_argument("--data", default=None, metavar="SRC",
                   help="hub id, save_to_disk folder or image folder (default: embedded set)")
    p.add_argument("--preset", default="paper", help="model preset (default: paper)")
    _budget_flags(p)
    p.add_argument("--time-budget", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="stop measuring after this long (default 90)")
    p.add_argument("--staff-space", type=float_in(1.0, 200.0, lo_open=False), default=None,
                   metavar="PX", help="legibility target: the reduce ratio brings the measured "
                   "staff space (px between staff lines) to this (default 8)")
    p.add_argument("--name", default=None, help="profile name (default: from preset + machine)")
    p.add_argument("--out", default=None, metavar="PATH", help="write the profile here")
    _debug(p)
    p.set_defaults(func=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    from autotune.probe import run_probe       # heavy (torch, datasets): only when probing
    return int(run_probe(args) or 0)


SHOW_PLOT_COMMAND = "autotune show --plot"      # the --plot folder's marker (autotune.outdir)


# -- show -------------------------------------------------------------------------------------

def add_show(sub: Any) -> None:
    p = sub.add_parser("show", help="print a profile's settings and reasons; plot its curves",
                       description="Print a profile: setting, value, source (measured, "
                                   "predicted, rule) and the measurement behind it.")
    p.add_argument("profile", help="profile name (in profiles/) or path to a JSON file")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="also write map.png, model.png, loader.png into DIR")
    _debug(p)
    p.set_defaults(func=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from autotune.profile import load_profile, resolve_profile_path
    from autotune.show import render_profile, write_plots

    path = resolve_profile_path(args.profile)
    if args.plot:
        check_out_dir(args.plot, SHOW_PLOT_COMMAND, [path], flag="--plot")
    profile = load_profile(path)
    console = Console()
    render_profile(profile, console)
    if args.plot:
        with replace_dir(args.plot, SHOW_PLOT_COMMAND, [path], flag="--plot") as tmp:
            names = [p.name for p in write_plots(profile, tmp)]
        if names:
            console.print("plots: " + ", ".join(str(Path(args.plot) / n) for n in names))
        else:
            console.print("no curves to plot: this profile holds no measurements")
    return 0


# -- plan -------------------------------------------------------------------------------------

def add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="decide settings for a machine you do not have",
                       description="Decide settings for the machine in SPEC.json from a "
                                   "profile's workload measurements and the model's memory "
                                   "estimate; figures not measured there are marked predicted.")
    p.add_argument("--hardware", required=True, metavar="SPEC.json",
                   help='target machine: {"cpu_count": 4, "ram": "30GB", "gpus": [{"name": '
                        '"Tesla T4", "memory": "15GiB", "capability": [7, 5]}], "gpu_count": 2}')
    p.add_argument("--from", dest="source", default=None, metavar="PROFILE",
                   help="profile whose measurements to use (name or path)")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD,
                   help="workload for the memory estimate")
    p.add_argument("--preset", default=None, help="model preset of the workload")
    _budget_flags(p)
    p.add_argument("--name", default=None, help="profile name (default: the spec's name)")
    p.add_argument("--out", default=None, metavar="PATH", help="write the profile here")
    _debug(p)
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from autotune.plan import run_plan
    try:
        return run_plan(args)
    except ValueError as exc:        # a bad size or budget flag
        raise UserError(str(exc)) from None


# -- parser -----------------------------------------------------------------------------------

# Subcommands other modules own: registered when their module imports.
_HOOKS = {"search": "autotune.search", "cache": "autotune.cache"}


def build_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(
        prog="autotune", description="Measure the machine, pick the training settings, "
                                     "explain why.")
    _debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_probe(sub)
    add_show(sub)
    add_plan(sub)
    for name, module_name in _HOOKS.items():
        try:
            module = importlib.import_module(module_name)
            module.add_parser(sub)
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the rest
            log.debug("subcommand %s unavailable: %s", name, exc)
            p = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})")
            _debug(p)
            p.set_defaults(func=_unavailable(name, exc))
    return parser


def _unavailable(name: str, exc: BaseException) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise UserError(f"`{name}` is unavailable here: {exc}")
    return run


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and dispatch; raises UserError for user mistakes (see `main`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if getattr(args, "out", None):          # probe/plan: before measuring anything
        check_out_file(args.out)
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    return run_cli(run, argv, prog="autotune")
