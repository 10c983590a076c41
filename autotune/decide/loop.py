"""Threads x loader workers x batch, chosen from the training loop timed as it runs.

The step probe times the step alone and the loader probe the loader alone; training runs them
together on the same cores, where a loader worker and a second OpenMP thread compete (or do
not) in ways neither part shows. So the earlier rules only narrow the field: `loop_cells`
turns their choices into the few cells worth timing together (threads near the fastest step,
worker counts from 0 to the first that feeds the step, the batch and its neighbours within the
memory caps, the other precisions the step probe timed close enough to matter), the probe times each cell as the real DataLoader feeding the real step
(`autotune.probes.loop`), and `LoopRule` takes the fastest cell. No rule overrides it: where the
loop was timed, its figures decide threads, workers, batch and precision; the part rules' choices stand
only where it was not (another machine's `plan`, a probe out of time), with their own sources.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autotune.decide import precision
from autotune.decide.accumulate import AccumulateRule
from autotune.decide.context import Context, Rule
from autotune.decide.workers import worker_caps
from autotune.records import LoopTrial

# Loop rates this close are one rate on a shared machine (two rounds, seconds each); among
# them the cell with the fewest threads + workers wins, as it leaves the most for the rest.
LOOP_WITHIN = 0.98
# Thread counts whose step-alone rate is this far below the fastest are not worth a loop cell.
THREADS_KEEP = 0.6
# Cells per probe: each costs a loader start and a few warm steps per round.
MAX_PAIRS = 6
# Another precision whose step-alone rate is at least this share of the chosen one's gets a
# loop cell: the step alone has ranked them wrongly (synthetic pages: bf16 ahead alone, fp32
# 1.8x faster in the real run), but one many times slower is not worth the time.
PRECISION_KEEP = 0.4
# Batch caps that are about safety (the loop must not try what will not fit); the others
# ("speed", "target", "accumulation") are preferences the loop itself measures.
SAFE_BATCH_CAPS = ("memory", "oom", "extrapolation", "limit")


@dataclass(frozen=True, order=True)
class LoopCell:
    num_threads: int | None            # torch intra-op threads (None: torch's own, on GPU)
    num_workers: int
    batch_size: int
    precision: str


def _thread_options(ctx: Context) -> list[int | None]:
    if ctx.on_gpu:
        return [None]
    trials = [t for t in ctx.m.thread_trials if t.device.split(":")[0] == ctx.kind
              and t.num_threads and t.samples_per_s and not t.oom]
    if not trials:
        return [ctx.chosen.get("num_threads") or max(1, int(ctx.hw.usable_cpus))]
    best = max(t.samples_per_s or 0.0 for t in trials)
    keep = sorted({int(t.num_threads or 1) for t in trials
                   if (t.samples_per_s or 0.0) >= THREADS_KEEP * best})
    return list(keep)


def _worker_options(ctx: Context) -> list[int]:
    """0 .. the cores of a rank, within RAM and /dev/shm, and no further than one past the
    first count the loader probe saw feeding the step with headroom."""
    caps = {k: v for k, v in worker_caps(ctx).items() if k != "cores"}
    cores = max(1, int(ctx.hw.usable_cpus) // max(1, ctx.chosen.get("devices", 1)))
    top = min([cores, *caps.values()])
    counts = [0, *[c for c in (1, 2, 3, 4, 6, 8, 12, 16) if c <= top]]
    loaders = sorted((t for t in ctx.m.loader_trials if t.samples_per_s and t.error is None),
                     key=lambda t: t.num_workers)
    need = _step_rate(ctx)
    if need and loaders:
        feeding = [t.num_workers for t in loaders if t.num_workers
                   and (t.samples_per_s or 0) >= 1.5 * need]
        if feeding:
            nxt = [c for c in counts if c > feeding[0]]
            counts = [c for c in counts if c <= feeding[0]] + nxt[:1]
    return counts


def _step_rate(ctx: Context) -> float | None:
    trials = [t for t in [*ctx.m.thread_trials, *ctx.m.precision_trials]
              if t.samples_per_s and not t.oom and t.device.split(":")[0] == ctx.kind]
    return max(t.samples_per_s or 0.0 for t in trials) if trials else None


def _predicted(ctx: Context, threads: int | None, workers: int) -> float:
    """A rough rate to rank (threads, workers) pairs before timing them: the step's rate at
    those threads, slowed by loading in-process (0 workers) or by more busy processes than
    cores. Only the order matters; the loop measures the real figure."""
    steps = {t.num_threads: t.samples_per_s for t in ctx.m.thread_trials
             if t.samples_per_s and not t.oom}
    step = steps.get(threads) or _step_rate(ctx) or 1.0
    loads: dict[int, float] = {t.num_workers: t.samples_per_s for t in ctx.m.loader_trials
                               if t.samples_per_s and t.error is None}
    load = loads.get(workers) or max(loads.values(), default=0.0) or math.inf
    rate = 1.0 / (1.0 / step + 1.0 / load) if workers == 0 else min(step, load)
    busy = (threads or 1) + workers
    cores = max(1.0, float(ctx.hw.usable_cpus))
    return rate * min(1.0, cores / busy) if not ctx.on_gpu else rate


def _batch_options(ctx: Context) -> list[int]:
    b = int(ctx.chosen["batch_size"])
    caps = ctx.details.get("batch_caps") or {}
    safe = min([caps[k] for k in SAFE_BATCH_CAPS if k in caps] or [b])
    target = max(1, math.ceil(ctx.budgets.effective_batch_size / max(1, ctx.chosen["devices"])))
    out = [b]
    if b // 2 >= 1:
        out.append(b // 2)
    if 2 * b <= min(safe, target):
        out.append(2 * b)
    return out


def loop_cells(ctx: Context) -> list[LoopCell]:
    """The cells worth timing as a loop, best predicted first: every kept thread count x
    worker count at the chosen batch (at most MAX_PAIRS), then the batch's neighbours at the
    best predicted pair."""
    b, p = int(ctx.chosen["batch_size"]), str(ctx.chosen["precision"])
    pairs = [(t, w) for t in _thread_options(ctx) for w in _worker_options(ctx)]
    pairs.sort(key=lambda pair: -_predicted(ctx, *pair))
    pairs = pairs[:MAX_PAIRS]
    cells = [LoopCell(t, w, b, p) for t, w in pairs]
    if pairs:
        t, w = pairs[0]
        cells += [LoopCell(t, w, nb, p) for nb in _batch_options(ctx) if nb != b]
        cells += [LoopCell(t, w, b, other) for other in _other_precisions(ctx)]
    return cells


def _other_precisions(ctx: Context) -> list[str]:
    timed = {t.precision: t.samples_per_s for t in precision.timed(ctx)
             if t.samples_per_s and not t.oom}
    mine = timed.get(ctx.chosen["precision"])
    if not mine:
        return []
    return sorted(p for p, rate in timed.items()
                  if p != ctx.chosen["precision"] and rate >= PRECISION_KEEP * mine)


def loop_trials(ctx: Context) -> list[LoopTrial]:
    """Loop cells timed on this device kind that ran."""
    return [t for t in ctx.m.loop_trials if t.samples_per_s and t.error is None
            and t.device.split(":")[0] == ctx.kind]


def _cell_text(t: LoopTrial, chosen_precision: str | None = None) -> str:
    other = f" {t.precision}" if chosen_precision and t.precision != chosen_precision else ""
    return (f"{t.num_threads or 'torch'}x{t.num_workers}@{t.batch_size}{other}: "
            f"{t.samples_per_s:.3g}")


class LoopRule(Rule):
    """Threads, workers, batch and precision from the loop cells; accumulation follows the
    batch.

    It owns no setting of its own (`keys` is empty: the part rules each decide theirs first);
    it re-decides `refines` where the loop was timed."""
    keys = ()
    refines = ("num_threads", "num_workers", "batch_size", "precision")

    def apply(self, ctx: Context) -> None:
        trials = [] if ctx.predicted else loop_trials(ctx)
        if not trials:
            return
        best = max(trials, key=lambda t: t.samples_per_s or 0.0)
        near = [t for t in trials if (t.samples_per_s or 0.0) >= LOOP_WITHIN * (best.samples_per_s or 0.0)]
        pick = min(near, key=lambda t: ((t.num_threads or 0) + t.num_workers, -(t.samples_per_s or 0.0)))
        rounds = max(len(t.round_samples_per_s) for t in trials)
        chosen_p = str(ctx.chosen["precision"])
        table = ", ".join(_cell_text(t, chosen_p) for t in sorted(
            trials, key=lambda t: (t.precision != chosen_p, t.precision, t.batch_size,
                                   t.num_threads or 0, t.num_workers)))
        why = "the fastest" if pick is best else \
            f"the fewest threads + workers within {1 - LOOP_WITHIN:.0%} of the fastest " \
            f"({_cell_text(best, chosen_p)})"
        head = (f"training loop timed as it runs (loader + step, {chosen_p} unless named, "
                f"median of {rounds} interleaved round(s)); samples/s by "
                f"threads x workers @ batch: {table}: {why}")
        if pick.precision != chosen_p:
            ctx.choose("precision", pick.precision,
                       f"{head}; the step alone ranked them otherwise: "
                       f"{ctx.reasons.get('precision', '-')}", "measured")
        wait = f"; waits for data {pick.data_wait_frac:.0%} of the time" \
            if pick.data_wait_frac is not None else ""
        if not ctx.on_gpu:
            ctx.choose("num_threads", pick.num_threads,
                       f"{head}; step alone: {ctx.reasons.get('num_threads', '-')}", "measured")
        ctx.choose("num_workers", pick.num_workers, f"{head}{wait}", "measured")
        if pick.batch_size != ctx.chosen["batch_size"]:
            old = ctx.chosen["batch_size"]
            ctx.choose("batch_size", pick.batch_size,
                       f"{head}; memory allows it: {ctx.reasons['batch_size']} "
                       f"(the part rules' choice was {old})", "measured")
            AccumulateRule().apply(ctx)
            fit = ctx.details.get("memory_fit") or {}
            if fit.get("per_sample_bytes") is not None:
                ctx.details["model_predicted_peak_bytes"] = int(
                    fit["fixed_bytes"] + fit["per_sample_bytes"] * pick.batch_size)
        ctx.details["loop_pick"] = {"num_threads": pick.num_threads,
                                    "num_workers": pick.num_workers,
                                    "batch_size": pick.batch_size,
                                    "precision": pick.precision,
                                    "samples_per_s": pick.samples_per_s}

