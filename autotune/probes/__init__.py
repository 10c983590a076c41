"""The probes: the map (dataset preparation), the model (training step memory and speed) and
the loader, each measured on this machine within a time budget."""
from __future__ import annotations


def doubling_counts(usable_cpus: float, cap: int) -> list[int]:
    """1, 2, 4, ... up to the usable cores (and the cores themselves when not a power of two),
    at most `cap`: the process or worker counts worth timing (more than the cores only adds
    contention; between powers of two the rate rarely holds surprises)."""
    cores = max(1, int(usable_cpus))
    counts = [1]
    while counts[-1] * 2 <= min(cores, cap):
        counts.append(counts[-1] * 2)
    if cores <= cap and counts[-1] != cores:
        counts.append(cores)
    return counts
