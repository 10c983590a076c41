"""The search space: which knobs each objective turns, and their bounds.

Bounds come from the probe's feasible region when a profile is given (`--from`): its settings
are the centre, its measured batch sizes the scale. Without a profile the bounds are
conservative (batch 1-16, reduce ratio 0.25-1.0, workers up to 4) and the memory model
rejects what would not fit before anything runs. Throughput turns the axes the probe's loop
stage decides (batch, loader workers, torch threads, precision), so a search can find what the
probe would miss. It never turns reduce ratio or effective batch: a smaller image or fewer
optimizer steps is always faster and would win by reading scores worse; those trade-offs
belong to `quality` and `both`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from autotune.bounds import most_threads_per_rank
from autotune.settings import Settings, accumulation_for

# Reduce ratios tried: a ladder, not a float range, because every new ratio means preparing
# (resizing and caching) the dataset again; five rungs keep that to five preparations.
RATIO_LADDER = (0.25, 0.35, 0.5, 0.7, 1.0)
# Learning rates around the reference Adam 1e-4, a decade each way.
LR_RANGE = (1e-5, 1e-3)
# Never search beyond these, whatever a profile says: each trial must stay a short run.
MAX_BATCH = 256
MAX_WORKERS = 16
MAX_THREADS = 64
# Precisions a trial may train in, per device kind (bf16 on CUDA only from capability 8.0,
# where it has tensor cores; a CPU without native bf16 emulates it, which only a run shows).
CPU_PRECISIONS = ("32-true", "bf16-mixed")
CUDA_PRECISIONS = ("16-mixed", "32-true")
CUDA_BF16_PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")

KNOBS = ("batch_size", "effective_batch_size", "reduce_ratio", "num_workers", "num_threads",
         "precision", "lr")
SEARCHED = {
    "throughput": ("batch_size", "num_workers", "num_threads", "precision"),
    "quality": ("batch_size", "effective_batch_size", "reduce_ratio", "lr"),
    "both": ("batch_size", "effective_batch_size", "reduce_ratio", "num_workers", "lr"),
}


@dataclass(frozen=True)
class TrialPoint:
    """One point of the space: the settings a trial trains with, plus its learning rate."""
    settings: Settings
    lr: float | None            # None: the trainer's default

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"batch_size": s.batch_size, "accumulate_grad_batches": s.accumulate_grad_batches,
                "effective_batch_size": s.effective_batch_size, "reduce_ratio": s.reduce_ratio,
                "num_workers": s.num_workers, "num_threads": s.num_threads,
                "precision": s.precision, "lr": self.lr}


@dataclass(frozen=True)
class SearchSpace:
    base: Settings                                   # values of knobs not searched
    searched: tuple[str, ...]
    batch_size: tuple[int, int] = (1, 16)
    effective_batch_size: tuple[int, ...] = (1, 2, 4, 8, 16)
    reduce_ratio: tuple[float, ...] = RATIO_LADDER
    num_workers: tuple[int, int] = (0, 4)
    # On a GPU the step does not run on the CPU threads: (0, 0) means "leave torch's own".
    num_threads: tuple[int, int] = (1, 4)
    precision: tuple[str, ...] = CPU_PRECISIONS
    lr: tuple[float, float] = LR_RANGE
    source: str = "conservative defaults"            # where the bounds came from, for the table
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.searched) - set(KNOBS)
        if unknown:
            raise ValueError(f"searched: unknown knob(s) {sorted(unknown)}")
        lo, hi = self.batch_size
        if not 1 <= lo <= hi:
            raise ValueError(f"batch_size bounds must satisfy 1 <= lo <= hi, got {self.batch_size}")
        lo, hi = self.num_workers
        if not 0 <= lo <= hi:
            raise ValueError(f"num_workers bounds must satisfy 0 <= lo <= hi, got {self.num_workers}")
        lo, hi = self.num_threads
        if not (0 <= lo <= hi and (lo >= 1 or hi == 0)):
            raise ValueError(f"num_threads bounds must satisfy 1 <= lo <= hi (or be (0, 0)), "
                             f"got {self.num_threads}")
        if not self.precision:
            raise ValueError("precision choices must not be empty")
        if not self.effective_batch_size or min(self.effective_batch_size) < 1:
            raise ValueError("effective_batch_size choices must be positive integers")
        if not self.reduce_ratio or not all(0.05 <= r <= 1.0 for r in self.reduce_ratio):
            raise ValueError("reduce_ratio choices must lie in [0.05, 1.0]")
        if not 0 < self.lr[0] <= self.lr[1]:
            raise ValueError(f"lr bounds must satisfy 0 < lo <= hi, got {self.lr}")

    def suggest(self, trial: optuna.trial.Trial) -> TrialPoint:
        b = self.base
        batch = b.batch_size
        if "batch_size" in self.searched:
            batch = trial.suggest_int("batch_size", *self.batch_size, log=True)
        eff = b.effective_batch_size
        if "effective_batch_size" in self.searched:
            eff = trial.suggest_categorical("effective_batch_size", list(self.effective_batch_size))
        ratio = b.reduce_ratio
        if "reduce_ratio" in self.searched:
            ratio = trial.suggest_categorical("reduce_ratio", list(self.reduce_ratio))
        workers = b.num_workers
        if "num_workers" in self.searched:
            workers = trial.suggest_int("num_workers", *self.num_workers)
        threads = b.num_threads
        if "num_threads" in self.searched and self.num_threads[1] >= 1:
            threads = trial.suggest_int("num_threads", *self.num_threads)
        precision = b.precision
        if "precision" in self.searched:
            precision = str(trial.suggest_categorical("precision", list(self.precision)))
        lr = None
        if "lr" in self.searched:
            lr = trial.suggest_float("lr", *self.lr, log=True)
        return make_point(b, batch, eff, float(ratio), workers, lr, num_threads=threads,
                          precision=precision)

    def describe(self) -> list[tuple[str, str]]:
        """(knob, range or fixed value) rows for the start-of-search table."""
        b = self.base
        rows = []
        for knob in KNOBS:
            if knob in self.searched:
                val = getattr(self, knob)
                text = (f"{val[0]:g} .. {val[1]:g}" if knob in ("batch_size", "num_workers",
                                                                 "num_threads", "lr")
                        else ", ".join(f"{v:g}" if isinstance(v, (int, float)) else str(v)
                                       for v in val))
            elif knob == "lr":          # the trainer owns it (autotune does not know its value)
                text = "fixed: the trainer's default"
            else:
                fixed = getattr(b, knob)
                text = "fixed " + (f"{fixed:g}" if isinstance(fixed, (int, float)) else
                                   str(fixed if fixed is not None else "torch's own"))
            rows.append((knob, text))
        return rows


def make_point(base: Settings, batch: int, effective: int, ratio: float, workers: int,
               lr: float | None, *, num_threads: int | None = None,
               precision: str | None = None) -> TrialPoint:
    """Settings for one trial; accumulation keeps at least the asked effective batch. Threads
    and precision default to the base's."""
    acc = accumulation_for(effective, batch, base.devices)
    settings = replace(base, batch_size=batch, accumulate_grad_batches=acc, reduce_ratio=ratio,
                       num_workers=workers,
                       num_threads=base.num_threads if num_threads is None else num_threads,
                       precision=precision or base.precision,
                       effective_batch_size=batch * acc * base.devices)
    return TrialPoint(settings=settings, lr=lr)


