"""The model's batch_size and reduce_ratio: walk the reduce ladder from full resolution down
to the first ratio where batch 1 fits the memory budget, then take the largest batch the
memory line, the effective-batch target, the probe's OOMs, the extrapolation limit and the
measured speed all allow."""
from __future__ import annotations

import math
from dataclasses import dataclass

from autotune.decide.context import Context, NothingFitsError, Rule, loader_worker_rss, shape_for
from autotune.decide.memory import MemoryLine, memory_line
from autotune.records import Measurements
from autotune.settings import accumulation_for
from autotune.staff import ratio_for_staff_space
from autotune.units import format_bytes as fb

# Largest first: full resolution is what the user wants; each step down costs small symbols.
# The model probe walks the same ladder and `probe`/`plan` tabulate the estimate on it.
REDUCE_LADDER = (1.0, 0.75, 0.5, 0.4, 0.3, 0.25, 0.2)


@dataclass
class BatchPick:
    batch: int
    bound: str                         # which cap decided (a key of `caps`)
    caps: dict[str, int]
    steps: int                         # accumulation steps at this batch


def process_base_rss(m: Measurements) -> int:
    """The training process's own RSS before its first step: the model probe's figure, else
    the map probe's parent process (torch, the dataset and the loader already imported), the
    closest figure when the model probe did not record it; 0 when neither was measured. On
    CPU a step's measured memory is growth over this."""
    return int(m.model_base_rss_bytes or m.map_base_rss_bytes or 0)


def model_budget(ctx: Context) -> tuple[int, str]:
    """Bytes a training step may use per device, and how that figure was reached."""
    if ctx.on_gpu:
        smallest = min(g.memory_bytes for g in ctx.hw.gpus[:ctx.chosen["devices"]])
        budget = ctx.budgets.vram_budget(smallest)
        return budget, (f"{fb(budget)} per GPU ({fb(smallest)} less "
                        f"{ctx.budgets.vram_margin:.0%} margin)")
    # CPU: the step shares RAM with the process itself and at least one loader worker.
    base = process_base_rss(ctx.m)
    worker = int(loader_worker_rss(ctx.m.loader_trials) or 0)
    budget = int(ctx.ram_budget * (1 - ctx.budgets.ram_margin)) - base - worker
    return budget, (f"{fb(budget)} of RAM ({fb(ctx.ram_budget)} budget less "
                    f"{ctx.budgets.ram_margin:.0%} margin"
                    + (f", {fb(base)} of process" if base else "")
                    + (f", {fb(worker)} for a loader worker" if worker else "") + ")")


def staff_ratio(ctx: Context) -> float | None:
    """The ratio that brings the measured staff space to the legibility target (<= 1.0);
    None when the staff space was not measured."""
    return ratio_for_staff_space(ctx.m.staff_space_px, ctx.budgets.staff_space_px)


def candidate_ratios(ctx: Context) -> list[float]:
    """The ladder and every ratio measured or estimated, up to the user's maximum and the
    staff-space ratio (itself a candidate), largest first."""
    legible = staff_ratio(ctx)
    top = min(ctx.budgets.max_reduce_ratio, legible or 1.0) + 1e-9
    return sorted({r for r in REDUCE_LADDER if r <= top}
                  | {t.reduce_ratio for t in ctx.m.model_trials if t.reduce_ratio <= top}
                  | {e.reduce_ratio for e in ctx.m.estimates if e.reduce_ratio <= top}
                  | ({legible} if legible is not None and legible <= top else set()),
                  reverse=True)


