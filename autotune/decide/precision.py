"""Which precision: by the device's capability (the slowest GPU in use decides)."""
from __future__ import annotations

from autotune.decide.context import Context, Rule


class PrecisionRule(Rule):
    keys = ("precision",)

    def apply(self, ctx: Context) -> None:
        if not ctx.on_gpu:
            ctx.choose("precision", "bf16-mixed",
                       "CPU: bf16 autocast is the supported mixed precision (fp16 would "
                       "silently become bf16)", "rule")
            return
        used = ctx.hw.gpus[: ctx.chosen["devices"]]
        low = min(used, key=lambda g: tuple(g.capability))
        cap = f"{low.capability[0]}.{low.capability[1]}"
        if tuple(low.capability) >= (8, 0):
            ctx.choose("precision", "bf16-mixed",
                       f"{low.name} has compute capability {cap} (>= 8.0): bf16 mixed, no loss "
                       "scaling needed", "rule")
        else:
            ctx.choose("precision", "16-mixed",
                       f"{low.name} has compute capability {cap} (< 8.0, no fast bf16): fp16 "
                       "mixed with loss scaling", "rule")
