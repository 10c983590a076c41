"""The map, decided (autotune/probes/map.py measures what this reads).

Dataset preparation: num_proc and writer_batch_size from the map trials' rates and the
peak RSS model (autotune.fits.MapCostModel), under the RAM budget; then the cache's disk need.
"""
from __future__ import annotations

from typing import NamedTuple

from autotune.decide.context import Context, NothingFitsError, Rule
from autotune.fits import MapCostModel, fit_map_peak, map_ok
from autotune.records import MapTrial, Measurements
from autotune.units import format_bytes as fb

# The smallest writer batch worth running: below it the Arrow writer's per-flush overhead
# dominates. The map probe's grid and smt's preparation back-off stop at the same floor.
MIN_WRITER_BATCH = 10
# Writer batches to fall back on when the measured one does not fit: datasets' own default
# is 1000, down to MIN_WRITER_BATCH.
WRITER_LADDER = (1000, 500, 200, 100, 50, 20, MIN_WRITER_BATCH)
# Speed credited to a writer batch smaller than any measured: unmeasured flush overhead.
FALLBACK_RATE = 0.9


class Candidate(NamedTuple):
    num_proc: int
    writer_batch_size: int
    rows_per_s: float
    measured_peak_bytes: int | None
    source: str


def fit_map_cost(m: Measurements) -> MapCostModel | None:
    """The probe's fitted figures where it recorded them; the terms it left out are fitted
    from the trials here (autotune.fits.fit_map_peak)."""
    base, worker, row = m.map_base_rss_bytes, m.map_worker_rss_bytes, m.map_bytes_per_buffered_row
    if None not in (base, worker, row):
        return MapCostModel(float(base), float(worker), float(row))  # type: ignore[arg-type]
    f_base, _, f_row = fit_map_peak(m.map_trials)
    base = base if base is not None else f_base
    if base is None:
        return None
    if row is None:
        # The trials' own figures, else the fit, else the encoded row (a buffered row holds at
        # least that); with none, every byte of growth is charged to the workers.
        rows = sorted(t.bytes_per_buffered_row for t in m.map_trials
                      if map_ok(t) and t.bytes_per_buffered_row)
        row = rows[len(rows) // 2] if rows else next(
            (v for v in (f_row, m.cache_bytes_per_row) if v is not None), 0.0)
    if worker is None:
        worker = _worker_given(m.map_trials, base, row)
    if worker is None:
        return None
    return MapCostModel(float(base), float(worker), float(row))


def _worker_given(trials: list[MapTrial], base: float, row: float) -> float | None:
    """What each trial's growth leaves per process once its buffered rows are paid for."""
    good = [t for t in trials if map_ok(t) and t.peak_rss_bytes]
    if not good:
        return None
    return max(0.0, max(((t.peak_rss_bytes or 0) - base) / t.num_proc - t.writer_batch_size * row
                        for t in good))