def ratio_reason(ctx: Context, ratio: float, skipped: list[str]) -> tuple[str, str | None]:
    """Why `ratio`, and the source when the staff space decided it (None: the ladder did)."""
    legible = staff_ratio(ctx)
    shape = shape_for(ctx.m, ratio)
    size = f" ({shape[0]}x{shape[1]} px largest image)" if shape else ""
    lower = f"; lowered from {', '.join(skipped)}" if skipped else ""
    if legible is None:
        return f"the highest resolution on the ladder where a batch fits{size}{lower}", None
    why = (f"staff space {ctx.m.staff_space_px:.1f} px measured on {ctx.m.staff_images or '?'} "
           f"image(s), target {ctx.budgets.staff_space_px:g} px: ratio {legible:.3g}")
    if ctx.budgets.max_reduce_ratio < legible:
        why += f", capped at the maximum {ctx.budgets.max_reduce_ratio:g}"
    if ratio < min(legible, ctx.budgets.max_reduce_ratio) - 1e-9:
        why += f"; {ratio:g} is the highest below it where a batch fits" if skipped else \
            f"; {ratio:g} is the nearest below it with a memory figure"
    return why + size + lower, "measured"


def measured_rates(ctx: Context, ratio: float) -> dict[int, float]:
    """samples/s by batch size at `ratio` on this device kind."""
    return {t.batch_size: t.samples_per_s for t in ctx.model_trials(ratio)
            if t.samples_per_s and not t.oom}


def fastest_batch(ctx: Context, ratio: float) -> int | None:
    """Where throughput peaked inside the measured batches, the smallest batch within 5% of
    that peak: a bigger one costs memory and buys nothing (on a CPU it is often slower).
    None while the largest batch measured was also the fastest (it may keep rising)."""
    rates = measured_rates(ctx, ratio)
    if len(rates) < 2:
        return None
    best = max(rates, key=lambda b: rates[b])
    if best == max(rates):
        return None
    return min(b for b, r in rates.items() if r >= 0.95 * rates[best])


