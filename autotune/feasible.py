"""Reject settings the memory model says will not fit, before they run: `autotune search`
before a trial is launched, `smt.train` before any data work (through `autotune.preflight`).

Prediction = fixed + per_sample x batch, with per_sample scaled by the image area
(reduce_ratio squared) from the ratio it was measured at. The fits come from the probe's
measurements in a profile (`--from`), else from the model's own `estimate_memory` through the
workload interface. The constraint handed to Optuna is (predicted - budget) / budget: positive
means infeasible, and its size tells the sampler how far outside the region a point was.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from autotune.decide.batch import process_base_rss
from autotune.decide.context import Budgets
from autotune.fits import bound_memory, fit_trials
from autotune.records import HardwareInfo, Measurements, MemoryFit
from autotune.settings import Settings
from autotune.workload import DEFAULT_WORKLOAD


class MemoryPredictor(ABC):
    """One method: predicted peak bytes for a trial's settings, or None when unknowable."""
    source: str = ""

    @abstractmethod
    def predict_bytes(self, settings: Settings) -> float | None: ...

    def includes_process(self) -> bool:
        """Whether the prediction holds the training process's own RSS (a CPU profile's fits
        carry it as their offset); a caller adds it where not."""
        return False


@dataclass
class FitPredictor(MemoryPredictor):
    """Linear fits per measured reduce ratio; the nearest ratio's fit is rescaled by area.

    `offset_bytes` is what the fits leave out: on CPU the probe measures RSS growth of a step,
    so the training process's own RSS before the first step is added back.
    """
    fits: list[MemoryFit]
    source: str = "probe measurements"
    offset_bytes: float = 0.0

    def predict_bytes(self, settings: Settings) -> float | None:
        if not self.fits:
            return None
        fit = min(self.fits, key=lambda f: abs(f.reduce_ratio - settings.reduce_ratio))
        area = (settings.reduce_ratio / fit.reduce_ratio) ** 2
        # Per-device batch is what lands in one device's memory; DDP replicates the fixed part.
        return (self.offset_bytes + fit.fixed_bytes
                + fit.per_sample_bytes * area * settings.batch_size)

    def includes_process(self) -> bool:
        return self.offset_bytes > 0


@dataclass
class NullPredictor(MemoryPredictor):
    source: str = "none (no profile measurements, no workload estimate)"

    def predict_bytes(self, settings: Settings) -> float | None:
        return None


def fits_from_profile(profile: dict[str, Any]) -> list[MemoryFit]:
    """MemoryFit records from a profile: stored fits, else fitted from its measured model
    trials (the probe's own `fit_trials`), else from the workload's own estimates it carries
    (a plan profile). The profile is read as the decision reads it (`Measurements`)."""
    m = Measurements.from_dict(profile.get("measurements"))
    stored = _stored_fits(m)
    if stored:
        return stored
    fits = [_floored(f) for ratio in sorted({t.reduce_ratio for t in m.model_trials})
            if (f := fit_trials(m.model_trials, ratio)) is not None]
    if fits:
        return fits
    precision = (profile.get("settings") or {}).get("precision")
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for e in m.estimates:
        if not e.estimated_memory_bytes or (precision and e.precision not in (None, precision)):
            continue
        by_ratio.setdefault(float(e.reduce_ratio), []).append(
            (int(e.batch_size), int(e.estimated_memory_bytes)))
    return [MemoryFit(f.reduce_ratio, f.fixed_bytes, f.per_sample_bytes, f.points, "predicted")
            for ratio, pts in by_ratio.items() if (f := fit_line(ratio, pts)) is not None]


def _stored_fits(m: Measurements) -> list[MemoryFit]:
    """The fits the model probe stored with its trials (`measurements.model.fits`; older
    writers: `memory_fits` beside or inside it). Malformed rows are skipped."""
    model = m.extra.get("model") or {}
    for rows in (m.extra.get("memory_fits"), model.get("fits"), model.get("memory_fits")):
        rows = [rows] if isinstance(rows, dict) else rows
        if not isinstance(rows, list):
            continue
        fits = []
        for r in rows:
            try:
                fits.append(MemoryFit(reduce_ratio=float(r["reduce_ratio"]),
                                      fixed_bytes=float(r["fixed_bytes"]),
                                      per_sample_bytes=float(r["per_sample_bytes"]),
                                      points=int(r.get("points", 0)),
                                      source=str(r.get("source", "measured"))))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        if fits:
            return fits
    return []


def offset_from_profile(profile: dict[str, Any]) -> float:
    """The training process's RSS before a step (`decide`'s `process_base_rss`), when the fits
    are CPU RSS growth; 0 when they are a GPU's allocator peaks."""
    m = Measurements.from_dict(profile.get("measurements"))
    on_cpu = bool(m.model_trials) and all(str(t.device).startswith("cpu")
                                          for t in m.model_trials)
    return float(process_base_rss(m)) if on_cpu else 0.0


