"""The loader, measured (smt/data/loader.py is SMT's loader itself, timed here).

Loader probe: how many batches per second the workload's DataLoader delivers per
`num_workers`, set against how many the model consumes.

Each trial builds the loader the real training builds (over a small prepared sample), reads
it to the end and times the batches after the first one: the first pays for starting the
workers, which a run pays once per epoch, not once per batch. A watchdog kills the workers of
a trial whose next batch does not come for `stall_s`, so a stuck worker ends the trial with
an error instead of hanging the probe.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.measure import ProgressWatchdog, RssSampler, error_line, kill_tree
from autotune.probes import doubling_counts
from autotune.records import LoaderTrial
from autotune.workload import Workload


@dataclass
class LoaderProbeResult:
    trials: list[LoaderTrial]
    batch_size: int
    reduce_ratio: float
    model_step_s: float | None          # the model's step at this batch size, when known
    startup_s: dict[int, float] = field(default_factory=dict)   # per num_workers
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_batches_per_s(self) -> float | None:
        return 1.0 / self.model_step_s if self.model_step_s else None


def worker_counts(usable_cpus: float, cap: int = 8) -> list[int]:
    """0 (load in the training process), 1, 2, 4, ... up to the usable cores."""
    return [0] + doubling_counts(usable_cpus, cap)


def kill_loader_workers() -> None:
    """Kill this process's DataLoader workers so that a blocked `next()` raises (the loader
    joins its own workers, so they are not reaped here)."""
    kill_tree(os.getpid(), grace_s=0, include_root=False, wait=False)


def run_loader_trial(workload: Workload, batch_size: int, num_workers: int, reduce_ratio: float,
                     rows: int, *, stall_s: float = 20.0) -> tuple[LoaderTrial, float | None]:
    """One loader trial: (record, start-up seconds until the first batch)."""
    loader = workload.make_loader(batch_size, num_workers, reduce_ratio, rows)
    stamps: list[float] = []
    error = None
    watchdog = ProgressWatchdog(stall_s, on_stall=lambda _s: kill_loader_workers())
    sampler = RssSampler(interval_ms=50, keep_samples=False)
    start = time.perf_counter()
    try:
        with sampler, watchdog:
            for _batch in loader:
                stamps.append(time.perf_counter())
                watchdog.beat()
    except Exception as exc:  # a dead or stuck worker: recorded, the next trial goes on
        error = error_line(exc)
        if watchdog.stalled:
            error = f"no batch for {stall_s:g} s ({error})"
    finally:
        del loader
    rate = None
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    trial = LoaderTrial(num_workers=num_workers, batch_size=batch_size,
                        batches_per_s=round(rate, 3) if rate else None,
                        samples_per_s=round(rate * batch_size, 3) if rate else None,
                        peak_rss_bytes=sampler.peak_rss_bytes, error=error)
    return trial, (stamps[0] - start) if stamps else None


def probe_loader(workload: Workload, *, batch_size: int, usable_cpus: float,
                 reduce_ratio: float = 1.0, batches: int = 12,
                 num_workers: Sequence[int] | None = None, model_step_s: float | None = None,
                 stall_s: float = 20.0, deadline: float | None = None,
                 on_trial: Callable[[LoaderTrial], None] | None = None) -> LoaderProbeResult:
    """Time the loader at each worker count; stop early once a count keeps the model fed
    twice over (more workers can only cost RAM) or the deadline is near."""
    started = time.monotonic()
    counts = list(num_workers) if num_workers is not None else worker_counts(usable_cpus)
    rows = batch_size * (batches + 1)
    trials: list[LoaderTrial] = []
    startup: dict[int, float] = {}
    for count in counts:
        if deadline is not None and trials and time.monotonic() >= deadline:
            break
        trial, first = run_loader_trial(workload, batch_size, count, reduce_ratio, rows,
                                        stall_s=stall_s)
        trials.append(trial)
        if first is not None:
            startup[count] = round(first, 3)
        if on_trial:
            on_trial(trial)
        if model_step_s and trial.batches_per_s and count > 0 \
                and trial.batches_per_s * model_step_s >= 2.0:
            break
    return LoaderProbeResult(trials=trials, batch_size=batch_size, reduce_ratio=reduce_ratio,
                             model_step_s=model_step_s, startup_s=startup,
                             seconds=round(time.monotonic() - started, 3))
