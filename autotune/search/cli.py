"""The command line, `autotune search`'s part (autotune/cli.py is the top level that hands to it).

`python -m autotune search`: parse flags, build the search, run it, report and save."""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autotune.errors import MAX_FLAG_SECONDS, UserError, float_in
from autotune.outdir import check_out_dir, check_out_file, check_run_dir, replace_dir
from autotune.search import results
from autotune.search.feasible import (FitPredictor, MemoryPredictor, NullPredictor,
                                    fits_from_profile, offset_from_profile, workload_predictor)
from autotune.search.objectives import METRICS, OBJECTIVES, make_objective
from autotune.search.space import space_for
from autotune.search.storage import (GRACE_S, HEARTBEAT_S, JOURNAL_PREFIX, check_journal,
                                     dashboard_command, mask_url)
from autotune.search.searchconfig import SearchConfig
from autotune.search.study import run_study
from autotune.units import parse_size
from autotune.workload import DEFAULT_WORKLOAD

# `--workload none` still launches trials as this workload declares (its flags and report).
TRIAL_WORKLOAD_FOR_NONE = DEFAULT_WORKLOAD
SEARCH_PLOT_COMMAND = "autotune search --plot"     # the --plot folder's marker (autotune.outdir)

DESCRIPTION = """\
Search training settings with Optuna. Each trial is a short real training run in a child
process; settings the memory model predicts over budget are rejected before they run.
Several processes or machines can join one study through a shared --storage URL
(e.g. postgresql://user:pass@host/db); an interrupted search resumes to --trials finished
trials in the same storage and study."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="SRC", help="dataset source as for smt.train "
                   "(hub id, save_to_disk folder, image folder; default: the embedded dataset)")
    p.add_argument("--preset", metavar="P", help="model preset (paper, small, debug; default: "
                   "the trainer's)")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="throughput",
                   help="throughput: samples/s; quality: validation metric after a fixed "
                   "sample budget, with pruning; both: Pareto front of the two (default: "
                   "throughput)")
    p.add_argument("--metric", choices=METRICS, default="val_loss",
                   help="validation metric for quality/both (default val_loss: a short trial's "
                   "SER is saturated; use val_ser for long trials)")
    p.add_argument("--trials", type=int, default=20, metavar="N",
                   help="finished trials the study should end with (default 20)")
    p.add_argument("--timeout", type=float_in(0.0, MAX_FLAG_SECONDS), metavar="SECONDS",
                   help="start no new trial after this many seconds")
    p.add_argument("--trial-timeout", type=float_in(0.0, MAX_FLAG_SECONDS), default=900.0, metavar="SECONDS",
                   help="kill a trial (its whole process tree) whose training runs longer and "
                   "mark it failed (default 900)")
    p.add_argument("--setup-timeout", type=float_in(0.0, MAX_FLAG_SECONDS), default=3600.0, metavar="SECONDS",
                   help="limit before a trial's training starts: data preparation at a new "
                   "reduce ratio and start-up (default 3600)")
    p.add_argument("--steps-per-trial", type=int, default=50, metavar="K",
                   help="optimizer steps per trial at the base effective batch; quality trials "
                   "keep the sample count K x base effective batch fixed (default 50)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: "
                   "sqlite:///RUN_DIR/search.db)")
    p.add_argument("--study", metavar="NAME", help="study name (default smt-OBJECTIVE-PRESET)")
    p.add_argument("--run-dir", metavar="DIR", help="trial folders and logs (default "
                   "runs/search/STUDY)")
    p.add_argument("--from", dest="from_profile", metavar="PROFILE",
                   help="probe profile (name or path): its settings are the centre of the "
                   "space and its measurements the memory model")
    p.add_argument("--memory-budget", metavar="SIZE", help="reject points predicted above this "
                   "(e.g. 14GiB; default: the probe's budget, GPU memory less 10%%, else 85%% of available RAM less 10%%)")
    p.add_argument("--save-profile", metavar="NAME", help="write the best trial (or --pick) as "
                   "profiles/NAME.json for smt.train --profile NAME")
    p.add_argument("--pick", type=int, metavar="TRIAL", help="trial number to save (default: "
                   "the best; for --objective both the Pareto knee)")
    p.add_argument("--plot", metavar="DIR", help="write optimization history (and the Pareto "
                   "front) as PNG into DIR")
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument("--trainer", metavar="CMD", help="command a trial runs instead of the "
                   "workload's own (SMT: 'python -m smt.train'); it gets the same flags")
    p.add_argument("--workload", default=DEFAULT_WORKLOAD, metavar="NAME",
                   help="workload whose trials, memory estimate and fingerprint the search "
                   "uses (default smt; 'none': no memory estimate or fingerprint, the trials "
                   "still take smt's flags, for a stand-in --trainer)")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, metavar="SECONDS",
                   help=f"trial heartbeat; a trial silent for 4x this is failed (default "
                   f"{HEARTBEAT_S})")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="search training settings with Optuna",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_search)


def load_profile_arg(name: str) -> dict[str, Any]:
    """A profile by path or by name in the profiles folder, validated by autotune.profile."""
    from autotune.profile import ProfileError, load_profile, resolve_profile_path
    try:
        return load_profile(resolve_profile_path(name)).to_dict()
    except ProfileError as exc:
        raise UserError(f"--from {name}: {exc}") from exc


def memory_budget(args: argparse.Namespace, profile: dict[str, Any] | None) -> tuple[int, str]:
    """`--memory-budget`, else the probe's own budget rules (autotune.decide.Budgets) applied
    to the profile's hardware, or to this machine when there is no profile."""
    if args.memory_budget:
        try:
            return parse_size(args.memory_budget), "--memory-budget"
        except ValueError as exc:
            raise UserError(f"--memory-budget: {exc}") from exc
    from autotune.decide import Budgets
    from autotune.records import HardwareInfo
    budgets = Budgets()
    if profile is not None:
        hw, where = HardwareInfo.from_dict(profile["hardware"]), "the profile's"
    else:
        from autotune.hardware import inventory
        hw, where = inventory(), "this machine's"
    if hw.gpus:
        smallest = min(g.memory_bytes for g in hw.gpus)
        return (budgets.vram_budget(smallest),
                f"{where} smallest GPU less {budgets.vram_margin:.0%}")
    ram = int(budgets.ram_budget(hw) * (1 - budgets.ram_margin))
    return ram, (f"{budgets.ram_fraction:.0%} of {where} available RAM less "
                 f"{budgets.ram_margin:.0%} margin")


