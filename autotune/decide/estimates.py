"""The workload's own memory estimate as a table on a grid, and that table read back as an
estimate function: what lets `plan` size batches for a GPU nobody measured, and what the
batch rule falls back on where the probe did not measure."""
from __future__ import annotations

from typing import Any

from autotune.decide.batch import REDUCE_LADDER
from autotune.decide.context import EstimateFn
from autotune.fits import bound_memory
from autotune.records import MemoryEstimate

ESTIMATE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
ESTIMATE_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def estimate_table(workload: Any, batches: tuple[int, ...] = ESTIMATE_BATCHES,
                   ratios: tuple[float, ...] = REDUCE_LADDER,
                   precisions: tuple[str, ...] = ESTIMATE_PRECISIONS) -> list[MemoryEstimate]:
    """The workload's estimate at every (ratio, precision, batch); empty when the workload
    has no estimate (the decision then relies on measurements alone)."""
    out: list[MemoryEstimate] = []
    for ratio in ratios:
        shape = workload.largest_shape(ratio)
        for precision in precisions:
            for batch in batches:
                try:
                    value = workload.estimate_memory(batch, shape, precision)
                except (NotImplementedError, ValueError):
                    return []
                out.append(MemoryEstimate(ratio, batch, shape.height, shape.width, shape.seq_len,
                                          precision, None if value is None else int(value)))
    return out


def estimate_from_table(estimates: list[MemoryEstimate]) -> EstimateFn | None:
    """The profile's estimate table as a function: linear in batch per (ratio, precision)."""
    if not estimates:
        return None
    table: dict[tuple[float, str], list[tuple[int, float]]] = {}
    for e in estimates:
        if e.estimated_memory_bytes is not None:
            table.setdefault((round(e.reduce_ratio, 4), e.precision), []).append(
                (e.batch_size, float(e.estimated_memory_bytes)))

    def estimate(batch: int, ratio: float, precision: str) -> int | None:
        key = round(ratio, 4)
        pts = table.get((key, precision))
        if pts is None:
            # Another precision measured only: 32-bit tables overstate (safe), so prefer one.
            pts = table.get((key, "32-true")) or next(
                (v for (r, _), v in table.items() if r == key), None)
        fit = bound_memory(pts or [], ratio, "predicted")
        return int(fit.predict(batch)) if fit is not None else None
    return estimate


