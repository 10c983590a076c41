"""The estimate table, asked of the workload (decide/estimates.py reads it back as an estimate).

The workload's own memory estimate (`Workload.estimate_memory`) at every point of a small grid,
recorded as `MemoryEstimate` rows in the profile: the probe and `autotune plan` ask the
workload here, and decide/ only ever reads the rows, so that `plan` can size batches for a GPU
nobody measured without importing the workload.
"""
from __future__ import annotations

from autotune.decide.batch import REDUCE_LADDER
from autotune.records import MemoryEstimate
from autotune.workload import Workload

# Batch sizes and precisions the table covers: the probe's batch ladder up to 64 and every
# precision a device may pick, so that a later re-decision (another GPU) finds its point.
ESTIMATE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
ESTIMATE_PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def estimate_table(workload: Workload, batches: tuple[int, ...] = ESTIMATE_BATCHES,
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
