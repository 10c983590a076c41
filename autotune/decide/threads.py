"""torch intra-op threads of the training process: the fewest within 5% of the fastest
thread count the probe timed, leaving a core for a loader worker.

On a small CPU a second OpenMP thread can slow a small model down (synchronisation costs more
than the work it splits). And the probe times the step alone, while training shares the cores
with its loader workers: threads + a worker above the core count oversubscribe them, and
OpenMP threads spin while the worker holds a core (on the 2-core box, 2 threads + 1 worker
trained at 0.05 steps/s where 1 thread + 1 worker ran ~1 step/s). So on a CPU the choice is
capped at usable CPUs - 1 (at least 1), and the loader's worker cap takes what is left."""
from __future__ import annotations

from autotune.decide.context import Context, Rule

# Rates this close are noise on a shared machine; fewer threads is the cheaper setting.
WITHIN = 0.95


def thread_cap(ctx: Context) -> int:
    """Most threads a CPU training process may take: one core stays for a loader worker."""
    return max(1, int(ctx.hw.usable_cpus) // max(1, ctx.chosen.get("devices", 1)) - 1)


class ThreadsRule(Rule):
    keys = ("num_threads",)

    def apply(self, ctx: Context) -> None:
        cores = max(1, int(ctx.hw.usable_cpus))
        if ctx.on_gpu:
            ctx.choose("num_threads", None, f"GPU training: torch's own ({cores} usable "
                       "CPUs); the step runs on the GPU", "default")
            return
        cap = thread_cap(ctx)
        trials = [] if ctx.predicted else [
            t for t in ctx.m.thread_trials if t.device.split(":")[0] == ctx.kind
            and t.num_threads and t.samples_per_s and not t.oom]
        if not trials:
            ctx.choose("num_threads", cap, f"not measured: {cores} usable CPU(s) less one for "
                       f"a loader worker", "rule")
            return
        allowed = [t for t in trials if (t.num_threads or 0) <= cap] or \
            [min(trials, key=lambda t: t.num_threads or 0)]
        best = max(allowed, key=lambda t: t.samples_per_s or 0.0)
        pick = min((t for t in allowed if (t.samples_per_s or 0.0) >= WITHIN
                    * (best.samples_per_s or 0.0)), key=lambda t: t.num_threads or 0)
        rates = ", ".join(f"{t.num_threads}: {t.samples_per_s:.3g}"
                          for t in sorted(trials, key=lambda t: t.num_threads or 0))
        why = "the fastest" if pick is best else \
            f"the fewest within {1 - WITHIN:.0%} of the fastest ({best.num_threads})"
        over = [t.num_threads for t in trials if (t.num_threads or 0) > cap]
        capped = (f"; {', '.join(map(str, over))} thread(s) would leave no core of "
                  f"{cores} for a loader worker") if over else ""
        ctx.choose("num_threads", pick.num_threads,
                   f"samples/s by threads (step alone): {rates} ({pick.precision}, batch "
                   f"{pick.batch_size}): {why}{capped}; loader workers get 1 each", "measured")
