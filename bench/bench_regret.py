"""Regret of the probe's choice over every axis it decides: how close its settings come to the
best of a grid measured for real on this machine, in one run.

    python bench/bench_regret.py [--preset small] [--map-rows 300] [--seconds 5]

1. Probe (the real `autotune probe`, default dataset, the preset) -> chosen settings.
2. Training grid at the chosen reduce_ratio: precision x torch threads x batch size at the
   chosen loader workers, plus loader workers at the chosen precision, threads and batch.
   Each cell is the workload's own training step (`Workload.make_step`: the LightningModule's
   step with its autocast and optimizer) fed by the training DataLoader over prepared rows
   (shuffled, padded, real mixed image sizes); one warm-up batch, then samples/s over
   `--seconds` (at least two steps). One optimizer step per batch (accumulation changes how
   often the optimizer runs, not the per-sample cost, which the optimizer step of a small
   model barely moves). Two repetitions per cell, interleaved: the whole grid once, then
   again, so that load from other work on a shared machine falls on every cell alike; a
   cell's figure is the mean of its two.
3. Map grid: the real preparation (`smt.data.prepare`, spawned shard child, watchdog and all)
   of the same `--map-rows` raw rows at each num_proc x writer_batch_size, each into its own
   empty cache, twice (interleaved the same way), mean of two: rows/s and the tree's peak RSS.

Prints one table per grid (the chosen cell marked), then chosen/best for both, the OOM and
stall counts, and the load average. Goal: chosen/best >= 0.9 for both, 0 OOM, 0 stall.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.measure import RssSampler, free_memory, is_oom_error  # noqa: E402
from autotune.probe import ProbeOptions, run_probe_stages  # noqa: E402
from autotune.probes.step import thread_candidates, threads  # noqa: E402
from autotune.units import format_bytes  # noqa: E402
from autotune.workload import load_workload  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def map_cell(raw_dir: str, num_proc: int, wbs: int, ratio: float) -> dict[str, Any]:
    from smt.data.prepare import PrepareConfig, prepare
    with tempfile.TemporaryDirectory(prefix="regret-cache-") as cache:
        old = os.environ.get("SMT_AUTOTUNE_CACHE")
        os.environ["SMT_AUTOTUNE_CACHE"] = cache
        try:
            with RssSampler(interval_ms=50, keep_samples=False) as rss:
                result = prepare(raw_dir, PrepareConfig(reduce_ratio=ratio, num_proc=num_proc,
                                                        writer_batch_size=wbs), quiet=True)
        finally:
            if old is None:
                os.environ.pop("SMT_AUTOTUNE_CACHE", None)
            else:
                os.environ["SMT_AUTOTUNE_CACHE"] = old
    return {"rate": result.rows_per_s or 0.0, "peak": rss.peak_rss_bytes,
            "stalled": any(a.reason == "stall" for a in result.actions)}


def train_cell(work: Any, ratio: float, precision: str, n_threads: int, batch: int,
               workers: int, seconds: float, rows: int) -> dict[str, Any]:
    """samples/s of the real training step fed by the real loader (see the module doc)."""
    from smt.builder import batch_to
    shape = work.largest_shape(ratio)
    loader = work.make_loader(batch, workers, ratio, max(rows, 4 * batch))
    step = None
    try:
        with threads(n_threads):
            it = iter(loader)

            def next_batch() -> Any:
                nonlocal it
                try:
                    return next(it)
                except StopIteration:
                    it = iter(loader)
                    return next(it)
            first = next_batch()
            while int(first["images"].shape[0]) != batch:
                first = next_batch()
            step = work.make_step(batch, shape, precision, "cpu", batch=first)
            step.step()                                   # warm-up: not timed
            samples, steps, t0 = 0, 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or steps < 2:
                b = next_batch()
                step.batch = batch_to(b, "cpu")           # the same step, the loader's batch
                step.step()
                samples += int(b["images"].shape[0])
                steps += 1
            return {"rate": samples / (time.perf_counter() - t0), "oom": False}
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        return {"rate": 0.0, "oom": True}
    finally:
        if step is not None:
            step.close()
        del loader
        free_memory()


def subset_source(work: Any, rows: int, out: Path) -> str:
    """The first `rows` training rows of the source as a save_to_disk folder (raw, unprepared)."""
    import datasets
    train = work.source.dataset["train"]
    part = train.select(range(min(rows, len(train))))
    datasets.DatasetDict({"train": part}).save_to_disk(str(out))
    return str(out)


def train_grid(s: Any, cores: int, batches: list[int], workers: list[int]
               ) -> list[tuple[str, int, int, int]]:
    chosen_threads = s.num_threads or cores
    grid = {(p, n, b, s.num_workers) for p in PRECISIONS for n in thread_candidates(cores)
            for b in batches}
    grid |= {(s.precision, chosen_threads, s.batch_size, w) for w in workers}
    grid.add((s.precision, chosen_threads, s.batch_size, s.num_workers))
    return sorted(grid)


def run_reps(cells: list[Any], reps: int, run: Any, say: Any) -> dict[Any, list[dict[str, Any]]]:
    """Each cell `reps` times, interleaved: the whole list once, then again."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for rep in range(reps):
        for cell in cells:
            r = run(cell)
            out.setdefault(cell, []).append(r)
            say(f"rep {rep + 1} {cell}: {r['rate']:.2f}/s")
    return out


