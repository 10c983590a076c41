"""The estimate table, read (probes/estimates.py asks the workload for it).

The profile's table of the workload's own memory estimate, read back as an estimate function:
what lets `plan` size batches for a GPU nobody measured, and what the batch rule falls back on
where the probe did not measure. Records only: the workload is never called from here."""
from __future__ import annotations

from autotune.decide.context import EstimateFn
from autotune.fits import bound_memory
from autotune.records import MemoryEstimate


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


