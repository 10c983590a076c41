"""What a trial is scored on. Small strategy classes behind one method, registered by name.

- throughput: training samples/s the trainer reports (it excludes its warm-up steps).
- quality: the validation metric after a fixed budget of samples, minimised; the pruner
  stops a trial whose intermediate validation is hopeless (Optuna prunes single-objective
  studies only).
- both: (samples/s, metric) as a two-objective study; the result is a Pareto front.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

from autotune.workload import TrialReport

# A short trial's SER is saturated near 100 for every setting, so the loss is the default:
# smooth, falls from the first steps and tracks SER later. `--metric val_ser` for long trials.
METRICS = ("val_loss", "val_ser")


class TrialFailed(Exception):
    """The trial produced no usable result (crash, OOM, time limit, missing metric)."""


def _number(report: TrialReport, key: str) -> float:
    value = report.metric(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TrialFailed(f"the trial reports no usable {key!r} (got {value!r})")
    return float(value)


class Objective(ABC):
    name: str = ""
    directions: tuple[str, ...] = ()
    names: tuple[str, ...] = ()          # what each value is, for tables and plots
    prunable: bool = False

    def __init__(self, metric: str = "val_loss") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.metric = metric

    @abstractmethod
    def values(self, report: TrialReport) -> list[float]:
        """The objective values from a finished trial's report."""

    @property
    def needs_validation(self) -> bool:
        return False


def samples_per_s(report: TrialReport) -> float:
    """Steady-state rate when the trainer reports one (warm-up excluded), else its overall rate.

    A short trial's overall rate carries the first step and the DataLoader workers' start-up,
    which a long run pays once; the steady rate is what the saved settings will deliver.
    """
    if report.steady_samples_per_s is not None:
        return _number(report, "steady_samples_per_s")
    return _number(report, "samples_per_s")


class Throughput(Objective):
    name = "throughput"
    directions = ("maximize",)
    names = ("samples/s",)

    def values(self, report: TrialReport) -> list[float]:
        return [samples_per_s(report)]


class Quality(Objective):
    name = "quality"
    directions = ("minimize",)
    prunable = True

    @property
    def names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.metric,)

    @property
    def needs_validation(self) -> bool:
        return True

    def values(self, report: TrialReport) -> list[float]:
        return [_number(report, self.metric)]


class Both(Objective):
    name = "both"
    directions = ("maximize", "minimize")

    @property
    def names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("samples/s", self.metric)

    @property
    def needs_validation(self) -> bool:
        return True

    def values(self, report: TrialReport) -> list[float]:
        return [samples_per_s(report), _number(report, self.metric)]


OBJECTIVES: dict[str, type[Objective]] = {"throughput": Throughput, "quality": Quality,
                                          "both": Both}


def make_objective(name: str, metric: str = "val_loss") -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](metric)
