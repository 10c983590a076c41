"""The map, measured (autotune/decide/map.py decides from what this records).

Map probe: how fast and how memory-hungry the workload's `datasets.map` preparation is.

Each trial maps a small sample of raw rows at one (num_proc, writer_batch_size) in a forked
child process under autotune.supervise, so that a trial that stalls or blows up can be
abandoned (killed with its whole process tree) without taking the probe down. The parent watches two progress signals,
rows handed back by the map function (counted through a file every worker appends to) and
bytes written to the cache, and samples the RSS of the child's process tree. No progress for
`stall_s` seconds ends the trial as stalled: the failure mode of the reference pipeline.

From the trials it fits peak RAM = base + num_proc x (worker + buffered rows x row cost) and
extrapolates time, peak RAM and cache size to the full dataset.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotune.atomic import json_text
from autotune.decide.map import MIN_WRITER_BATCH
from autotune.disk import dir_size_bytes
from autotune.fits import MapCostModel, fit_map_peak, map_ok
from autotune.measure import tree_rss_bytes
from autotune.probes import doubling_counts
from autotune.records import MapTrial
from autotune.supervise import ChildOutcome, Supervision, supervise
from autotune.workload import MapSpec, Workload

# How often the parent looks at progress and RSS: fine enough to catch a short peak of a
# 1-2 s trial, coarse enough that sampling (a /proc walk) costs under 1% of a core.
POLL_S = 0.05


@dataclass
class MapPrediction:
    """One setting's cost for the full dataset, extrapolated from the sample."""
    num_proc: int
    writer_batch_size: int
    seconds: float | None
    peak_rss_bytes: float | None
    cache_bytes: float | None
    measured: bool                       # this exact setting ran on the sample


@dataclass
class MapProbeResult:
    trials: list[MapTrial]
    reduce_ratio: float
    sample_rows: int
    full_rows: int
    # Fitted peak model (None where the trials could not separate the term).
    base_rss_bytes: float | None
    worker_rss_bytes: float | None
    bytes_per_buffered_row: float | None
    cache_bytes_per_row: float | None
    startup_s: dict[int, float] = field(default_factory=dict)   # per num_proc: pool start-up
    predictions: list[MapPrediction] = field(default_factory=list)
    seconds: float = 0.0                 # wall time the probe itself took

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def predict(self, num_proc: int, writer_batch_size: int) -> MapPrediction:
        """Full-dataset cost of any setting, measured or not."""
        rate = _rate_for(self.trials, num_proc)
        seconds = None
        if rate:
            seconds = self.startup_s.get(num_proc, max(self.startup_s.values(), default=0.0)) \
                + self.full_rows / rate
        peak = None
        if None not in (self.base_rss_bytes, self.worker_rss_bytes, self.bytes_per_buffered_row):
            cost = MapCostModel(self.base_rss_bytes, self.worker_rss_bytes,  # type: ignore[arg-type]
                                self.bytes_per_buffered_row)  # type: ignore[arg-type]
            peak = cost.peak(num_proc, writer_batch_size, rows=self.full_rows)
        cache = self.cache_bytes_per_row * self.full_rows \
            if self.cache_bytes_per_row is not None else None
        measured = any(t.num_proc == num_proc and t.writer_batch_size == writer_batch_size
                       and map_ok(t) for t in self.trials)
        return MapPrediction(num_proc, writer_batch_size, seconds, peak, cache, measured)


class _CountingFunction:
    """Wraps the map function and appends one byte per row handed back to a progress file.

    A file opened in append mode is the cheapest counter that survives datasets shipping the
    function to worker processes (O_APPEND writes of a few bytes are atomic on POSIX).
    """

    def __init__(self, function: Callable[..., Any], progress_path: str, batched: bool) -> None:
        self.function = function
        self.progress_path = progress_path
        self.batched = batched

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.function(*args, **kwargs)
        rows = 1
        if self.batched and args:
            first = args[0]
            if isinstance(first, dict):
                rows = len(next(iter(first.values()), []))
            else:
                rows = len(first)
        fd = os.open(self.progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"." * max(rows, 1))
        finally:
            os.close(fd)
        return out