def choose_predictor(profile: dict[str, Any] | None, preset: str | None,
                     data: str | None, workload: str = DEFAULT_WORKLOAD) -> MemoryPredictor:
    if profile is not None:
        fits = fits_from_profile(profile)
        if fits:
            kind = "predicted" if all(f.source == "predicted" for f in fits) else "measured"
            return FitPredictor(fits, offset_bytes=offset_from_profile(profile),
                                source=f"{kind} fits in profile {profile.get('name', '?')}")
    if workload == "none":
        return NullPredictor(source="none (--workload none and no profile fits)")
    # smt.train's own default preset when a trial passes none (--max-steps is always given).
    return workload_predictor(preset or "paper", data, workload)


def describe_workload(preset: str | None, data: str | None,
                      workload: str = DEFAULT_WORKLOAD) -> dict[str, Any]:
    """The profile's `workload` section with the fingerprint `--profile auto` matches on."""
    try:
        if workload == "none":
            raise LookupError("--workload none")
        from autotune.workload import load_workload
        return dict(load_workload(workload, data=data, preset=preset or "paper").describe())
    except Exception:  # the workload layer is unavailable: name what the trials used
        return {k: v for k, v in (("dataset", data), ("model", preset)) if v}


def build_config(args: argparse.Namespace) -> tuple[SearchConfig, dict[str, Any] | None, str]:
    for flag, value, minimum in (("--trials", args.trials, 1),
                                 ("--steps-per-trial", args.steps_per_trial, 1),
                                 ("--heartbeat", args.heartbeat, 1)):
        if value < minimum:
            raise UserError(f"{flag} must be >= {minimum}, got {value}")
    if args.trial_timeout <= 0 or args.setup_timeout <= 0 or \
            (args.timeout is not None and args.timeout <= 0):
        raise UserError("--timeout, --trial-timeout and --setup-timeout must be positive")
    profile = load_profile_arg(args.from_profile) if args.from_profile else None
    try:
        space = space_for(args.objective, profile)
    except ValueError as exc:
        raise UserError(f"--from {args.from_profile}: bad settings ({exc})") from exc
    objective = make_objective(args.objective, args.metric)
    budget, budget_why = memory_budget(args, profile)
    predictor = choose_predictor(profile, args.preset, args.data, args.workload)
    trainer = tuple(shlex.split(args.trainer)) if args.trainer is not None else None
    if trainer is not None and not trainer:
        raise UserError("--trainer: empty command")
    name = args.study or f"smt-{objective.name}-{args.preset or 'default'}"
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / "search" / name
    # A file or an unwritable place is one line now, before the intro and any trial.
    check_run_dir(run_dir, flag="--run-dir")
    if args.storage and args.storage.startswith(JOURNAL_PREFIX):
        check_journal(args.storage[len(JOURNAL_PREFIX):])
    config = SearchConfig(
        objective=objective, space=space, run_dir=run_dir, trials=args.trials,
        steps_per_trial=args.steps_per_trial, timeout_s=args.timeout,
        trial_timeout_s=args.trial_timeout, setup_timeout_s=args.setup_timeout,
        storage=args.storage, study_name=name,
        preset=args.preset, data=args.data, seed=args.seed, memory_budget_bytes=budget,
        predictor=predictor, trainer=trainer, heartbeat_s=args.heartbeat,
        workload=TRIAL_WORKLOAD_FOR_NONE if args.workload == "none" else args.workload,
        grace_s=4 * args.heartbeat)
    return config, profile, budget_why