def _pow2_around(centre: int) -> tuple[int, ...]:
    lo = max(1, centre // 2)
    return tuple(sorted({lo, centre, centre * 2, centre * 4}))


def space_for(objective: str, profile: dict[str, Any] | None,
              cpu_count: int | None = None) -> SearchSpace:
    """Bounds from a probe profile (its settings and measurements), else conservative ones."""
    searched = SEARCHED[objective]
    cpus = cpu_count or os.cpu_count() or 1
    if profile is None:
        return SearchSpace(base=Settings(effective_batch_size=4, accumulate_grad_batches=4),
                           searched=searched, num_workers=(0, min(cpus, 4)),
                           num_threads=(1, min(cpus, MAX_THREADS)),
                           effective_batch_size=(1, 2, 4, 8, 16))
    base = Settings.from_dict(profile.get("settings", {}))
    hw = profile.get("hardware") or {}
    cpus = int(hw.get("cpu_count") or cpus)
    gpus = [g for g in hw.get("gpus") or [] if isinstance(g, dict)]
    measured_ok = [int(t["batch_size"]) for t in _model_trials(profile)
                   if not t.get("oom") and not t.get("error") and t.get("batch_size")]
    top = max(measured_ok + [base.batch_size])
    # Twice the largest batch the probe saw work: the memory model rejects what does not fit.
    batch_hi = min(MAX_BATCH, max(4, 2 * top))
    ratios = sorted({r for r in RATIO_LADDER if r <= max(base.reduce_ratio, 0.05) + 1e-9}
                    | {round(base.reduce_ratio, 4)}
                    | {float(t["reduce_ratio"]) for t in _model_trials(profile)
                       if t.get("reduce_ratio") and not t.get("oom")})
    # Above the probe's ratio memory would grow: keep the rungs the probe found feasible.
    return SearchSpace(
        base=base, searched=searched,
        batch_size=(1, batch_hi),
        effective_batch_size=_pow2_around(base.effective_batch_size),
        reduce_ratio=tuple(ratios),
        num_workers=(0, min(MAX_WORKERS, max(1, cpus))),
        # Threads per rank within what autotune.bounds lets smt.train start on these cores.
        num_threads=(0, 0) if gpus else
        (1, min(MAX_THREADS, max(1, cpus), most_threads_per_rank(base.devices, cpus))),
        precision=_precisions(gpus),
        source=f"profile {profile.get('name', '?')}")


def _precisions(gpus: list[dict[str, Any]]) -> tuple[str, ...]:
    if not gpus:
        return CPU_PRECISIONS
    caps = [tuple(g.get("capability") or (0, 0)) for g in gpus]
    return CUDA_BF16_PRECISIONS if min(caps) >= (8, 0) else CUDA_PRECISIONS


def _model_trials(profile: dict[str, Any]) -> list[dict[str, Any]]:
    meas = profile.get("measurements") or {}
    for key in ("model", "model_trials", "model_probe"):
        rows = meas.get(key)
        if isinstance(rows, dict):
            rows = rows.get("trials")
        if isinstance(rows, list):
            return [r for r in rows if isinstance(r, dict)]
    return []
