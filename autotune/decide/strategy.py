"""Distributed strategy: DDP as soon as there is more than one device."""
from __future__ import annotations

from autotune.decide.context import Context, Rule


class StrategyRule(Rule):
    keys = ("strategy",)

    def apply(self, ctx: Context) -> None:
        n = ctx.chosen["devices"]
        if n > 1:
            ctx.choose("strategy", "ddp", f"{n} devices: DDP, one process per device", "rule")
        else:
            ctx.choose("strategy", "auto", "one device: no distributed strategy", "rule")
