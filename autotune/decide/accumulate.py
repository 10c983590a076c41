"""Gradient accumulation: enough steps that batch x devices x steps reaches the target."""
from __future__ import annotations

from autotune.decide.context import Context, Rule
from autotune.settings import accumulation_for


class AccumulateRule(Rule):
    keys = ("accumulate_grad_batches", "effective_batch_size")

    def apply(self, ctx: Context) -> None:
        target = ctx.budgets.effective_batch_size
        b, n = ctx.chosen["batch_size"], ctx.chosen["devices"]
        acc = accumulation_for(target, b, n)
        eff = b * n * acc
        ctx.choose("accumulate_grad_batches", acc,
                   f"ceil({target} / ({b} batch x {n} device(s))) = {acc}", "rule")
        note = "" if eff == target else f" (target {target} is not a multiple; rounded up)"
        ctx.choose("effective_batch_size", eff, f"{b} x {n} x {acc} = {eff}{note}", "rule")
