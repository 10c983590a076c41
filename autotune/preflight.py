"""Will a run fit before it starts? The predicted host peak (and the VRAM peak on a GPU) of
the settings about to train, held to the budgets, and the nearest settings that would fit.

The step's own figure (model, optimizer, the batch at the largest image) is
`autotune.feasible`'s predictor, the one `autotune search` rejects points with. This module
adds what a training run holds beside its step, the process itself and the loader's workers,
and, over budget, walks the batch down (accumulation keeping the effective batch), then the
reduce ladder, to name what fits. Pure: the caller measures and says; tables test it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autotune.decide.batch import REDUCE_LADDER
from autotune.feasible import MemoryPredictor
from autotune.records import HardwareInfo
from autotune.settings import Settings


@dataclass(frozen=True)
class RunHolds:
    """What a training run holds beside its step, per rank."""
    process_bytes: float               # the training process's own RSS
    worker_bytes: float                # one loader worker
    ranks: int = 1                     # training processes sharing this machine's RAM
    on_gpu: bool = False               # the step's peak lands in VRAM, not RAM

    def __post_init__(self) -> None:
        for name in ("process_bytes", "worker_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {self.ranks!r}")


@dataclass(frozen=True)
class Peak:
    host_bytes: float                  # the run's RAM: every rank, its workers
    vram_bytes: float | None           # one device's step; None on CPU


@dataclass(frozen=True)
class Limits:
    ram_budget_bytes: int
    vram_budget_bytes: int | None = None

    def over(self, peak: Peak) -> list[str]:
        """What the peak exceeds: "RAM", "VRAM" (none: it fits)."""
        out = ["RAM"] if peak.host_bytes > self.ram_budget_bytes else []
        if peak.vram_bytes is not None and self.vram_budget_bytes is not None \
                and peak.vram_bytes > self.vram_budget_bytes:
            out.append("VRAM")
        return out


def run_ram(hw: HardwareInfo, own_rss_bytes: int) -> HardwareInfo:
    """The machine as the run about to start sees it: RAM available now, plus what this
    process already holds (it is part of the run, and counted in its peak)."""
    if hw.ram_available_bytes is None:
        return hw
    return replace(hw, ram_available_bytes=min(hw.ram_bytes,
                                               hw.ram_available_bytes + int(own_rss_bytes)))


def predict_peak(predictor: MemoryPredictor, settings: Settings,
                 holds: RunHolds) -> Peak | None:
    """The run's peaks at `settings`; None when the predictor cannot tell."""
    step = predictor.predict_bytes(settings)
    if step is None:
        return None
    process = 0.0 if predictor.includes_process() else holds.process_bytes
    host = process + settings.num_workers * holds.worker_bytes
    if holds.on_gpu:
        return Peak(holds.ranks * host, step)
    return Peak(holds.ranks * (host + step), None)


def what_fits(predictor: MemoryPredictor, settings: Settings, holds: RunHolds,
              limits: Limits, ladder: tuple[float, ...] = REDUCE_LADDER) -> Settings | None:
    """The nearest settings that fit: the largest smaller batch at this reduce ratio, with the
    accumulation that keeps the effective batch; else the highest lower ratio of the ladder
    where some batch fits; None when not even batch 1 at the lowest ratio does."""
    effective = settings.batch_size * settings.accumulate_grad_batches
    ratios = [settings.reduce_ratio] + [r for r in ladder if r < settings.reduce_ratio - 1e-9]
    for ratio in ratios:
        at = replace(settings, reduce_ratio=ratio)
        top = settings.batch_size - 1 if ratio == settings.reduce_ratio else settings.batch_size
        batch = _largest_batch(predictor, at, holds, limits, top)
        if batch is not None:
            return replace(at, batch_size=batch,
                           accumulate_grad_batches=max(1, math.ceil(effective / batch)))
    return None


def _largest_batch(predictor: MemoryPredictor, settings: Settings, holds: RunHolds,
                   limits: Limits, top: int) -> int | None:
    """The largest batch in 1..top that fits (memory grows with the batch: bisection)."""
    def fits(b: int) -> bool:
        peak = predict_peak(predictor, replace(settings, batch_size=b), holds)
        return peak is not None and not limits.over(peak)

    if top < 1 or not fits(1):
        return None
    lo, hi = 1, top                    # fits(lo) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
