"""torch intra-op threads of the training process, from the step timed alone: the fewest
within 5% of the fastest thread count the probe timed.

This is the step's view only. Training shares the cores with its loader workers, and whether a
second OpenMP thread or a worker should have a core is a question of the loop, not of either
part: where the probe timed the loop, `autotune.decide.loop.LoopRule` decides threads and
workers together from it and this choice is its starting point. Where nothing was timed the
fallback is a rule, labelled so: the usable cores of a rank less one, left for a loader worker
(OpenMP threads spin while a worker holds their core, and nothing measured says it is safe)."""
from __future__ import annotations

from autotune.decide.context import Context, Rule

# Rates this close are noise on a shared machine; fewer threads is the cheaper setting.
WITHIN = 0.95


class ThreadsRule(Rule):
    keys = ("num_threads",)

    def apply(self, ctx: Context) -> None:
        cores = max(1, int(ctx.hw.usable_cpus))
        if ctx.on_gpu:
            ctx.choose("num_threads", None, f"GPU training: torch's own ({cores} usable "
                       "CPUs); the step runs on the GPU", "default")
            return
        per_rank = max(1, cores // max(1, ctx.chosen.get("devices", 1)) - 1)
        trials = [] if ctx.predicted else [
            t for t in ctx.m.thread_trials if t.device.split(":")[0] == ctx.kind
            and t.num_threads and t.samples_per_s and not t.oom]
        if not trials:
            ctx.choose("num_threads", per_rank, f"not measured: {cores} usable CPU(s) per "
                       f"{ctx.chosen.get('devices', 1)} rank(s), less one for a loader worker",
                       "rule")
            return
        best = max(trials, key=lambda t: t.samples_per_s or 0.0)
        pick = min((t for t in trials if (t.samples_per_s or 0.0) >= WITHIN
                    * (best.samples_per_s or 0.0)), key=lambda t: t.num_threads or 0)
        rates = ", ".join(f"{t.num_threads}: {t.samples_per_s:.3g}"
                          for t in sorted(trials, key=lambda t: t.num_threads or 0))
        why = "the fastest" if pick is best else \
            f"the fewest within {1 - WITHIN:.0%} of the fastest ({best.num_threads})"
        ctx.choose("num_threads", pick.num_threads,
                   f"samples/s by threads (step alone): {rates} ({pick.precision}, batch "
                   f"{pick.batch_size}): {why}", "measured")
