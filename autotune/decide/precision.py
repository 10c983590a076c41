"""Which precision: the fastest candidate the probe timed on this machine's training step;
by the device's capability (the slowest GPU in use decides) only where nothing was timed."""
from __future__ import annotations

from autotune.decide.context import Context, Rule
from autotune.records import StepTrial

# Short names in reasons: what a user calls them.
SHORT = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16", "bf16-true": "bf16-true",
         "16-true": "fp16-true"}


def short(precision: str) -> str:
    return SHORT.get(precision, precision)


def timed(ctx: Context) -> list[StepTrial]:
    """Precision cells measured here, on the device kind this decision is for."""
    if ctx.predicted:
        return []
    return [t for t in ctx.m.precision_trials if t.device.split(":")[0] == ctx.kind]


class PrecisionRule(Rule):
    keys = ("precision",)

    def apply(self, ctx: Context) -> None:
        trials = timed(ctx)
        ok = [t for t in trials if t.samples_per_s and not t.oom and t.error is None]
        if ok:
            self._measured(ctx, trials, ok)
        else:
            self._by_rule(ctx)

    @staticmethod
    def _measured(ctx: Context, trials: list[StepTrial], ok: list[StepTrial]) -> None:
        best = max(ok, key=lambda t: t.samples_per_s or 0.0)
        rates = " vs ".join(f"{short(t.precision)} {t.samples_per_s:.3g} samples/s" for t in
                            sorted(ok, key=lambda t: -(t.samples_per_s or 0.0)))
        at = f" at {best.num_threads} thread(s)" if best.num_threads else ""
        failed = [f"{short(t.precision)} OOM" for t in trials if t.oom]
        cell = (f"; training step{at} at batch {best.batch_size}, {best.height}x{best.width} "
                f"px typical rows, median of {len(best.step_times_s)} warm steps")
        ctx.choose("precision", best.precision,
                   f"{rates}: {short(best.precision)}"
                   + (f" ({', '.join(failed)})" if failed else "") + cell, "measured")

    @staticmethod
    def _by_rule(ctx: Context) -> None:
        if not ctx.on_gpu:
            ctx.choose("precision", "32-true",
                       "not measured: fp32, the CPU precision that never runs slower than "
                       "emulated bf16 (a CPU without native bf16 runs bf16 autocast several "
                       "times slower)", "rule")
            return
        used = ctx.hw.gpus[: ctx.chosen["devices"]]
        low = min(used, key=lambda g: tuple(g.capability))
        cap = f"{low.capability[0]}.{low.capability[1]}"
        if tuple(low.capability) >= (8, 0):
            ctx.choose("precision", "bf16-mixed",
                       f"not measured: {low.name} has compute capability {cap} (>= 8.0): bf16 "
                       "mixed, no loss scaling needed", "rule")
        else:
            ctx.choose("precision", "16-mixed",
                       f"not measured: {low.name} has compute capability {cap} (< 8.0, no "
                       "fast bf16): fp16 mixed with loss scaling", "rule")