class BatchRule(Rule):
    keys = ("batch_size", "reduce_ratio")

    def apply(self, ctx: Context) -> None:
        budget, budget_txt = model_budget(ctx)
        ctx.details["model_memory_budget_bytes"] = budget
        skipped: list[str] = []
        smallest_need: tuple[float, float] | None = None
        ratios = candidate_ratios(ctx)
        for ratio in ratios:
            # Measured first: an OOM at batch 1 here or at a smaller image rules the ratio
            # out whatever the estimate says.
            if any(t.oom and t.batch_size == 1 and t.reduce_ratio <= ratio + 1e-9
                   for t in ctx.model_trials()):
                skipped.append(f"{ratio:g} (OOM at batch 1)")
                continue
            line = memory_line(ctx, ratio, ctx.chosen["precision"])
            if line is None:
                continue
            if line.fit.predict(1) > budget:
                skipped.append(f"{ratio:g} (batch 1 needs {fb(line.fit.predict(1))})")
                smallest_need = (ratio, line.fit.predict(1))
                continue
            pick = self._pick(ctx, ratio, line, budget)
            if line.oom_floor is not None and pick.batch >= line.oom_floor:
                skipped.append(f"{ratio:g} (OOM at batch {line.oom_floor})")
                continue
            self._choose(ctx, ratio, line, pick, budget_txt, skipped)
            return
        raise self._nothing_fits(ctx, ratios, skipped, smallest_need, budget_txt)

    @staticmethod
    def _pick(ctx: Context, ratio: float, line: MemoryLine, budget: int) -> BatchPick:
        fit, devices = line.fit, ctx.chosen["devices"]
        target = ctx.budgets.effective_batch_size
        caps = {"memory": int((budget - fit.fixed_bytes) // fit.per_sample_bytes)
                if fit.per_sample_bytes > 0 else ctx.budgets.max_batch_size,
                "target": max(1, math.ceil(target / devices)),
                "limit": ctx.budgets.max_batch_size}
        if line.oom_floor is not None:
            caps["oom"] = line.oom_floor - 1
        if line.top_ok is not None:
            caps["extrapolation"] = 2 * line.top_ok      # a line trusted to 2x its last point
        fast = fastest_batch(ctx, ratio)
        if fast is not None:
            caps["speed"] = fast
        batch = max(1, min(caps.values()))
        bound = min(caps, key=lambda k: caps[k])
        # The same number of accumulation steps reaches the target with the smallest batch
        # that still needs no more steps: less memory, an effective batch nearer the target,
        # and no extra optimizer steps.
        steps = accumulation_for(target, batch, devices)
        trimmed = max(1, math.ceil(target / (steps * devices)))
        if trimmed < batch and (line.oom_floor is None or batch < line.oom_floor):
            caps["accumulation"] = trimmed
            batch, bound = trimmed, "accumulation"
        return BatchPick(batch, bound, caps, steps)

    @staticmethod
    def _why(ctx: Context, line: MemoryLine, pick: BatchPick) -> str:
        target = ctx.budgets.effective_batch_size
        why = {"memory": "the largest under the budget",
               "target": f"enough for the effective batch {target} over "
                         f"{ctx.chosen['devices']} device(s)",
               "limit": "the batch-size cap",
               "oom": f"below the OOM the probe hit at batch {line.oom_floor}",
               "extrapolation": f"at most 2x the largest batch measured ({line.top_ok})",
               "speed": "the smallest batch within 5% of the best samples/s measured "
                        "(larger batches stopped paying)",
               "accumulation": f"the smallest batch reaching the effective batch {target} in "
                               f"{pick.steps} accumulation step(s) (up to "
                               f"{pick.caps['memory']} would fit)"}[pick.bound]
        if line.oom_floor is not None and pick.bound != "oom":
            why += f"; the probe hit OOM at batch {line.oom_floor}"
        return why

    def _choose(self, ctx: Context, ratio: float, line: MemoryLine, pick: BatchPick,
                budget_txt: str, skipped: list[str]) -> None:
        fit, peak = line.fit, line.fit.predict(pick.batch)
        rates = measured_rates(ctx, ratio)
        speed = "; samples/s by batch: " + ", ".join(
            f"{b}: {r:.3g}" for b, r in sorted(rates.items())) if rates else ""
        ctx.choose("batch_size", pick.batch,
                   f"predicted peak {fb(peak)} of {budget_txt}: memory = "
                   f"{fb(fit.fixed_bytes)} + {fb(fit.per_sample_bytes)}/sample ({line.how}); "
                   f"{self._why(ctx, line, pick)}{speed}", line.source)
        why, staff_source = ratio_reason(ctx, ratio, skipped)
        ctx.choose("reduce_ratio", ratio, why,
                   line.source if skipped else staff_source or "rule")
        ctx.details["batch_caps"] = dict(pick.caps)
        ctx.details.update(model_predicted_peak_bytes=peak, memory_fit={
            "reduce_ratio": ratio, "fixed_bytes": fit.fixed_bytes,
            "per_sample_bytes": fit.per_sample_bytes, "points": fit.points,
            "source": fit.source})

    @staticmethod
    def _nothing_fits(ctx: Context, ratios: list[float], skipped: list[str],
                      smallest_need: tuple[float, float] | None,
                      budget_txt: str) -> NothingFitsError:
        if smallest_need is None and skipped:
            return NothingFitsError(
                f"nothing fits: batch 1 ran out of memory at every reduce_ratio measured "
                f"({', '.join(skipped)}); would fit: more {'GPU memory' if ctx.on_gpu else 'RAM'}"
                f" or a reduce_ratio below {min(ratios):g} (pass --max-reduce-ratio)")
        if smallest_need is None:
            return NothingFitsError("no model measurement and no memory estimate to size the "
                                    "batch with; run `python -m autotune probe` on the machine")
        ratio, need = smallest_need
        # The per-sample part shrinks with the pixel count (ratio squared); say how far down.
        suggestion = f"a device with at least {fb(need / (1 - ctx.budgets.vram_margin))}" \
            if ctx.on_gpu else f"--ram-budget {fb(need / (1 - ctx.budgets.ram_margin))} or more"
        return NothingFitsError(
            f"nothing fits: batch 1 does not fit {budget_txt} at any reduce_ratio "
            f"({', '.join(skipped)}); would fit: {suggestion}, or a reduce_ratio below "
            f"{ratio:g} (pass --max-reduce-ratio)")
