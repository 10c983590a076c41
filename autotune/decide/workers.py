"""Loader workers: the fewest that feed the model's measured rate with headroom, within what
the cores, RAM and /dev/shm allow."""
from __future__ import annotations

from autotune.decide.batch import measured_rates
from autotune.decide.context import Context, Rule, loader_worker_rss, shape_for
from autotune.records import LoaderTrial

# A loader this much faster than the model keeps it fed through jitter (slow pages, GC).
LOADER_HEADROOM = 1.2
# When the loader was not measured, more than this many workers per rank rarely pays off for a
# model of this size and costs RAM (the user's hand-tuned Kaggle setting was 4).
UNMEASURED_WORKER_CAP = 4


def worker_caps(ctx: Context) -> dict[str, int]:
    """The most workers per rank each resource allows."""
    devices, batch = ctx.chosen["devices"], ctx.chosen["batch_size"]
    cores = max(1.0, float(ctx.hw.usable_cpus))
    # CPU training computes in the main process on the same cores: leave it its threads.
    own = 0 if ctx.on_gpu else (ctx.chosen.get("num_threads") or 1)
    caps: dict[str, int] = {"cores": max(1, int(cores // devices) - own)}
    per_worker = loader_worker_rss(ctx.m.loader_trials)
    if per_worker:
        used = ctx.details.get("model_predicted_peak_bytes", 0) if not ctx.on_gpu else 0
        used += (ctx.m.model_base_rss_bytes or 0) * devices
        left = ctx.ram_budget * (1 - ctx.budgets.ram_margin) - used
        caps["RAM"] = max(0, int(left // (per_worker * devices)))
    shape = shape_for(ctx.m, ctx.chosen["reduce_ratio"])
    if shape and ctx.hw.shm_bytes:
        batch_bytes = batch * shape[0] * shape[1] * 4          # float32 images dominate
        room = ctx.hw.shm_bytes * ctx.budgets.shm_fraction
        caps["/dev/shm"] = max(0, int(room // (devices * ctx.budgets.prefetch_factor
                                              * batch_bytes)))
    return caps


def model_rate(ctx: Context, ratio: float, batch: int) -> float | None:
    """Samples/s one rank's model step consumes at the chosen batch (nearest measured)."""
    rates = measured_rates(ctx, ratio)
    if not rates or (ctx.predicted and ctx.on_gpu):
        return None       # another GPU model: its speed was not measured
    near = min(rates, key=lambda b: (abs(b - batch), -b))
    return float(rates[near])


class WorkersRule(Rule):
    keys = ("num_workers",)

    def apply(self, ctx: Context) -> None:
        caps = worker_caps(ctx)
        cap = min(caps.values())
        bounds_txt = ", ".join(f"{k} allow {v}" for k, v in caps.items())
        trials = sorted((t for t in ctx.m.loader_trials if t.error is None and t.samples_per_s),
                        key=lambda t: t.num_workers)
        need = model_rate(ctx, ctx.chosen["reduce_ratio"], ctx.chosen["batch_size"])
        if not trials or ctx.predicted and need is None:
            w = min(cap, UNMEASURED_WORKER_CAP)
            what = "loader not measured" if not trials else \
                "the model's speed on this device is unknown here"
            ctx.choose("num_workers", w, f"{what}: {w} per rank, bounded by {bounds_txt}",
                       "default" if not trials else "predicted")
            return
        usable = [t for t in trials if t.num_workers <= cap] or trials[:1]
        rates = ", ".join(f"{t.num_workers}: {t.samples_per_s:.1f}" for t in trials)
        src = ctx.measured_source()
        if need is None:
            best = max(usable, key=lambda t: t.samples_per_s or 0)
            ctx.choose("num_workers", min(best.num_workers, cap),
                       f"fastest loader within bounds ({bounds_txt}); samples/s by workers: "
                       f"{rates}", src)
            return
        w, txt = self._feeding(usable, need, min(caps, key=lambda k: caps[k]))
        ctx.choose("num_workers", w.num_workers,
                   f"{txt}; samples/s by workers: {rates}; {bounds_txt}", src)

    @staticmethod
    def _feeding(usable: list[LoaderTrial], need: float, bound: str) -> tuple[LoaderTrial, str]:
        # With 0 workers the main process loads between steps: the times add up, so the
        # loader must be 1/(headroom - 1) times faster than the model (5x) to cost it no more
        # than a worker running alongside would.
        def feeds(t: LoaderTrial) -> bool:
            factor = LOADER_HEADROOM if t.num_workers else 1 / (LOADER_HEADROOM - 1)
            return (t.samples_per_s or 0) >= need * factor
        enough = [t for t in usable if feeds(t)]
        if enough:
            w = enough[0]
            factor = LOADER_HEADROOM if w.num_workers else 1 / (LOADER_HEADROOM - 1)
            return w, (f"the fewest workers that feed the model: {w.samples_per_s:.1f} "
                       f"samples/s >= {need:.1f} needed x {factor:g} headroom"
                       + ("" if w.num_workers else " (loading in the main process adds to "
                          "the step time)"))
        w = max(usable, key=lambda t: t.samples_per_s or 0)
        return w, (f"loader is the bottleneck: best {w.samples_per_s:.1f} samples/s within "
                   f"bounds < {need:.1f} the model takes (bound by {bound})")
