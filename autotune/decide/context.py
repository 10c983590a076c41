"""What every rule shares: the budgets, the context the rules read and write, the rule base
class, and the decision they produce together."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autotune.errors import UserError
from autotune.records import HardwareInfo, LoaderTrial, Measurements, ModelTrial
from autotune.settings import Settings
from autotune.staff import DEFAULT_STAFF_SPACE_PX

# (batch_size, reduce_ratio, precision) -> the workload's estimate of a step's peak bytes.
EstimateFn = Callable[[int, float, str], "int | None"]


class NothingFitsError(UserError):
    """No setting fits the budget even at its smallest; the message says what would fit."""


@dataclass(frozen=True)
class Budgets:
    # None: ram_fraction x the RAM available when measured (the OS, the notebook kernel and
    # page cache need the rest).
    ram_budget_bytes: int | None = None
    ram_fraction: float = 0.85
    # None: each GPU's memory less vram_margin (CUDA context and allocator fragmentation sit
    # outside the allocator peak the probe measures).
    vram_budget_bytes: int | None = None
    vram_margin: float = 0.10
    # On predicted RAM peaks: sampling every 50 ms misses short spikes.
    ram_margin: float = 0.10
    # The user's target samples per optimizer step; accumulation keeps it on small batches.
    effective_batch_size: int = 16
    # None: every visible GPU, or 1 on a CPU-only machine.
    devices: int | None = None
    # Start of the reduce ladder (a user who knows the images are huge starts lower).
    max_reduce_ratio: float = 1.0
    # Beyond this a fitted line is extrapolated too far to trust.
    max_batch_size: int = 256
    # DataLoader default: each worker keeps this many batches in /dev/shm.
    prefetch_factor: int = 2
    # Share of /dev/shm the loader may fill.
    shm_fraction: float = 0.5
    # Legibility target: the reduce ratio brings the measured staff space to this (px).
    staff_space_px: float = DEFAULT_STAFF_SPACE_PX

    def __post_init__(self) -> None:
        for name in ("ram_fraction", "vram_margin", "ram_margin", "shm_fraction"):
            v = getattr(self, name)
            upper = 1.0 if name in ("ram_fraction", "shm_fraction") else 0.9
            if not isinstance(v, (int, float)) or not 0.0 <= v <= upper or \
                    (name in ("ram_fraction", "shm_fraction") and v == 0):
                raise ValueError(f"{name} must be in (0, {upper}], got {v!r}")
        for name in ("ram_budget_bytes", "vram_budget_bytes", "devices"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("effective_batch_size", "max_batch_size", "prefetch_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.staff_space_px, (int, float)) and 1.0 <= self.staff_space_px <= 200):
            raise ValueError(f"staff_space_px must be in [1, 200] px, got {self.staff_space_px!r}")
        if not 0.05 <= self.max_reduce_ratio <= 1.0:
            raise ValueError(f"max_reduce_ratio must be in [0.05, 1], got {self.max_reduce_ratio!r}")

    def ram_budget(self, hw: HardwareInfo) -> int:
        if self.ram_budget_bytes is not None:
            return self.ram_budget_bytes
        available = hw.ram_available_bytes if hw.ram_available_bytes else hw.ram_bytes
        return int(self.ram_fraction * available)

    def vram_budget(self, memory_bytes: int) -> int:
        own = int(memory_bytes * (1.0 - self.vram_margin))
        return own if self.vram_budget_bytes is None else min(own, self.vram_budget_bytes)


@dataclass
class Decision:
    settings: Settings
    reasons: dict[str, str]
    sources: dict[str, str]            # per setting: measured / predicted / rule
    details: dict[str, Any]            # the numbers: budgets, predicted peaks, fits


@dataclass
class Context:
    """What the rules share: inputs, and the choices made so far."""
    hw: HardwareInfo
    m: Measurements
    budgets: Budgets
    estimate: EstimateFn | None = None
    predicted: bool = False            # measurements come from another machine (plan)
    chosen: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def choose(self, key: str, value: Any, reason: str, source: str) -> None:
        self.chosen[key] = value
        self.reasons[key] = reason
        self.sources[key] = source

    @property
    def on_gpu(self) -> bool:
        return bool(self.hw.gpus)

    @property
    def kind(self) -> str:
        """The device kind model trials must have run on to count here."""
        return "cuda" if self.on_gpu else "cpu"

    @property
    def ram_budget(self) -> int:
        return self.budgets.ram_budget(self.hw)

    def measured_source(self) -> str:
        return "predicted" if self.predicted else "measured"

    def model_trials(self, ratio: float | None = None) -> list[ModelTrial]:
        """Model trials on this device kind, at `ratio` when given."""
        return [t for t in self.m.model_trials if t.device.split(":")[0] == self.kind
                and (ratio is None or math.isclose(t.reduce_ratio, ratio))]


class Rule:
    """One group of settings. `apply` reads the context and calls `ctx.choose`."""
    keys: ClassVar[tuple[str, ...]] = ()

    def apply(self, ctx: Context) -> None:
        raise NotImplementedError


# -- readings of the measurements more than one rule needs -------------------------------------

def shape_for(m: Measurements, ratio: float) -> tuple[int, int] | None:
    """(height, width) of the largest image at `ratio`, from any trial or estimate."""
    for rec in [*m.model_trials, *m.estimates]:
        if math.isclose(rec.reduce_ratio, ratio):
            return rec.height, rec.width
    return None


def loader_worker_rss(trials: list[LoaderTrial]) -> float | None:
    """RSS per loader worker: the slope of the loader's tree RSS against the worker count
    (with no 0-worker trial, each trial's RSS shared over its workers and the main process)."""
    pts = [(t.num_workers, t.peak_rss_bytes) for t in trials if t.peak_rss_bytes]
    zero = [r for w, r in pts if w == 0]
    base = min(zero) if zero else None
    per = [(r - base) / w for w, r in pts if w > 0 and base is not None and r]
    if per:
        return max(1.0, max(per))
    with_workers = [r / (w + 1) for w, r in pts if w > 0 and r]
    return max(with_workers) if with_workers else None
