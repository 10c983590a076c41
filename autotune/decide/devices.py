"""How many devices: what the user asked, else every visible GPU, else one CPU process."""
from __future__ import annotations

from autotune.decide.context import Context, Rule
from autotune.errors import UserError


class DevicesRule(Rule):
    keys = ("devices",)

    def apply(self, ctx: Context) -> None:
        gpus = len(ctx.hw.gpus)
        asked = ctx.budgets.devices
        if asked is not None:
            if gpus and asked > gpus:
                raise UserError(f"--devices {asked}: this machine has {gpus} GPU(s)")
            where = f"of {gpus} GPU(s)" if gpus else "CPU processes (DDP over gloo)"
            ctx.choose("devices", asked, f"{asked} {where}, as asked", "flag")
        elif gpus:
            names = ", ".join(sorted({g.name for g in ctx.hw.gpus}))
            ctx.choose("devices", gpus, f"every visible GPU: {gpus}x {names}", "rule")
        else:
            ctx.choose("devices", 1, "no GPU found: one CPU training process (its threads: see num_threads)",
                       "rule")