def _child(sample: Any, spec: MapSpec, num_proc: int, writer_batch_size: int,
           trial_dir: str) -> None:
    """Runs in the forked child: map the sample, write timings to result.json."""
    import datasets
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    cache_dir = Path(trial_dir) / "cache"
    cache_dir.mkdir()
    function = _CountingFunction(spec.function, str(Path(trial_dir) / "progress"), spec.batched)
    kwargs: dict[str, Any] = {}
    if spec.batched and spec.batch_size:
        kwargs["batch_size"] = spec.batch_size
    if spec.features is not None:
        kwargs["features"] = spec.features
    start = time.monotonic()
    result: dict[str, Any] = {"start": start, "rss_before": tree_rss_bytes()}
    try:
        out = sample.map(function, batched=spec.batched, num_proc=num_proc if num_proc > 1 else None,
                         writer_batch_size=writer_batch_size,
                         cache_file_name=str(cache_dir / "mapped.arrow"),
                         load_from_cache_file=False, remove_columns=list(spec.remove_columns),
                         fn_kwargs=dict(spec.fn_kwargs), **kwargs)
        result.update(end=time.monotonic(), rows=len(out))
    except BaseException as exc:  # reported to the parent, which records it on the trial
        result.update(end=time.monotonic(), error=f"{type(exc).__name__}: {exc}")
    (Path(trial_dir) / "result.json").write_text(json_text(result, indent=None))


def run_map_trial(sample: Any, spec: MapSpec, num_proc: int, writer_batch_size: int, *,
                  stall_s: float = 5.0, timeout_s: float = 60.0,
                  workdir: str | os.PathLike[str] | None = None) -> MapTrial:
    """One map trial in a child process, abandoned on stall or timeout.

    Returns a MapTrial; `stalled=True` when neither rows nor cache bytes moved for `stall_s`.
    `rows_per_s` is the steady rate (first row seen to map end), so that pool start-up is not
    charged per row when extrapolating to the full dataset.
    """
    return _run_trial(sample, spec, num_proc, writer_batch_size, stall_s=stall_s,
                      timeout_s=timeout_s, workdir=workdir)[0]


def _run_trial(sample: Any, spec: MapSpec, num_proc: int, writer_batch_size: int, *,
               stall_s: float, timeout_s: float,
               workdir: str | os.PathLike[str] | None = None) -> tuple[MapTrial, float | None]:
    """The trial and its start-up seconds (fork, pool, first row), kept for extrapolation."""
    trial_dir = Path(tempfile.mkdtemp(prefix=f"map-np{num_proc}-wb{writer_batch_size}-",
                                      dir=workdir))
    progress = trial_dir / "progress"
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    proc = ctx.Process(target=_child, args=(sample, spec, num_proc, writer_batch_size,
                                            str(trial_dir)), daemon=False)
    start = time.monotonic()
    first_row: list[tuple[float, int]] = []       # (when, rows) the first rows came back

    def rows_done() -> int:
        return progress.stat().st_size if progress.exists() else 0

    def seen(signal: tuple[int, int]) -> None:
        if signal[0] and not first_row:
            first_row.append((time.monotonic(), signal[0]))

    # A stalled map is stuck in C code: SIGKILL at once (kill_grace_s=0).
    outcome = supervise(proc, Supervision(
        progress=lambda: (rows_done(), dir_size_bytes(trial_dir / "cache")), stall_s=stall_s,
        timeout_s=timeout_s, poll_s=min(POLL_S, stall_s / 10), rss_interval_ms=1000 * POLL_S,
        kill_grace_s=0, on_progress=seen))
    done_rows = rows_done()
    result_path = trial_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    cache_bytes = dir_size_bytes(trial_dir / "cache")
    shutil.rmtree(trial_dir, ignore_errors=True)
    first_row_at, first_rows = first_row[0] if first_row else (None, 0)
    trial = _trial_record(len(sample), num_proc, writer_batch_size, outcome, result, done_rows,
                          cache_bytes, first_row_at, first_rows, stall_s, timeout_s)
    return trial, (first_row_at - start) if first_row_at else None


def _trial_record(rows: int, num_proc: int, writer_batch_size: int, outcome: ChildOutcome,
                  result: dict[str, Any], done_rows: int, cache_bytes: int,
                  first_row_at: float | None, first_rows: int, stall_s: float,
                  timeout_s: float) -> MapTrial:
    """What the parent saw and the child wrote, as one MapTrial."""
    error = result.get("error")
    if outcome.reason == "stall":
        error = f"no progress for {stall_s:g} s after {done_rows}/{rows} rows"
    elif outcome.reason == "timeout":
        error = f"trial cap of {timeout_s:g} s reached after {done_rows}/{rows} rows"
    elif not result and outcome.exitcode not in (0, None):
        error = f"map child died with exit code {outcome.exitcode}"
    finished = not error and "end" in result
    wall = outcome.seconds
    rate = None
    if finished and first_row_at is not None and result["end"] > first_row_at:
        rate = (rows - first_rows) / (result["end"] - first_row_at) if rows > first_rows else None
    if rate is None and done_rows and wall > 0 and (finished or outcome.reason == "timeout"):
        rate = done_rows / wall
    peak, base_rss = outcome.peak_rss_bytes, result.get("rss_before")
    buffered = min(writer_batch_size, math.ceil(rows / num_proc))
    per_row = None
    if finished and peak and base_rss:
        per_row = max(0.0, (peak - base_rss) / (num_proc * buffered))
    return MapTrial(
        num_proc=num_proc, writer_batch_size=writer_batch_size, rows=rows,
        seconds=round(wall, 3) if finished else None,
        rows_per_s=round(rate, 3) if rate else None,
        peak_rss_bytes=peak or None, base_rss_bytes=base_rss,
        bytes_per_buffered_row=per_row,
        cache_bytes_per_row=cache_bytes / rows if finished and rows else None,
        stalled=outcome.reason == "stall", error=error)