def print_train(console: Console, res: dict[Any, list[dict[str, Any]]], chosen: Any,
                title: str) -> tuple[float, float, int]:
    means = {c: statistics.mean(r["rate"] for r in runs) for c, runs in res.items()}
    best = max(means.values())
    t = Table(title=title)
    for col in ("precision", "threads", "batch", "workers", "rep 1", "rep 2", "mean", "OOM",
                "vs best", ""):
        t.add_column(col, justify="right")
    for c, runs in res.items():
        t.add_row(c[0], str(c[1]), str(c[2]), str(c[3]),
                  *[f"{r['rate']:.2f}" for r in runs], f"{means[c]:.2f}",
                  "yes" if any(r["oom"] for r in runs) else "", f"{means[c] / best:.2f}",
                  "chosen" if c == chosen else "")
    console.print(t)
    return means[chosen], best, sum(r["oom"] for runs in res.values() for r in runs)


def print_map(console: Console, res: dict[Any, list[dict[str, Any]]], chosen: Any,
              title: str) -> tuple[float, float, int]:
    means = {c: statistics.mean(r["rate"] for r in runs) for c, runs in res.items()}
    best = max(means.values())
    t = Table(title=title)
    for col in ("num_proc", "writer_batch_size", "rep 1", "rep 2", "mean rows/s",
                "peak RSS (tree)", "stall", "vs best", ""):
        t.add_column(col, justify="right")
    for c, runs in res.items():
        t.add_row(str(c[0]), str(c[1]), *[f"{r['rate']:.1f}" for r in runs], f"{means[c]:.1f}",
                  format_bytes(max(r["peak"] or 0 for r in runs)),
                  "yes" if any(r["stalled"] for r in runs) else "", f"{means[c] / best:.2f}",
                  "chosen" if c == chosen else "")
    console.print(t)
    return means[chosen], best, sum(r["stalled"] for runs in res.values() for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--data", default=None)
    ap.add_argument("--map-rows", type=int, default=300)
    ap.add_argument("--train-rows", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--time-budget", type=float, default=90.0)
    args = ap.parse_args()
    console = Console(width=140)
    import datasets
    datasets.disable_progress_bars()

    work = load_workload("smt", data=args.data, preset=args.preset)
    t0 = time.monotonic()
    outcome = run_probe_stages(ProbeOptions(data=args.data, preset=args.preset,
                                            time_budget_s=args.time_budget), workload=work)
    s = outcome.profile.settings
    console.print(f"probe ({args.preset}, {args.data or 'default data'}): {outcome.seconds:.1f} s"
                  f" -> {s.precision}, num_threads {s.num_threads}, batch {s.batch_size}, "
                  f"num_workers {s.num_workers}, reduce_ratio {s.reduce_ratio}, num_proc "
                  f"{s.num_proc}, writer_batch_size {s.writer_batch_size}")
    cores = max(1, int(outcome.profile.hardware.usable_cpus))
    chosen_t = (s.precision, s.num_threads or cores, s.batch_size, s.num_workers)
    cells = train_grid(s, cores, sorted({int(b) for b in args.batches.split(",")}),
                       sorted({int(w) for w in args.workers.split(",")}))
    train = run_reps(cells, args.reps, lambda c: train_cell(
        work, s.reduce_ratio, c[0], c[1], c[2], c[3], args.seconds, args.train_rows),
        console.log)

    tmp = Path(tempfile.mkdtemp(prefix="regret-"))
    raw = subset_source(work, args.map_rows, tmp / "raw")
    chosen_m = (s.num_proc, s.writer_batch_size)
    map_cells = sorted({(p, w) for p in range(1, cores + 1) for w in (10, 100)} | {chosen_m})
    maps = run_reps(map_cells, args.reps, lambda c: map_cell(raw, c[0], c[1], s.reduce_ratio),
                    console.log)

    tc, tb, ooms = print_train(console, train, chosen_t,
                               f"training: {args.preset}, reduce_ratio {s.reduce_ratio}, samples/s "
                               f"over {args.seconds:g} s per rep")
    mc, mb, stalls = print_map(console, maps, chosen_m,
                               f"map: prepare {args.map_rows} rows at reduce_ratio {s.reduce_ratio}")
    console.print(f"chosen/best: training {tc / tb:.2f}, map {mc / mb:.2f} (goal >= 0.9); "
                  f"OOM {ooms}, stall {stalls}; bench took {time.monotonic() - t0:.0f} s; "
                  f"load average {os.getloadavg()[0]:.1f} (other work on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
