"""The two cost models fitted from probe trials, one home each: a training step's memory as a
line in the batch size, and a map's peak RSS in its process count and writer batch.

Pure arithmetic over numbers; the probes fit them on what they measured, the decision rules
and the search read them back.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autotune.records import MapTrial, MemoryFit, ModelTrial


def fit_memory(points: Sequence[tuple[int, float]], reduce_ratio: float,
               source: str = "measured") -> MemoryFit | None:
    """Least squares memory = fixed + per_sample x batch (slope floored at 0).

    Fewer than two distinct batch sizes give no slope, hence None: one point cannot split
    the fixed part from the per-sample part, and each caller knows its safe reading
    (see `bound_memory`, or a slope borrowed from the model's estimate).
    """
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mm = sum(v for _, v in points) / n
    slope = sum((b - mb) * (v - mm) for b, v in points) / sum((b - mb) ** 2 for b, _ in points)
    slope = max(0.0, slope)
    return MemoryFit(reduce_ratio, mm - slope * mb, slope, n, source)


def bound_memory(points: Sequence[tuple[int, float]], reduce_ratio: float,
                 source: str = "measured") -> MemoryFit | None:
    """`fit_memory`, and with a single batch size a line through the origin at the largest
    bytes per sample measured: it overstates every larger batch (the safe side for a budget)
    where an all-fixed reading would predict the same memory for any batch. None without
    points."""
    if not points:
        return None
    fit = fit_memory(points, reduce_ratio, source)
    if fit is not None:
        return fit
    per_sample = max(v / b for b, v in points)
    return MemoryFit(reduce_ratio, 0.0, per_sample, len(points), source)


def fit_trials(trials: Sequence[ModelTrial], reduce_ratio: float) -> MemoryFit | None:
    """The memory line through the successful model trials of one ratio (`bound_memory`: one
    batch size measured gives a line through the origin, the safe reading for anyone who
    extrapolates the stored fit, e.g. the search). The model probe fits its trials with it,
    and the search a profile's trials."""
    pts = [(t.batch_size, float(t.peak_memory_bytes)) for t in trials
           if math.isclose(t.reduce_ratio, reduce_ratio) and not t.oom and t.error is None
           and t.peak_memory_bytes is not None]
    return bound_memory(pts, reduce_ratio)


# -- the map's peak RSS -----------------------------------------------------------------------

def map_ok(t: MapTrial) -> bool:
    """A map trial that finished with a rate: the ones a cost model may learn from."""
    return not t.stalled and t.error is None and bool(t.rows_per_s)


@dataclass
class MapCostModel:
    """peak RSS = base + num_proc x (worker + buffered rows x row), where a worker buffers
    at most its shard of the rows (when the row count is known)."""
    base: float
    worker: float
    row: float

    def peak(self, num_proc: int, writer_batch_size: int, rows: int | None = None) -> float:
        buffered = writer_batch_size if rows is None else \
            min(writer_batch_size, math.ceil(rows / num_proc))
        return self.base + num_proc * (self.worker + buffered * self.row)


def fit_map_peak(trials: Sequence[MapTrial]) -> tuple[float | None, float | None, float | None]:
    """(base, worker, row) of the peak model, term by term, from the trials.

    base: RSS of the process that runs the map, before it starts (measured in each trial).
    row: growth per buffered row between two writer_batch_size values at num_proc=1 (None
    when only one was measured; the probe bounds it below by the cached row size).
    worker: what is left per process, the largest over the trials. Forked workers share the
    parent's pages but RSS counts them in each worker, so this errs high, on the safe side.
    """
    good = [t for t in trials if map_ok(t) and t.peak_rss_bytes and t.base_rss_bytes]
    if not good:
        return None, None, None
    base = float(sorted(t.base_rss_bytes for t in good)[len(good) // 2])  # type: ignore[misc]
    row = None
    single = sorted((min(t.writer_batch_size, t.rows), t.peak_rss_bytes - t.base_rss_bytes)
                    for t in good if t.num_proc == 1)  # type: ignore[operator]
    if len({b for b, _ in single}) >= 2:
        (b0, g0), (b1, g1) = single[0], single[-1]
        row = max(0.0, (g1 - g0) / (b1 - b0))
    worker = max(
        (t.peak_rss_bytes - t.base_rss_bytes  # type: ignore[operator]
         - t.num_proc * min(t.writer_batch_size, math.ceil(t.rows / t.num_proc)) * (row or 0.0))
        / t.num_proc for t in good)
    return base, max(0.0, worker), row