def _intro(console: Console, config: SearchConfig, budget_why: str, args: argparse.Namespace) -> None:
    t = Table(title=f"search {config.name}: {config.objective.name} "
              f"({', '.join(config.objective.names)}), bounds from {config.space.source}",
              title_justify="left")
    t.add_column("knob")
    t.add_column("range")
    for knob, text in config.space.describe():
        t.add_row(knob, text)
    console.print(t)
    budget = config.memory_budget_bytes or 0
    console.print(f"memory model: {config.predictor.source}; budget {budget / 2**30:.2f} GiB "
                  f"({budget_why})")
    console.print(f"storage: {mask_url(config.storage_url)}  run folder: {config.run_dir}")
    console.print(f"trainer: {' '.join(config.trainer_command())}  steps per trial: "
                  f"{config.steps_per_trial}  time limits: {config.trial_timeout_s:g} s of training, "
                  f"{config.setup_timeout_s:g} s to start")
    join = ["python -m autotune search", f"--storage '{mask_url(config.storage_url)}'",
            f"--study {config.name}", f"--objective {config.objective.name}",
            f"--trials {config.trials}"]
    if args.objective != "throughput":
        join.append(f"--metric {config.objective.metric}")
    for flag, value in (("--preset", config.preset), ("--data", config.data),
                        ("--from", args.from_profile)):
        if value:
            join.append(f"{flag} {value}")
    console.print(f"another worker joins with: {' '.join(join)}")
    console.print(f"watch it with: {dashboard_command(config.storage_url)}  "
                  "(pip install optuna-dashboard)")


def run_search(args: argparse.Namespace) -> int:
    # A log file or pipe gets a wide table instead of rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    # Outputs first: a bad path must not cost a search.
    if args.save_profile:
        check_out_file(results.profile_path(args.save_profile), "--save-profile")
    if args.plot:
        check_out_dir(args.plot, SEARCH_PLOT_COMMAND, flag="--plot")
    config, profile, budget_why = build_config(args)
    _intro(console, config, budget_why, args)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler, `kill`) must end the running trial's process tree too: turned
        # into KeyboardInterrupt, Optuna marks the trial failed and the runner kills the child.
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        previous = signal.signal(signal.SIGTERM, _term)
    try:
        outcome = run_study(config, console=console)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    study = outcome.study
    console.print(f"stopped: {outcome.stop_reason} after {outcome.elapsed_s:.1f} s "
                  f"({outcome.attempts} attempts here)")
    if not results.best_trials(study):
        if outcome.counts.rejected and not outcome.counts.complete:
            raise UserError(f"nothing fits: every point was predicted over the "
                            f"{(config.memory_budget_bytes or 0) / 2**30:.2f} GiB budget "
                            "(lower --from's batch, raise --memory-budget or reduce the image)")
        console.print(f"[red]no trial completed[/]; trial logs are under {config.run_dir / 'trials'}")
        return 1
    chosen = None
    if args.save_profile:
        trial = results.pick_trial(study, args.pick)
        chosen = trial.number
    results.print_results(console, study, config.objective, chosen=chosen)
    if args.save_profile:
        workload = describe_workload(config.preset, config.data, args.workload)
        prof = results.build_profile(args.save_profile, trial, study, config.objective,
                                     profile, config.storage_url, workload)
        path = results.save_profile(prof, args.save_profile)
        console.print(f"saved trial {trial.number} as {path}: train with "
                      f"python -m smt.train --profile {args.save_profile}")
    if args.plot:
        with replace_dir(args.plot, SEARCH_PLOT_COMMAND, flag="--plot") as tmp:
            names = [p.name for p in results.write_plots(study, config.objective, tmp)]
        for name in names:
            console.print(f"plot: {Path(args.plot) / name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autotune search", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_search(args)


def entry(argv: Sequence[str] | None = None) -> int:
    from autotune.errors import run_cli
    return run_cli(main, argv, prog="autotune search")


if __name__ == "__main__":
    sys.exit(entry())