def _rate_for(trials: Sequence[MapTrial], num_proc: int) -> float | None:
    """Best steady rate measured at `num_proc`; unmeasured counts scale the nearest lower one
    no better than linearly (an optimistic bound would pick too many workers)."""
    rates = [t.rows_per_s for t in trials if t.num_proc == num_proc and map_ok(t)]
    if rates:
        return max(rates)  # type: ignore[type-var]
    lower = [t for t in trials if t.num_proc < num_proc and map_ok(t)]
    if not lower:
        return None
    near = max(lower, key=lambda t: (t.num_proc, t.rows_per_s or 0))
    return near.rows_per_s  # more processes than measured: assume no speed-up


def trial_grid(usable_cpus: float, sample_rows: int,
               writer_batch_sizes: Sequence[int] | None = None,
               max_num_proc: int = 8) -> list[tuple[int, int]]:
    """(num_proc, writer_batch_size) pairs to try, cheapest and most informative first.

    num_proc: 1, 2, 4, ... up to the usable cores (more than the cores only adds contention).
    writer_batch_size at num_proc=1: MIN_WRITER_BATCH and the whole sample, so that the
    difference in peak RSS is the cost of the extra buffered rows; every trial is also a
    candidate the decision may pick, hence nothing below MIN_WRITER_BATCH. At num_proc > 1:
    each worker's whole shard, one trial per count to keep the probe short.
    """
    procs = doubling_counts(usable_cpus, max_num_proc)
    if writer_batch_sizes is not None:
        grid = [(1, w) for w in writer_batch_sizes]
        return grid + [(p, max(writer_batch_sizes)) for p in procs[1:]]
    lo = MIN_WRITER_BATCH
    grid = [(1, lo)] + ([(1, sample_rows)] if sample_rows > lo else [])
    return grid + [(p, max(lo, math.ceil(sample_rows / p))) for p in procs[1:]]


def probe_map(workload: Workload, *, usable_cpus: float, reduce_ratio: float = 1.0,
              sample_rows: int = 64, writer_batch_sizes: Sequence[int] | None = None,
              stall_s: float = 5.0, trial_timeout_s: float = 30.0,
              deadline: float | None = None,
              on_trial: Callable[[MapTrial], None] | None = None) -> MapProbeResult:
    """Run the map trials on a raw sample and extrapolate to the full dataset.

    `deadline` (time.monotonic) stops starting new trials once passed; a trial in flight is cut
    at the deadline too, so the probe keeps its time budget.
    """
    started = time.monotonic()
    sample = workload.raw_sample(sample_rows)
    spec = workload.map_spec(reduce_ratio)
    rows = len(sample)
    trials: list[MapTrial] = []
    startup: dict[int, float] = {}
    for num_proc, wbs in trial_grid(usable_cpus, rows, writer_batch_sizes):
        timeout = trial_timeout_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < 1.0 and trials:
                break
            timeout = max(1.0, min(timeout, left))
        trial, startup_s = _run_trial(sample, spec, num_proc, wbs, stall_s=stall_s,
                                      timeout_s=timeout)
        trials.append(trial)
        if startup_s is not None and map_ok(trial):
            startup[num_proc] = min(startup.get(num_proc, math.inf), startup_s)
        if on_trial:
            on_trial(trial)
    base, worker, row_cost = fit_map_peak(trials)
    cache_rows = [t.cache_bytes_per_row for t in trials if map_ok(t) and t.cache_bytes_per_row]
    cache_per_row = max(cache_rows) if cache_rows else None
    if row_cost is not None and cache_per_row is not None:
        # A buffered row holds at least its encoded bytes; below that the fit is RSS noise.
        row_cost = max(row_cost, cache_per_row)
    elif row_cost is None and cache_per_row is not None:
        row_cost = cache_per_row
    result = MapProbeResult(
        trials=trials, reduce_ratio=reduce_ratio, sample_rows=rows,
        full_rows=workload.dataset_rows(), base_rss_bytes=base, worker_rss_bytes=worker,
        bytes_per_buffered_row=row_cost, cache_bytes_per_row=cache_per_row,
        startup_s={k: round(v, 3) for k, v in startup.items()})
    result.predictions = [result.predict(t.num_proc, t.writer_batch_size) for t in trials]
    result.seconds = round(time.monotonic() - started, 3)
    return result
