"""The settings a profile carries: the contract between autotune and the training job.

The keys are fixed by the profile schema (README, "What a profile is"). Defaults are the safe
start for a small machine, found by hand on one, not the reference server's settings, so
that a run with no profile at all does not stall or OOM.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from autotune.bounds import COUNTS, count_problem

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
# Keys a profile may lack: added after schema 1 shipped, with a default that means "as before".
OPTIONAL_KEYS = frozenset({"num_threads"})
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "single_device",
              "fsdp", "deepspeed")
# The counts among the fields: each bounded as its flag is (autotune.bounds.COUNTS).
COUNT_FIELDS = ("num_proc", "batch_size", "accumulate_grad_batches", "devices", "num_workers")


class SettingError(ValueError):
    """A bad value of one setting; `.field` names it, so a caller can name its own flag for
    it without reading the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Settings:
    # One map worker: the reference's num_proc=8 multiplies peak RAM by 8.
    num_proc: int = 1
    # 100 rows buffered per writer flush: 500 needed hundreds of GB on full pages.
    writer_batch_size: int = 100
    # Batch 1 always fits if anything does; the probe raises it from measurements.
    batch_size: int = 1
    # Full resolution until the probe shows memory forces a reduction.
    reduce_ratio: float = 1.0
    accumulate_grad_batches: int = 1
    # Two workers keep a small model fed on a 2-4 core box without starving the map.
    num_workers: int = 2
    # bf16 is safe on CPU and on capability >= 8; the probe picks fp16 for T4/P100.
    precision: str = "bf16-mixed"
    strategy: str = "auto"
    devices: int = 1
    # The effective batch the user aims for; accumulation is derived from it.
    effective_batch_size: int = 1
    # torch intra-op threads of the training process (loader workers get 1 each). None:
    # torch's own choice; profiles written before the key existed load with it.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("writer_batch_size", "effective_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(name, f"{name} must be a positive integer, got {value!r}")
        for name in COUNT_FIELDS:
            problem = count_problem(name, getattr(self, name))
            if problem:
                raise SettingError(name, problem)
        if not isinstance(self.reduce_ratio, (int, float)) or isinstance(self.reduce_ratio, bool) \
                or not math.isfinite(self.reduce_ratio) or not 0.05 <= self.reduce_ratio <= 1.0:
            raise SettingError("reduce_ratio", f"reduce_ratio must be in [0.05, 1.0], "
                                               f"got {self.reduce_ratio!r}")
        if self.num_threads is not None and count_problem("num_threads", self.num_threads):
            lo, hi = COUNTS["num_threads"]
            raise SettingError("num_threads", f"num_threads must be None or an integer in "
                                              f"[{lo}, {hi}], got {self.num_threads!r}")
        if self.precision not in PRECISIONS:
            raise SettingError("precision", f"precision must be one of {', '.join(PRECISIONS)}, "
                                            f"got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise SettingError("strategy", f"strategy must be one of {', '.join(STRATEGIES)}, "
                                           f"got {self.strategy!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        """Build from a profile's `settings`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown settings key(s): {', '.join(unknown)}")
        values = dict(data)
        if "reduce_ratio" in values and isinstance(values["reduce_ratio"], int) \
                and not isinstance(values["reduce_ratio"], bool):
            values["reduce_ratio"] = float(values["reduce_ratio"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "Settings":
        """Apply explicit flags (None means 'not given') and keep the effective batch honest."""
        given = {k: v for k, v in overrides.items() if v is not None}
        merged = replace(self, **given)
        if "effective_batch_size" not in given:
            merged = replace(merged, effective_batch_size=merged.batch_size
                             * merged.accumulate_grad_batches * merged.devices)
        return merged


def accumulation_for(effective_batch: int, batch_size: int, devices: int) -> int:
    """Accumulation steps that reach at least `effective_batch` samples per optimizer step."""
    return max(1, math.ceil(effective_batch / (batch_size * devices)))