class MapRule(Rule):
    keys = ("num_proc", "writer_batch_size")

    def apply(self, ctx: Context) -> None:
        cores = max(1, int(ctx.hw.usable_cpus))
        cost = fit_map_cost(ctx.m)
        ctx.details["ram_budget_bytes"] = ctx.ram_budget
        if cost is None or not any(map_ok(t) for t in ctx.m.map_trials):
            ctx.choose("num_proc", 1, "map not measured: one process, the setting that cannot "
                       "multiply peak RAM", "default")
            ctx.choose("writer_batch_size", 100, "map not measured: 100 rows per flush, the "
                       "hand-tuned safe value for page-sized images", "default")
            return
        ctx.details["map_cost"] = {"base_rss_bytes": cost.base, "worker_rss_bytes": cost.worker,
                                   "bytes_per_buffered_row": cost.row}
        candidates = (predicted_candidates(ctx, cores) if ctx.predicted
                      else measured_candidates(ctx, cost, cores))
        best, peak = self._pick(ctx, cost, candidates)
        self._explain(ctx, cost, cores, best, peak)
        ctx.details["map_predicted_peak_bytes"] = peak
        self._disk(ctx)

    @staticmethod
    def _pick(ctx: Context, cost: MapCostModel, candidates: list[Candidate]
              ) -> tuple[Candidate, float]:
        """The fastest candidate under the budget; within 5% of the best rate the lighter one
        (the speed is noise, the RAM not). Peaks within the RAM margin of the lightest count
        as equally light, and among those the largest writer batch wins: the probe's sample
        is a flush or two long, too short to show what a small writer batch's many flushes
        cost on the full dataset (bench_regret measured 1x100 25% faster than 1x10 on 300
        rows, at 1 MiB more peak)."""
        budget, margin = ctx.ram_budget, 1.0 + ctx.budgets.ram_margin
        stalls = [t for t in ctx.m.map_trials if t.stalled]
        fits: list[tuple[Candidate, float]] = []
        for c in candidates:
            if any(s.num_proc <= c.num_proc and (c.num_proc > 1 or s.writer_batch_size
                                                 <= c.writer_batch_size) for s in stalls):
                continue        # a stall with as many processes predicts one here
            peak = max(cost.peak(c.num_proc, c.writer_batch_size),
                       float(c.measured_peak_bytes or 0))
            if peak * margin <= budget:
                fits.append((c, peak))
        if not fits:
            need = cost.peak(1, WRITER_LADDER[-1]) * margin
            raise NothingFitsError(
                f"dataset preparation does not fit the RAM budget: even num_proc=1 with "
                f"writer_batch_size={WRITER_LADDER[-1]} needs {fb(need)} predicted "
                f"({fb(cost.row)} per buffered row, {fb(cost.worker)} per worker, "
                f"{fb(cost.base)} base, +{ctx.budgets.ram_margin:.0%} margin) against a "
                f"budget of {fb(budget)}; would fit: --ram-budget {fb(need)} or more, or a "
                f"smaller image (lower reduce_ratio)")
        best_rate = max(c.rows_per_s for c, _ in fits)
        near = [f for f in fits if f[0].rows_per_s >= 0.95 * best_rate]
        lightest = min(peak for _, peak in near)
        light = [f for f in near if f[1] <= lightest * (1.0 + ctx.budgets.ram_margin)]
        return max(light, key=lambda f: (f[0].writer_batch_size, f[0].rows_per_s))

    @staticmethod
    def _explain(ctx: Context, cost: MapCostModel, cores: int, c: Candidate,
                 peak: float) -> None:
        m, stalls = ctx.m, [t for t in ctx.m.map_trials if t.stalled]
        stalled_txt = "; stalled in the probe: " + ", ".join(
            f"num_proc={s.num_proc}/writer_batch_size={s.writer_batch_size}"
            for s in stalls) if stalls else ""
        measured_rates = ", ".join(
            f"{t.num_proc}x{t.writer_batch_size}: {t.rows_per_s:.1f}"
            for t in sorted((t for t in m.map_trials if map_ok(t)),
                            key=lambda t: (t.num_proc, t.writer_batch_size)))
        rate, np_, wbs = c.rows_per_s, c.num_proc, c.writer_batch_size
        eta = f", {m.dataset_rows} rows in ~{m.dataset_rows / rate / 60:.1f} min" \
            if m.dataset_rows and rate else ""
        scaled = (f"predicted for {cores} core(s) from rates measured elsewhere, scaling "
                  f"efficiency {ctx.details.get('map_scaling_efficiency', 1.0):.2f}: "
                  ) if ctx.predicted else ""
        ctx.choose("num_proc", np_,
                   f"{scaled}{rate:.1f} rows/s{eta} (rows/s by num_proc x writer_batch_size: "
                   f"{measured_rates}); {cores} usable CPU(s){stalled_txt}", c.source)
        ctx.choose("writer_batch_size", wbs,
                   f"predicted peak RSS {fb(peak)} = {fb(cost.base)} + {np_} x ({fb(cost.worker)}"
                   f" + {wbs} rows x {fb(cost.row)}) under the {fb(ctx.ram_budget)} RAM budget "
                   f"with {ctx.budgets.ram_margin:.0%} margin", c.source)

    @staticmethod
    def _disk(ctx: Context) -> None:
        m, free = ctx.m, ctx.hw.disk_free_bytes
        per_row = m.cache_bytes_per_row
        if per_row is None:
            per = [t.cache_bytes_per_row for t in m.map_trials
                   if map_ok(t) and t.cache_bytes_per_row]
            per_row = max(per) if per else None
        if per_row is None or not m.dataset_rows:
            return
        need = per_row * m.dataset_rows
        ctx.details["cache_predicted_bytes"] = need
        if free is not None and need * 1.1 > free:
            raise NothingFitsError(
                f"the prepared dataset needs ~{fb(need)} on disk ({m.dataset_rows} rows x "
                f"{fb(per_row)}) + 10% and the cache disk has {fb(free)} free; free space or "
                f"point SMT_AUTOTUNE_CACHE at a bigger disk")
        ctx.reasons["writer_batch_size"] += (f"; cache ~{fb(need)} on disk"
                                             + (f" of {fb(free)} free" if free else ""))


