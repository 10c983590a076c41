"""torch intra-op threads of the training process: the fewest within 5% of the fastest
thread count the probe timed. On a small CPU a second OpenMP thread can slow a small model
down (synchronisation costs more than the work it splits), and a thread the step does not
need is one a loader worker can use."""
from __future__ import annotations

from autotune.decide.context import Context, Rule

# Rates this close are noise on a shared machine; fewer threads is the cheaper setting.
WITHIN = 0.95


class ThreadsRule(Rule):
    keys = ("num_threads",)

    def apply(self, ctx: Context) -> None:
        cores = max(1, int(ctx.hw.usable_cpus))
        trials = [] if ctx.predicted else [
            t for t in ctx.m.thread_trials if t.device.split(":")[0] == ctx.kind
            and t.num_threads and t.samples_per_s and not t.oom]
        if ctx.on_gpu and not trials:
            ctx.choose("num_threads", None, f"GPU training: torch's own ({cores} usable "
                       "CPUs); the step runs on the GPU", "default")
            return
        if not trials:
            ctx.choose("num_threads", None, f"not measured: torch's own ({cores} usable CPUs)",
                       "default")
            return
        best = max(trials, key=lambda t: t.samples_per_s or 0.0)
        pick = min((t for t in trials if (t.samples_per_s or 0.0) >= WITHIN
                    * (best.samples_per_s or 0.0)), key=lambda t: t.num_threads or 0)
        rates = ", ".join(f"{t.num_threads}: {t.samples_per_s:.3g}"
                          for t in sorted(trials, key=lambda t: t.num_threads or 0))
        why = "the fastest" if pick is best else \
            f"the fewest within {1 - WITHIN:.0%} of the fastest ({best.num_threads})"
        ctx.choose("num_threads", pick.num_threads,
                   f"samples/s by threads: {rates} ({pick.precision}, batch {pick.batch_size}): "
                   f"{why}; loader workers get 1 each", "measured")
