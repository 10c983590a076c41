"""Regret of the probe's loop choice: the chosen (threads, loader workers, batch, precision)
against its neighbours, each a real short `python -m smt.train` run, in one run.

    python bench/bench_loop_regret.py                      # embedded default data (systems)
    python bench/bench_loop_regret.py --pages 24           # synthetic full pages
    python bench/bench_loop_regret.py --data DIR --preset small --seconds 30

1. Probe (the real `autotune probe` stages, in this process) -> the chosen settings.
2. Cells: the chosen one; torch threads one fewer and one more (within the usable cores);
   loader workers 0, 1, 2 (those not chosen); batch x2 and /2 (accumulation keeps the
   effective batch); the other precision. Each cell is one real training run
   (`Workload.trial_launch`: `python -m smt.train` with the cell's flags, the same number of
   optimizer steps for every cell, so the same samples), and its figure is the trainer's own
   steady samples/s (warm-up batches left out) from its summary.json.
3. Two rounds, interleaved (every cell once, then every cell again in reverse order), so that
   load from elsewhere falls on every cell alike; a cell's figure is the mean of its rounds.

Prints the probe's loop table, then one table (the chosen cell marked, each round, the mean,
the ratio to the best), chosen/best, and the load average before and after. Goal: >= 0.95.
Run it with nothing else on the machine.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.probe import ProbeOptions, run_probe_stages  # noqa: E402
from autotune.search.space import make_point  # noqa: E402
from autotune.settings import Settings  # noqa: E402
from autotune.workload import TrialRequest, load_workload  # noqa: E402

OTHER_PRECISION = {"32-true": "bf16-mixed", "bf16-mixed": "32-true",
                   "16-mixed": "32-true"}


def cell_settings(s: Settings, *, threads: int | None = None, workers: int | None = None,
                  batch: int | None = None, precision: str | None = None) -> Settings:
    """`s` with one axis moved; accumulation keeps the effective batch (the search's
    `make_point`, so a cell is built as a search trial is)."""
    return make_point(s, batch or s.batch_size, s.effective_batch_size, s.reduce_ratio,
                      s.num_workers if workers is None else workers, None,
                      num_threads=threads, precision=precision).settings


def neighbours(s: Settings, cores: int) -> dict[str, Settings]:
    t = s.num_threads or cores
    cells = {"chosen": s}
    for dt in (-1, 1):
        if 1 <= t + dt <= cores:
            cells[f"threads {t + dt}"] = cell_settings(s, threads=t + dt)
    for w in (0, 1, 2):
        if w != s.num_workers:
            cells[f"workers {w}"] = cell_settings(s, workers=w)
    if s.batch_size * 2 <= s.effective_batch_size:
        cells[f"batch {s.batch_size * 2}"] = cell_settings(s, batch=s.batch_size * 2)
    if s.batch_size // 2 >= 1:
        cells[f"batch {s.batch_size // 2}"] = cell_settings(s, batch=s.batch_size // 2)
    if s.precision in OTHER_PRECISION:
        other = OTHER_PRECISION[s.precision]
        cells[other] = cell_settings(s, precision=other)
    return cells


def run_cell(work: Any, settings: Settings, steps: int, out: Path, preset: str,
             data: str | None, say: Any) -> float | None:
    launch = work.trial_launch(TrialRequest(settings=settings, max_steps=steps, out_dir=out,
                                            preset=preset, data=data, val_batches=1))
    proc = subprocess.run(launch.argv, env={**os.environ, **launch.env}, capture_output=True,
                          text=True)
    report = work.trial_report(out)
    if proc.returncode != 0 or report is None:
        say(f"  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}")
        return None
    return report.steady_samples_per_s


def make_pages(count: int, where: Path) -> str:
    out = where / "pages"
    subprocess.run([sys.executable, "-m", "smt.data", "synth", "--kind", "page", "--count",
                    str(count), "--out", str(out)], check=True)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--data", default=None, help="a source for --data (default: embedded)")
    ap.add_argument("--pages", type=int, default=None,
                    help="render this many synthetic full pages and use them as --data")
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="about how long the chosen cell trains per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=90.0)
    args = ap.parse_args()
    console = Console(width=150)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="loop-regret-"))
    data = make_pages(args.pages, tmp) if args.pages else args.data
    work = load_workload(data=data, preset=args.preset)
    outcome = run_probe_stages(ProbeOptions(data=data, preset=args.preset,
                                            time_budget_s=args.time_budget), workload=work)
    profile = outcome.profile
    s = profile.settings
    console.print(f"probe ({args.preset}, {data or 'default data'}): {outcome.seconds:.1f} s -> "
                  f"threads {s.num_threads}, workers {s.num_workers}, batch {s.batch_size} x "
                  f"accumulate {s.accumulate_grad_batches}, {s.precision}, reduce ratio "
                  f"{s.reduce_ratio}")
    for t in profile.measurements.loop_trials:
        console.print(f"  probe loop threads={t.num_threads} workers={t.num_workers} "
                      f"batch={t.batch_size} {t.precision}: {t.samples_per_s} samples/s")
    cores = max(1, int(profile.hardware.usable_cpus))
    cells = neighbours(s, cores)
    pick = (profile.details.get("loop_pick") or {}).get("samples_per_s")
    rate = pick or 1.0
    warm = work.trial_warmup_batches()
    steps = max(math.ceil(args.seconds * rate / s.effective_batch_size),
                math.ceil((warm + 8) / s.accumulate_grad_batches))
    console.print(f"{len(cells)} cells x {args.rounds} rounds, {steps} optimizer steps each "
                  f"({steps * s.effective_batch_size} samples)")
    rates: dict[str, list[float | None]] = {name: [] for name in cells}
    for r in range(args.rounds):
        order = list(cells) if r % 2 == 0 else list(reversed(cells))
        for name in order:
            value = run_cell(work, cells[name], steps, tmp / f"{name.replace(' ', '-')}-{r}",
                             args.preset, data, console.log)
            rates[name].append(value)
            console.log(f"round {r + 1} {name}: {value if value is None else f'{value:.2f}'} samples/s")
    means = {n: statistics.mean(v for v in vs if v is not None) if any(v is not None for v in vs)
             else 0.0 for n, vs in rates.items()}
    best = max(means.values()) or 1.0
    table = Table(title=f"training loop, {args.preset}, {data or 'default data'}: steady "
                        f"samples/s of real smt.train runs ({steps} steps each)")
    for col in ("cell", "threads", "workers", "batch x acc", "precision",
                *[f"round {i + 1}" for i in range(args.rounds)], "mean", "vs best", ""):
        table.add_column(col, justify="right")
    for name, c in cells.items():
        table.add_row(name, str(c.num_threads), str(c.num_workers),
                      f"{c.batch_size} x {c.accumulate_grad_batches}", c.precision,
                      *[("-" if v is None else f"{v:.2f}") for v in rates[name]],
                      f"{means[name]:.2f}", f"{means[name] / best:.2f}",
                      "chosen" if name == "chosen" else "")
    console.print(table)
    console.print(f"chosen/best {means['chosen'] / best:.2f} (goal >= 0.95); bench took "
                  f"{time.monotonic() - started:.0f} s; load average {load_before:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after (this bench uses both cores itself)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