def measured_candidates(ctx: Context, cost: MapCostModel, cores: int) -> list[Candidate]:
    """The trials measured here, plus smaller writer batches for a num_proc whose measured
    ones all fail the budget: those cost flushes the sample is too short to show, hence a
    penalty (FALLBACK_RATE) beyond the 5% window in which lighter settings win, so a fitting
    measured point always comes first."""
    good = [t for t in ctx.m.map_trials if map_ok(t) and t.num_proc <= cores]
    out = [Candidate(t.num_proc, t.writer_batch_size, float(t.rows_per_s or 0),
                     t.peak_rss_bytes, "measured") for t in good]
    budget = ctx.ram_budget / (1.0 + ctx.budgets.ram_margin)
    for np_ in sorted({t.num_proc for t in good}):
        at = [t for t in good if t.num_proc == np_]
        if any(cost.peak(np_, t.writer_batch_size) <= budget
               and (t.peak_rss_bytes or 0) <= budget for t in at):
            continue
        best = max(at, key=lambda t: t.rows_per_s or 0)
        smallest = min(t.writer_batch_size for t in at)
        out += [Candidate(np_, w, FALLBACK_RATE * float(best.rows_per_s or 0), None, "predicted")
                for w in WRITER_LADDER if w < smallest]
    return out


def predicted_candidates(ctx: Context, cores: int) -> list[Candidate]:
    """Another machine: per-process speed scaled to its cores, no better than the scaling
    measured here (linear when only one process was measured)."""
    good = [t for t in ctx.m.map_trials if map_ok(t)]
    by_np: dict[int, float] = {}
    for t in good:
        by_np[t.num_proc] = max(by_np.get(t.num_proc, 0.0), float(t.rows_per_s or 0))
    low, top_np = min(by_np), max(by_np)
    per_proc = by_np[low] / low
    eff = min(1.0, by_np[top_np] / (top_np * per_proc)) if top_np > 1 else 1.0
    best_wbs = max(good, key=lambda t: t.rows_per_s or 0).writer_batch_size
    out = []
    for np_ in range(1, cores + 1):
        rate = per_proc * np_ * (eff if np_ > 1 else 1.0)
        for w in [best_wbs] + [w for w in WRITER_LADDER if w < best_wbs]:
            out.append(Candidate(np_, w, rate * (1.0 if w == best_wbs else FALLBACK_RATE),
                                 None, "predicted"))
    ctx.details["map_scaling_efficiency"] = round(eff, 3)
    return out
