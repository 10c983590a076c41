"""A training step's memory line at one reduce ratio, from the best evidence there is.

Each way of getting the line is a small strategy; `memory_line` tries them in the order of
`MEMORY_LINES` (most measured first) and keeps the first that answers. The lines themselves
are autotune.fits' (`fit_memory`, `bound_memory`).
"""
from __future__ import annotations

from dataclasses import dataclass

from autotune.decide.context import Context, EstimateFn
from autotune.fits import bound_memory, fit_memory
from autotune.records import MemoryFit
from autotune.units import format_bytes as fb


@dataclass
class MemoryLine:
    fit: MemoryFit
    source: str                        # the setting's source: measured / predicted
    how: str                           # for the reason: how the line was obtained
    oom_floor: int | None              # the smallest batch that ran out of memory
    top_ok: int | None                 # the largest batch measured without OOM


@dataclass
class Evidence:
    """What is known at one ratio on this device kind."""
    ctx: Context
    ratio: float
    precision: str
    points: list[tuple[int, float]]    # (batch, measured peak bytes)
    recorded: dict[int, int | None]    # batch -> the estimate recorded with the trial
    oom_floor: int | None
    top_ok: int | None

    def estimate(self, batch: int) -> int | None:
        est = self.ctx.estimate
        return est(batch, self.ratio, self.precision) if est is not None else None

    def line(self, fit: MemoryFit, how: str, source: str | None = None,
             measured: bool = True) -> MemoryLine:
        return MemoryLine(fit, source or self.ctx.measured_source(), how, self.oom_floor,
                          self.top_ok if measured else None)


def evidence(ctx: Context, ratio: float, precision: str) -> Evidence:
    # An OOM at a smaller image predicts one at this size too, from the same batch on.
    ooms = [t.batch_size for t in ctx.model_trials() if t.oom and t.reduce_ratio <= ratio + 1e-9]
    ok = [t for t in ctx.model_trials(ratio)
          if not t.oom and t.error is None and t.peak_memory_bytes]
    pts = [(t.batch_size, float(t.peak_memory_bytes)) for t in ok]   # type: ignore[arg-type]
    return Evidence(ctx, ratio, precision, pts, {t.batch_size: t.estimated_memory_bytes for t in ok},
                    min(ooms) if ooms else None, max((b for b, _ in pts), default=None))


class LineStrategy:
    """One way to obtain the line; None when its evidence is missing."""

    def line(self, ev: Evidence) -> MemoryLine | None:
        raise NotImplementedError


class Fitted(LineStrategy):
    """Two batch sizes or more measured: least squares, set beside the model's estimate."""

    def line(self, ev: Evidence) -> MemoryLine | None:
        fit = fit_memory(ev.points, ev.ratio, ev.ctx.measured_source())
        if fit is None:
            return None
        batch = ev.top_ok or 1
        check = _check(fit, ev.estimate(batch) or ev.recorded.get(batch), batch)
        return ev.line(fit, f"least squares over {len(ev.points)} trials on {ev.ctx.kind}{check}")


class OnePointWithEstimate(LineStrategy):
    """One batch size measured: the slope from the estimate, the level from the measurement."""

    def line(self, ev: Evidence) -> MemoryLine | None:
        e1, e2 = ev.estimate(1), ev.estimate(2)
        if not ev.points or e1 is None or e2 is None or e2 <= e1:
            return None
        b0, v0 = ev.points[0]
        slope = (e2 - e1) * (v0 / max(1.0, float(ev.estimate(b0) or v0)))
        fit = MemoryFit(ev.ratio, v0 - slope * b0, slope, 1, "measured+estimate")
        return ev.line(fit, f"1 trial on {ev.ctx.kind} at batch {b0}, slope from the model's "
                            f"estimate")


class EstimateOnly(LineStrategy):
    """Nothing measured at this ratio: the model's estimate, scaled up by how far it fell
    short of measurements on this device kind."""

    def line(self, ev: Evidence) -> MemoryLine | None:
        e1, e2 = ev.estimate(1), ev.estimate(2)
        if e1 is None or e2 is None:
            return None
        scale = calibration(ev.ctx, ev.precision)
        fit = MemoryFit(ev.ratio, (2 * e1 - e2) * scale, (e2 - e1) * scale, 0, "predicted")
        how = "the model's own estimate" + (f" x {scale:.2f} (measured/estimate on "
                                            f"{ev.ctx.kind} here)" if scale != 1.0 else "")
        return ev.line(fit, how, source="predicted", measured=False)


class OnePointAlone(LineStrategy):
    """One batch size and no estimate: all memory counted per sample (pessimistic)."""

    def line(self, ev: Evidence) -> MemoryLine | None:
        fit = bound_memory(ev.points, ev.ratio, ev.ctx.measured_source())
        if fit is None:
            return None
        return ev.line(fit, f"1 trial on {ev.ctx.kind}, all memory counted per sample")


MEMORY_LINES: dict[str, LineStrategy] = {
    "fit": Fitted(),
    "one point + estimate": OnePointWithEstimate(),
    "estimate": EstimateOnly(),
    "one point": OnePointAlone(),
}


def memory_line(ctx: Context, ratio: float, precision: str) -> MemoryLine | None:
    ev = evidence(ctx, ratio, precision)
    return next((line for s in MEMORY_LINES.values() if (line := s.line(ev)) is not None), None)


def _check(fit: MemoryFit, estimate: int | None, batch: int) -> str:
    if not estimate:
        return ""
    ratio = fit.predict(batch) / estimate
    flag = " - the estimate is off, trust the measurement" if not 0.5 <= ratio <= 2 else ""
    return f"; model estimate at batch {batch} {fb(estimate)}, measured/estimate {ratio:.2f}{flag}"


def calibration(ctx: Context, precision: str) -> float:
    """measured/estimate over trials on the same device kind; 1.0 when there are none."""
    ratios = [t.peak_memory_bytes / t.estimated_memory_bytes for t in ctx.model_trials()
              if t.precision == precision and not t.oom
              and t.peak_memory_bytes and t.estimated_memory_bytes]
    return max(1.0, max(ratios)) if ratios else 1.0
