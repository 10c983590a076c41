"""The monitor's rules: each reads a few figures and returns a message naming the fix, or
None. Pure functions, so tables test them."""
from __future__ import annotations

from typing import Any

from autotune.units import GIB
from autotune.units import format_bytes as fb


def starved_hint(wait_frac: float | None, steps: int, gpu_util_pct: float | None,
                 num_workers: int | None, cpu_count: int | None, threshold: float = 0.3,
                 min_steps: int = 10, busy_gpu_pct: float = 85.0) -> str | None:
    """The step waits for data: more loader workers are the fix.

    A busy GPU is not starved even when the CPU side shows gaps (CUDA runs asynchronously,
    so the host may queue work and then wait in the loader while the GPU is still computing).
    """
    if wait_frac is None or steps < min_steps or wait_frac < threshold:
        return None
    if gpu_util_pct is not None and gpu_util_pct >= busy_gpu_pct:
        return None
    who = "the GPU" if gpu_util_pct is not None else "the model"
    workers = "?" if num_workers is None else str(num_workers)
    cores = cpu_count or 2
    suggest = min(max(2, 2 * (num_workers or 0)), max(1, cores))
    util = "" if gpu_util_pct is None else f", GPU busy {gpu_util_pct:.0f}%"
    fix = (f"raise num_workers (now {workers}; e.g. --num-workers {suggest})"
           if num_workers is None or suggest > num_workers else
           "the loader is CPU bound with every core busy: lower reduce_ratio or image size, "
           "or pre-resize the dataset")
    return (f"data-starved: {who} waits for data {wait_frac:.0%} of each step over {steps} "
            f"steps{util}; {fix}")


def ram_near(rss_bytes: int | None, available_bytes: int | None, budget_bytes: int | None,
             near_frac: float = 0.9) -> bool:
    """The process tree uses `near_frac` of the budget, or the machine has less than the rest
    of it still available (the RAM hint's test, and the worker controller's)."""
    if rss_bytes is None or budget_bytes is None or budget_bytes <= 0:
        return False
    low_avail = available_bytes is not None and available_bytes < (1 - near_frac) * budget_bytes
    return rss_bytes >= near_frac * budget_bytes or low_avail


def ram_hint(rss_bytes: int | None, available_bytes: int | None, budget_bytes: int | None,
             near_frac: float = 0.9) -> str | None:
    """The process tree is close to the RAM budget, or the machine is close to running out."""
    if not ram_near(rss_bytes, available_bytes, budget_bytes, near_frac):
        return None
    avail = "" if available_bytes is None else f", {fb(available_bytes)} still available"
    return (f"RAM nearing the budget: the run uses {fb(rss_bytes)} of "
            f"{fb(budget_bytes)}{avail}; lower num_workers or batch_size, or reduce "
            f"the images more (reduce_ratio), before the OOM killer ends the run")


def vram_headroom_hint(peaks: dict[int, tuple[int, int]], used_below: float = 0.5) -> str | None:
    """Every monitored GPU stayed well under its memory: a bigger batch would fit.

    `peaks` maps a GPU index to (peak used bytes, total bytes) over the run so far.
    """
    if not peaks:
        return None
    fracs = {i: used / total for i, (used, total) in peaks.items() if total}
    if not fracs or max(fracs.values()) >= used_below:
        return None
    worst = max(fracs.values())
    # One unit for used/total, so the two read as a fraction.
    each = ", ".join(f"GPU {i} {peaks[i][0] / GIB:.1f}/{peaks[i][1] / GIB:.1f} GiB"
                     for i in sorted(fracs))
    grow = max(2, int(0.9 / max(worst, 0.05)))
    return (f"VRAM headroom unused: peak use {each} ({worst:.0%} at most); batch_size could "
            f"grow about {grow}x (raise --batch-size and lower --accumulate to keep the "
            f"effective batch, or re-run `python -m autotune probe`)")


def shm_hint(num_workers: int | None, prefetch_factor: int | None, batch_bytes: int | None,
             ranks: int, shm: tuple[int, int] | None, margin: float = 2.0) -> str | None:
    """DataLoader workers hand batches over in /dev/shm; a container's default 64 MB is not
    enough and the run dies with a bus error. Need: ranks x workers x prefetch x batch bytes,
    with a margin for batches in flight; or /dev/shm is already nearly full."""
    if not num_workers or shm is None:
        return None
    total, used = shm
    fix = "give the container more (docker --shm-size=8g) or lower num_workers"
    if total and used > 0.9 * total:
        return (f"/dev/shm too small for the workers: {fb(used)} of "
                f"{fb(total)} in use with {num_workers} workers per rank; {fix}")
    if not batch_bytes:
        return None
    prefetch = prefetch_factor or 2
    need = ranks * num_workers * prefetch * batch_bytes
    if need * margin <= total - used:
        return None
    return (f"/dev/shm too small for the workers: {ranks} rank(s) x {num_workers} workers x "
            f"{prefetch} prefetched batches of {fb(batch_bytes)} need "
            f"~{fb(need)} (x{margin:g} margin), /dev/shm has "
            f"{fb(total - used)} free; {fix}")


def tensor_bytes(batch: Any) -> int:
    """Bytes of every tensor in a (nested) batch; what a worker must put into shared memory."""
    import torch
    if isinstance(batch, torch.Tensor):
        return batch.numel() * batch.element_size()
    if isinstance(batch, dict):
        return sum(tensor_bytes(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(tensor_bytes(v) for v in batch)
    return 0