def _floored(fit: MemoryFit) -> MemoryFit:
    """A negative fixed part from noisy points read as 0 (the search adds the offset itself)."""
    return MemoryFit(fit.reduce_ratio, max(0.0, fit.fixed_bytes), fit.per_sample_bytes,
                     fit.points, fit.source)


def fit_line(ratio: float, points: list[tuple[int, int]]) -> MemoryFit | None:
    """memory = fixed + per_sample x batch, the probe's own line (autotune.fits.bound_memory:
    one batch size measured gives a line through the origin, the safe side); a negative
    fixed part from noisy points is read as 0."""
    fit = bound_memory([(b, float(m)) for b, m in points], ratio)
    return None if fit is None else _floored(fit)


class WorkloadPredictor(MemoryPredictor):
    """The model's own estimate through the workload interface, at the data's largest shape."""

    def __init__(self, workload: Any) -> None:
        self.workload = workload
        self.source = "model estimate"
        self._shapes: dict[float, Any] = {}

    def predict_bytes(self, settings: Settings) -> float | None:
        ratio = round(settings.reduce_ratio, 6)
        if ratio not in self._shapes:
            self._shapes[ratio] = self.workload.largest_shape(ratio)
        est = self.workload.estimate_memory(settings.batch_size, self._shapes[ratio],
                                            settings.precision)
        if est is None:
            return None
        return float(getattr(est, "total_bytes", est))


def workload_predictor(preset: str | None, data: str | None,
                       name: str = DEFAULT_WORKLOAD, **options: Any) -> MemoryPredictor:
    """A WorkloadPredictor for the named workload, or a NullPredictor saying why there is none.

    Opening the workload opens the dataset (the embedded default is rendered once into the
    cache, which the trials then reuse) and scans it for the largest image. `options` go to
    the workload's factory as they are (smt.train passes its format).
    """
    kwargs = {k: v for k, v in (("preset", preset), ("data", data)) if v is not None}
    kwargs.update(options)
    try:
        from autotune.workload import load_workload
        return WorkloadPredictor(load_workload(name, **kwargs))
    except Exception as exc:  # no estimate means no rejection, and the table says so
        return NullPredictor(source=f"none (workload estimate unavailable: {exc})")


def choose_predictor(profile: dict[str, Any] | None, preset: str | None,
                     data: str | None, workload: str = DEFAULT_WORKLOAD,
                     **options: Any) -> MemoryPredictor:
    """The profile's measured (or predicted) fits when it has any, else the workload's own
    estimate (`options` go to its factory), else a NullPredictor saying why."""
    if profile is not None:
        fits = fits_from_profile(profile)
        if fits:
            kind = "predicted" if all(f.source == "predicted" for f in fits) else "measured"
            return FitPredictor(fits, offset_bytes=offset_from_profile(profile),
                                source=f"{kind} fits in profile {profile.get('name', '?')}")
    if workload == "none":
        return NullPredictor(source="none (--workload none and no profile fits)")
    # smt.train's own default preset when a trial passes none (--max-steps is always given).
    return workload_predictor(preset or "paper", data, workload, **options)


def ram_budget(hw: HardwareInfo, where: str = "this machine's",
               budgets: Budgets = Budgets()) -> tuple[int, str]:
    """Bytes of RAM a run may use, and how: the probe's budget rule (autotune.decide.Budgets,
    a share of the RAM available, which a container's limit bounds) less its RAM margin."""
    ram = int(budgets.ram_budget(hw) * (1 - budgets.ram_margin))
    return ram, (f"{budgets.ram_fraction:.0%} of {where} available RAM less "
                 f"{budgets.ram_margin:.0%} margin")


def vram_budget(hw: HardwareInfo, where: str = "this machine's",
                budgets: Budgets = Budgets()) -> tuple[int, str] | None:
    """Bytes one device's step may use (the smallest GPU less the VRAM margin); None on CPU."""
    if not hw.gpus:
        return None
    smallest = min(g.memory_bytes for g in hw.gpus)
    return budgets.vram_budget(smallest), f"{where} smallest GPU less {budgets.vram_margin:.0%}"


def device_budget(hw: HardwareInfo, where: str = "this machine's",
                  budgets: Budgets = Budgets()) -> tuple[int, str]:
    """The budget a step's predicted peak is held to: VRAM on a GPU machine, else RAM."""
    return vram_budget(hw, where, budgets) or ram_budget(hw, where, budgets)


@dataclass(frozen=True)
class Feasibility:
    predicted_bytes: float | None
    budget_bytes: int | None

    @property
    def violation(self) -> float | None:
        """(predicted - budget) / budget: > 0 means over budget; None when unknown."""
        if self.predicted_bytes is None or not self.budget_bytes:
            return None
        return (self.predicted_bytes - self.budget_bytes) / self.budget_bytes

    @property
    def feasible(self) -> bool:
        v = self.violation
        return v is None or v <= 0
