"""The batch one forward/backward may take when the images grow mid-run (a curriculum stage).

The probe measures a memory line (fixed + per-sample bytes) at the largest image the data had
when it ran. A later stage that serves larger images (pages of 2, 3, ... systems where the
probe saw single systems) moves the per-sample term with the pixel count: activations are what
grows, the weights and optimizer state (the fixed term) do not. So the line at the new size is
fixed + per_sample x (new pixels / measured pixels), and the batch is the largest under the same
budget the probe used. This is a prediction from a measurement, and says so; the OOM back-off
stays behind it.

The run keeps its effective batch: only the micro-batch (samples per forward/backward, the
loader batch split in chunks whose gradients accumulate) changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autotune.decide.context import shape_for
from autotune.records import Measurements
from autotune.units import format_bytes as fb


@dataclass(frozen=True)
class StageMemory:
    """A measured memory line and the image it was measured at: what a stage re-decides from."""
    fixed_bytes: float
    per_sample_bytes: float
    height: int                         # px of the largest image the line was measured at
    width: int
    budget_bytes: int                   # what a step may use (the probe's model budget)
    source: str = "measured"

    def __post_init__(self) -> None:
        for name in ("height", "width", "budget_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.per_sample_bytes <= 0:
            raise ValueError(f"per_sample_bytes must be positive, got {self.per_sample_bytes!r}")

    @classmethod
    def from_profile(cls, profile: dict[str, Any]) -> "StageMemory | None":
        """The line a probe recorded (its details' memory fit, the model budget and the
        largest image at the fit's ratio); None when the profile has none of that."""
        details = profile.get("details") or {}
        fit, budget = details.get("memory_fit") or {}, details.get("model_memory_budget_bytes")
        ratio = fit.get("reduce_ratio")
        if ratio is None or not budget or not fit.get("per_sample_bytes"):
            return None
        shape = shape_for(Measurements.from_dict(profile.get("measurements")), ratio)
        try:
            if shape is None:
                return None
            return cls(float(fit["fixed_bytes"]), float(fit["per_sample_bytes"]),
                       int(shape[0]), int(shape[1]), int(budget), str(fit.get("source") or "measured"))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class StageBatch:
    batch: int                          # samples per forward/backward that fit (>= 1)
    predicted_peak_bytes: int
    pixels_ratio: float                 # the stage's largest image over the measured one
    reason: str


def batch_at_size(memory: StageMemory, height: int, width: int, cap: int) -> StageBatch:
    """The largest batch (at most `cap`, the loader batch) whose predicted peak at images of
    `height` x `width` stays under the budget; 1 when even that is predicted over (the OOM
    back-off then has the last word, and the reason says so)."""
    scale = (height * width) / (memory.height * memory.width)
    per = memory.per_sample_bytes * scale
    room = memory.budget_bytes - memory.fixed_bytes
    fits = int(room // per) if room > 0 else 0
    batch = max(1, min(cap, fits))
    peak = int(memory.fixed_bytes + per * batch)
    over = "" if fits >= 1 else "; even 1 is predicted over the budget (the OOM back-off decides)"
    return StageBatch(batch, peak, round(scale, 3),
                      f"images {height}x{width} px, {scale:.2f}x the pixels of the "
                      f"{memory.height}x{memory.width} px the memory line was {memory.source} at: "
                      f"{fb(memory.fixed_bytes)} + {fb(per)}/sample, batch {batch} predicted "
                      f"{fb(peak)} of {fb(memory.budget_bytes)}{over}")
