"""Measurements + budgets -> settings, each with the numbers behind it (DESIGN.md section 6).

Pure functions of records: no probing, no clock, no machine access, so a table of recorded
measurements tests every rule, and `autotune plan` re-decides for a machine described by a
spec. Each setting group is a small rule class registered in `RULES`; they run in order and
later rules read what earlier ones chose (accumulation needs the batch, workers need the
batch's RAM).

Safety: a setting is chosen only when its *predicted* cost, with a margin, is under the
budget. RSS sampling misses spikes shorter than its interval and a fit is only as good as its
points, hence the margins; an OOM seen during the probe caps a batch below it regardless of
what the fit says.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autotune.errors import UserError
from autotune.records import (HardwareInfo, LoaderTrial, MapTrial, Measurements, MemoryEstimate,
                              MemoryFit, ModelTrial)
from autotune.settings import Settings, accumulation_for
from autotune.units import format_bytes as fb

# Largest first: full resolution is what the user wants; each step down costs small symbols.
REDUCE_LADDER = (1.0, 0.75, 0.5, 0.4, 0.3, 0.25, 0.2)
# Writer batches to fall back on when the measured one does not fit: datasets' own default
# is 1000; below 10 the per-flush overhead dominates.
WRITER_LADDER = (1000, 500, 200, 100, 50, 20, 10)

# Speed credited to a writer batch smaller than any measured: unmeasured flush overhead.
FALLBACK_RATE = 0.9
# A loader this much faster than the model keeps it fed through jitter (slow pages, GC).
LOADER_HEADROOM = 1.2
# When the loader was not measured, more than this many workers per rank rarely pays off for a
# model of this size and costs RAM (the user's hand-tuned Kaggle setting was 4).
UNMEASURED_WORKER_CAP = 4

# (batch_size, reduce_ratio, precision) -> the workload's estimate of a step's peak bytes.
EstimateFn = Callable[[int, float, str], "int | None"]


class NothingFitsError(UserError):
    """No setting fits the budget even at its smallest; the message says what would fit."""


@dataclass(frozen=True)
class Budgets:
    # None: ram_fraction x the RAM available when measured (the OS, the notebook kernel and
    # page cache need the rest).
    ram_budget_bytes: int | None = None
    ram_fraction: float = 0.85
    # None: each GPU's memory less vram_margin (CUDA context and allocator fragmentation sit
    # outside the allocator peak the probe measures).
    vram_budget_bytes: int | None = None
    vram_margin: float = 0.10
    # On predicted RAM peaks: sampling every 50 ms misses short spikes.
    ram_margin: float = 0.10
    # The user's target samples per optimizer step; accumulation keeps it on small batches.
    effective_batch_size: int = 16
    # None: every visible GPU, or 1 on a CPU-only machine.
    devices: int | None = None
    # Start of the reduce ladder (a user who knows the images are huge starts lower).
    max_reduce_ratio: float = 1.0
    # Beyond this a fitted line is extrapolated too far to trust.
    max_batch_size: int = 256
    # DataLoader default: each worker keeps this many batches in /dev/shm.
    prefetch_factor: int = 2
    # Share of /dev/shm the loader may fill.
    shm_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ram_fraction", "vram_margin", "ram_margin", "shm_fraction"):
            v = getattr(self, name)
            upper = 1.0 if name in ("ram_fraction", "shm_fraction") else 0.9
            if not isinstance(v, (int, float)) or not 0.0 <= v <= upper or \
                    (name in ("ram_fraction", "shm_fraction") and v == 0):
                raise ValueError(f"{name} must be in (0, {upper}], got {v!r}")
        for name in ("ram_budget_bytes", "vram_budget_bytes", "devices"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("effective_batch_size", "max_batch_size", "prefetch_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 0.05 <= self.max_reduce_ratio <= 1.0:
            raise ValueError(f"max_reduce_ratio must be in [0.05, 1], got {self.max_reduce_ratio!r}")

    def ram_budget(self, hw: HardwareInfo) -> int:
        if self.ram_budget_bytes is not None:
            return self.ram_budget_bytes
        available = hw.ram_available_bytes if hw.ram_available_bytes else hw.ram_bytes
        return int(self.ram_fraction * available)

    def vram_budget(self, memory_bytes: int) -> int:
        own = int(memory_bytes * (1.0 - self.vram_margin))
        return own if self.vram_budget_bytes is None else min(own, self.vram_budget_bytes)


@dataclass
class Decision:
    settings: Settings
    reasons: dict[str, str]
    sources: dict[str, str]            # per setting: measured / predicted / rule
    details: dict[str, Any]            # the numbers: budgets, predicted peaks, fits


@dataclass
class Context:
    """What the rules share: inputs, and the choices made so far."""
    hw: HardwareInfo
    m: Measurements
    budgets: Budgets
    estimate: EstimateFn | None = None
    predicted: bool = False            # measurements come from another machine (plan)
    chosen: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def choose(self, key: str, value: Any, reason: str, source: str) -> None:
        self.chosen[key] = value
        self.reasons[key] = reason
        self.sources[key] = source

    @property
    def on_gpu(self) -> bool:
        return bool(self.hw.gpus)

    @property
    def ram_budget(self) -> int:
        return self.budgets.ram_budget(self.hw)

    def measured_source(self) -> str:
        return "predicted" if self.predicted else "measured"


class Rule:
    """One group of settings. `apply` reads the context and calls `ctx.choose`."""
    keys: ClassVar[tuple[str, ...]] = ()

    def apply(self, ctx: Context) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Devices, precision, strategy


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
            ctx.choose("devices", 1, "no GPU found: one CPU process (torch uses every core)",
                       "rule")


class PrecisionRule(Rule):
    keys = ("precision",)

    def apply(self, ctx: Context) -> None:
        if not ctx.on_gpu:
            ctx.choose("precision", "bf16-mixed",
                       "CPU: bf16 autocast is the supported mixed precision (fp16 would "
                       "silently become bf16)", "rule")
            return
        used = ctx.hw.gpus[: ctx.chosen["devices"]]
        low = min(used, key=lambda g: tuple(g.capability))
        cap = f"{low.capability[0]}.{low.capability[1]}"
        if tuple(low.capability) >= (8, 0):
            ctx.choose("precision", "bf16-mixed",
                       f"{low.name} has compute capability {cap} (>= 8.0): bf16 mixed, no loss "
                       "scaling needed", "rule")
        else:
            ctx.choose("precision", "16-mixed",
                       f"{low.name} has compute capability {cap} (< 8.0, no fast bf16): fp16 "
                       "mixed with loss scaling", "rule")


class StrategyRule(Rule):
    keys = ("strategy",)

    def apply(self, ctx: Context) -> None:
        n = ctx.chosen["devices"]
        if n > 1:
            ctx.choose("strategy", "ddp", f"{n} devices: DDP, one process per device", "rule")
        else:
            ctx.choose("strategy", "auto", "one device: no distributed strategy", "rule")


# ---------------------------------------------------------------------------------------------
# Dataset preparation: num_proc and writer_batch_size


def _ok_map(t: MapTrial) -> bool:
    return not t.stalled and t.error is None and bool(t.rows_per_s)


@dataclass
class MapCostModel:
    """peak RSS = base + num_proc x (worker + writer_batch_size x row), from the trials."""
    base: float
    worker: float
    row: float

    def peak(self, num_proc: int, writer_batch_size: int) -> float:
        return self.base + num_proc * (self.worker + writer_batch_size * self.row)


def fit_map_cost(m: Measurements) -> MapCostModel | None:
    """Use the probe's fitted figures when it gave them; else fit from the trials."""
    good = [t for t in m.map_trials if _ok_map(t) and t.peak_rss_bytes]
    base = m.map_base_rss_bytes
    if base is None:
        bases = [t.base_rss_bytes for t in m.map_trials if t.base_rss_bytes]
        base = float(min(bases)) if bases else None
    if base is None:
        return None
    row = m.map_bytes_per_buffered_row
    if row is None:
        rows = [t.bytes_per_buffered_row for t in good if t.bytes_per_buffered_row]
        row = float(sorted(rows)[len(rows) // 2]) if rows else None
    worker = m.map_worker_rss_bytes
    if worker is None and good:
        # What each trial's growth leaves per process once its buffered rows are paid for.
        per = [((t.peak_rss_bytes or 0) - base) / t.num_proc - t.writer_batch_size * (row or 0)
               for t in good]
        worker = max(0.0, max(per))
    if row is None and good:
        # No row figure: charge all growth to the buffered rows (the pessimistic reading).
        row = max(max(0.0, ((t.peak_rss_bytes or 0) - base) / t.num_proc - (worker or 0))
                  / t.writer_batch_size for t in good)
    if row is None or worker is None:
        return None
    return MapCostModel(float(base), float(worker), float(row))


class MapRule(Rule):
    keys = ("num_proc", "writer_batch_size")

    def apply(self, ctx: Context) -> None:
        m, budget = ctx.m, ctx.ram_budget
        margin = 1.0 + ctx.budgets.ram_margin
        cores = max(1, int(ctx.hw.usable_cpus))
        cost = fit_map_cost(m)
        ctx.details["ram_budget_bytes"] = budget
        if cost is None or not any(_ok_map(t) for t in m.map_trials):
            self._unmeasured(ctx, cores)
            return
        ctx.details["map_cost"] = {"base_rss_bytes": cost.base, "worker_rss_bytes": cost.worker,
                                   "bytes_per_buffered_row": cost.row}
        stalls = [t for t in m.map_trials if t.stalled]
        candidates = self._candidates(ctx, cores)
        fits = []
        for np_, wbs, rate, measured_peak, source in candidates:
            if any(s.num_proc <= np_ and (np_ > 1 or s.writer_batch_size <= wbs)
                   for s in stalls):
                continue        # a stall with as many processes predicts one here
            peak = max(cost.peak(np_, wbs), float(measured_peak or 0))
            if peak * margin <= budget:
                fits.append((rate, -peak, np_, wbs, peak, source))
        if not fits:
            need = cost.peak(1, WRITER_LADDER[-1]) * margin
            raise NothingFitsError(
                f"dataset preparation does not fit the RAM budget: even num_proc=1 with "
                f"writer_batch_size={WRITER_LADDER[-1]} needs {fb(need)} predicted "
                f"({fb(cost.row)} per buffered row, {fb(cost.worker)} per worker, "
                f"{fb(cost.base)} base, +{ctx.budgets.ram_margin:.0%} margin) against a "
                f"budget of {fb(budget)}; would fit: --ram-budget {fb(need)} or more, or a "
                f"smaller image (lower reduce_ratio)")
        best_rate = max(f[0] for f in fits)
        # Within 5% of the best rate, pick the lighter setting: the speed is noise, the RAM not.
        rate, neg_peak, np_, wbs, peak, source = max(
            (f for f in fits if f[0] >= 0.95 * best_rate), key=lambda f: (-f[4], f[0]))
        stalled_txt = ""
        if stalls:
            stalled_txt = "; stalled in the probe: " + ", ".join(
                f"num_proc={s.num_proc}/writer_batch_size={s.writer_batch_size}" for s in stalls)
        measured_rates = ", ".join(
            f"{t.num_proc}x{t.writer_batch_size}: {t.rows_per_s:.1f}"
            for t in sorted((t for t in m.map_trials if _ok_map(t)),
                            key=lambda t: (t.num_proc, t.writer_batch_size)))
        eta = ""
        if m.dataset_rows and rate:
            eta = f", {m.dataset_rows} rows in ~{m.dataset_rows / rate / 60:.1f} min"
        scaled = ""
        if ctx.predicted:
            scaled = (f"predicted for {cores} core(s) from rates measured elsewhere, scaling "
                      f"efficiency {ctx.details.get('map_scaling_efficiency', 1.0):.2f}: ")
        ctx.choose("num_proc", np_,
                   f"{scaled}{rate:.1f} rows/s{eta} (rows/s by num_proc x writer_batch_size: "
                   f"{measured_rates}); {cores} usable CPU(s){stalled_txt}", source)
        ctx.choose("writer_batch_size", wbs,
                   f"predicted peak RSS {fb(peak)} = {fb(cost.base)} + {np_} x ({fb(cost.worker)}"
                   f" + {wbs} rows x {fb(cost.row)}) under the {fb(budget)} RAM budget with "
                   f"{ctx.budgets.ram_margin:.0%} margin", source)
        ctx.details["map_predicted_peak_bytes"] = peak
        self._disk(ctx)

    def _candidates(self, ctx: Context, cores: int) -> list[tuple[int, int, float, int | None, str]]:
        """(num_proc, writer_batch_size, rows/s, measured peak, source) to choose among."""
        good = [t for t in ctx.m.map_trials if _ok_map(t)]
        out: list[tuple[int, int, float, int | None, str]] = []
        if not ctx.predicted:
            for t in good:
                if t.num_proc <= cores:
                    out.append((t.num_proc, t.writer_batch_size, float(t.rows_per_s or 0),
                                t.peak_rss_bytes, "measured"))
            # Smaller writer batches at (about) the measured speed, for a num_proc whose
            # measured writer batches all fail the budget: they cost flushes that the sample
            # is too short to show, hence a penalty (FALLBACK_RATE) beyond the 5% window in
            # which lighter settings win, so a fitting measured point always comes first.
            cost = fit_map_cost(ctx.m)
            budget = ctx.ram_budget / (1.0 + ctx.budgets.ram_margin)
            for np_ in sorted({t.num_proc for t in good if t.num_proc <= cores}):
                at = [t for t in good if t.num_proc == np_]
                if cost is None or any(cost.peak(np_, t.writer_batch_size) <= budget
                                       and (t.peak_rss_bytes or 0) <= budget for t in at):
                    continue
                best = max(at, key=lambda t: t.rows_per_s or 0)
                for w in WRITER_LADDER:
                    if w < min(t.writer_batch_size for t in at):
                        out.append((np_, w, FALLBACK_RATE * float(best.rows_per_s or 0),
                                    None, "predicted"))
            return out
        # Another machine: scale per-process speed with its cores, no better than the
        # scaling measured here (linear when only one process was measured).
        by_np: dict[int, float] = {}
        for t in good:
            by_np[t.num_proc] = max(by_np.get(t.num_proc, 0.0), float(t.rows_per_s or 0))
        one = by_np.get(min(by_np))
        top_np = max(by_np)
        eff = by_np[top_np] / (top_np * by_np[min(by_np)] / min(by_np)) if top_np > 1 else 1.0
        eff = min(1.0, eff)
        best_wbs = max(good, key=lambda t: t.rows_per_s or 0).writer_batch_size
        for np_ in range(1, cores + 1):
            rate = (one or 0.0) / min(by_np) * np_ * (eff if np_ > 1 else 1.0)
            for w in [best_wbs] + [w for w in WRITER_LADDER if w < best_wbs]:
                out.append((np_, w, rate * (1.0 if w == best_wbs else FALLBACK_RATE), None,
                            "predicted"))
        ctx.details["map_scaling_efficiency"] = round(eff, 3)
        return out

    def _unmeasured(self, ctx: Context, cores: int) -> None:
        ctx.choose("num_proc", 1, "map not measured: one process, the setting that cannot "
                   "multiply peak RAM", "default")
        ctx.choose("writer_batch_size", 100, "map not measured: 100 rows per flush, the "
                   "hand-tuned safe value for page-sized images", "default")

    def _disk(self, ctx: Context) -> None:
        m, free = ctx.m, ctx.hw.disk_free_bytes
        per_row = m.cache_bytes_per_row
        if per_row is None:
            per = [t.cache_bytes_per_row for t in m.map_trials if _ok_map(t) and t.cache_bytes_per_row]
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


# ---------------------------------------------------------------------------------------------
# Model: batch_size and reduce_ratio


def fit_memory(points: list[tuple[int, float]], reduce_ratio: float,
               source: str = "measured") -> MemoryFit | None:
    """Least squares memory = fixed + per_sample x batch. One batch size: no slope (None)."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mm = sum(v for _, v in points) / n
    slope = sum((b - mb) * (v - mm) for b, v in points) / sum((b - mb) ** 2 for b, _ in points)
    slope = max(0.0, slope)
    return MemoryFit(reduce_ratio, mm - slope * mb, slope, n, source)


def estimate_from_table(estimates: list[MemoryEstimate]) -> EstimateFn | None:
    """The profile's estimate table as a function: linear in batch per (ratio, precision)."""
    if not estimates:
        return None
    table: dict[tuple[float, str], list[tuple[int, float]]] = {}
    for e in estimates:
        if e.estimated_memory_bytes is not None:
            table.setdefault((round(e.reduce_ratio, 4), e.precision), []).append(
                (e.batch_size, float(e.estimated_memory_bytes)))

    def estimate(batch: int, ratio: float, precision: str) -> int | None:
        pts = table.get((round(ratio, 4), precision))
        if pts is None:
            # Another precision measured only: 32-bit tables overstate (safe), so prefer one.
            pts = table.get((round(ratio, 4), "32-true")) or next(
                (v for (r, _), v in table.items() if r == round(ratio, 4)), None)
        if not pts:
            return None
        fit = fit_memory(pts, ratio, "predicted")
        if fit is None:
            b0, v0 = pts[0]
            return int(v0 * batch / b0)       # one point: all per-sample (pessimistic)
        return int(fit.predict(batch))
    return estimate


def _shape_for(m: Measurements, ratio: float) -> tuple[int, int] | None:
    for rec in [*m.model_trials, *m.estimates]:
        if math.isclose(rec.reduce_ratio, ratio):
            return rec.height, rec.width
    return None


class BatchRule(Rule):
    keys = ("batch_size", "reduce_ratio")

    def apply(self, ctx: Context) -> None:
        devices = ctx.chosen["devices"]
        precision = ctx.chosen["precision"]
        kind = "cuda" if ctx.on_gpu else "cpu"
        if ctx.on_gpu:
            smallest = min(g.memory_bytes for g in ctx.hw.gpus[:devices])
            budget = ctx.budgets.vram_budget(smallest)
            budget_txt = (f"{fb(budget)} per GPU ({fb(smallest)} less "
                          f"{ctx.budgets.vram_margin:.0%} margin)")
        else:
            # CPU: the step shares RAM with the process itself and at least one loader worker.
            # The process's own RSS before training; the map's parent (torch already imported)
            # is the closest figure when the model probe did not record it.
            base = int(ctx.m.model_base_rss_bytes or ctx.m.map_base_rss_bytes or 0)
            worker = int(WorkersRule._worker_rss(ctx.m.loader_trials) or 0)
            budget = int(ctx.ram_budget * (1 - ctx.budgets.ram_margin)) - base - worker
            budget_txt = (f"{fb(budget)} of RAM ({fb(ctx.ram_budget)} budget less "
                          f"{ctx.budgets.ram_margin:.0%} margin"
                          + (f", {fb(base)} of process" if base else "")
                          + (f", {fb(worker)} for a loader worker" if worker else "") + ")")
        ctx.details["model_memory_budget_bytes"] = budget
        per_device_target = max(1, math.ceil(ctx.budgets.effective_batch_size / devices))
        ratios = sorted({r for r in REDUCE_LADDER if r <= ctx.budgets.max_reduce_ratio + 1e-9}
                        | {t.reduce_ratio for t in ctx.m.model_trials
                           if t.reduce_ratio <= ctx.budgets.max_reduce_ratio + 1e-9}
                        | {e.reduce_ratio for e in ctx.m.estimates
                           if e.reduce_ratio <= ctx.budgets.max_reduce_ratio + 1e-9},
                        reverse=True)
        skipped: list[str] = []
        smallest_need: tuple[float, float] | None = None
        for ratio in ratios:
            line = self._memory_line(ctx, ratio, kind, precision)
            if line is None:
                if any(t.oom and t.batch_size == 1 and t.reduce_ratio <= ratio + 1e-9
                       and t.device.split(":")[0] == kind for t in ctx.m.model_trials):
                    skipped.append(f"{ratio:g} (OOM at batch 1)")
                continue
            fit, source, how, oom_floor, top_ok = line
            if fit.predict(1) > budget:
                skipped.append(f"{ratio:g} (batch 1 needs {fb(fit.predict(1))})")
                smallest_need = (ratio, fit.predict(1))
                continue
            if fit.per_sample_bytes > 0:
                b = int((budget - fit.fixed_bytes) // fit.per_sample_bytes)
            else:
                b = ctx.budgets.max_batch_size
            caps = {"memory": b, "target": per_device_target, "limit": ctx.budgets.max_batch_size}
            if oom_floor is not None:
                caps["oom"] = oom_floor - 1
            if top_ok is not None:
                caps["extrapolation"] = 2 * top_ok      # a line trusted to 2x its last point
            fast = self._fastest_batch(ctx, ratio, kind)
            if fast is not None:
                caps["speed"] = fast
            batch = max(1, min(caps.values()))
            if oom_floor is not None and batch >= oom_floor:
                skipped.append(f"{ratio:g} (OOM at batch {oom_floor})")
                continue
            bound = min(caps, key=lambda k: caps[k])
            # The same number of accumulation steps reaches the target with the smallest
            # batch that still needs no more steps: less memory, an effective batch nearer
            # the target, and no extra optimizer steps.
            target = ctx.budgets.effective_batch_size
            steps = accumulation_for(target, batch, devices)
            trimmed = max(1, math.ceil(target / (steps * devices)))
            if trimmed < batch:
                caps["accumulation"] = trimmed
                batch, bound = trimmed, "accumulation"
            why = {"memory": "the largest under the budget",
                   "target": f"enough for the effective batch {ctx.budgets.effective_batch_size} "
                             f"over {devices} device(s)",
                   "limit": "the batch-size cap",
                   "oom": f"below the OOM the probe hit at batch {oom_floor}",
                   "extrapolation": f"at most 2x the largest batch measured ({top_ok})",
                   "speed": "the smallest batch within 5% of the best samples/s measured "
                            "(larger batches stopped paying)",
                   "accumulation": f"the smallest batch reaching the effective batch "
                                   f"{target} in {steps} accumulation step(s) (up to "
                                   f"{caps['memory']} would fit)"}[bound]
            peak = fit.predict(batch)
            if oom_floor is not None and bound != "oom":
                why += f"; the probe hit OOM at batch {oom_floor}"
            ctx.choose("batch_size", batch,
                       f"predicted peak {fb(peak)} of {budget_txt}: memory = "
                       f"{fb(fit.fixed_bytes)} + {fb(fit.per_sample_bytes)}/sample ({how}); "
                       f"{why}" + self._speed(ctx, ratio, batch, kind), source)
            lower = f"; lowered from {', '.join(skipped)}" if skipped else ""
            shape = _shape_for(ctx.m, ratio)
            size = f" ({shape[0]}x{shape[1]} px largest image)" if shape else ""
            ctx.choose("reduce_ratio", ratio,
                       f"the highest resolution on the ladder where a batch fits{size}{lower}",
                       source if skipped else "rule")
            ctx.details.update(model_predicted_peak_bytes=peak, memory_fit={
                "reduce_ratio": ratio, "fixed_bytes": fit.fixed_bytes,
                "per_sample_bytes": fit.per_sample_bytes, "points": fit.points,
                "source": fit.source})
            return
        if smallest_need is None and skipped:
            raise NothingFitsError(
                f"nothing fits: batch 1 ran out of memory at every reduce_ratio measured "
                f"({', '.join(skipped)}); would fit: more {'GPU memory' if ctx.on_gpu else 'RAM'}"
                f" or a reduce_ratio below {min(ratios):g} (pass --max-reduce-ratio)")
        if smallest_need is None:
            raise NothingFitsError("no model measurement and no memory estimate to size the "
                                   "batch with; run `python -m autotune probe` on the machine")
        ratio, need = smallest_need
        # The per-sample part shrinks with the pixel count (ratio squared); say how far down.
        suggestion = f"a device with at least {fb(need / (1 - ctx.budgets.vram_margin))}" \
            if ctx.on_gpu else f"--ram-budget {fb(need / (1 - ctx.budgets.ram_margin))} or more"
        raise NothingFitsError(
            f"nothing fits: batch 1 does not fit {budget_txt} at any reduce_ratio "
            f"({', '.join(skipped)}); would fit: {suggestion}, or a reduce_ratio below "
            f"{ratio:g} (pass --max-reduce-ratio)")

    def _memory_line(self, ctx: Context, ratio: float, kind: str, precision: str
                     ) -> tuple[MemoryFit, str, str, int | None, int | None] | None:
        """The memory line at `ratio`, how it was obtained, the smallest OOM batch, and the
        largest batch measured without OOM."""
        same = [t for t in ctx.m.model_trials if math.isclose(t.reduce_ratio, ratio)
                and t.device.split(":")[0] == kind]
        # An OOM at a smaller image predicts one at this size too, from the same batch on.
        ooms = [t.batch_size for t in ctx.m.model_trials if t.oom and t.device.split(":")[0] == kind
                and t.reduce_ratio <= ratio + 1e-9]
        oom_floor = min(ooms) if ooms else None
        ok = [t for t in same if not t.oom and t.error is None and t.peak_memory_bytes]
        pts = [(t.batch_size, float(t.peak_memory_bytes)) for t in ok]   # type: ignore[arg-type]
        top_ok = max((b for b, _ in pts), default=None)
        est = ctx.estimate
        est_at = (lambda b: est(b, ratio, precision)) if est is not None else (lambda b: None)
        src = ctx.measured_source()
        fit = fit_memory(pts, ratio, src)
        if fit is not None:
            recorded = {t.batch_size: t.estimated_memory_bytes for t in ok}
            check = self._check(fit, lambda b: est_at(b) or recorded.get(b), top_ok or 1)
            return fit, src, f"least squares over {len(pts)} trials on {kind}{check}", \
                oom_floor, top_ok
        e1, e2 = est_at(1), est_at(2)
        if pts and e1 is not None and e2 is not None and e2 > e1:
            # One measured point: slope from the estimate, level from the measurement.
            b0, v0 = pts[0]
            slope = (e2 - e1) * (v0 / max(1.0, float(est_at(b0) or v0)))
            line = MemoryFit(ratio, v0 - slope * b0, slope, 1, "measured+estimate")
            return line, src, f"1 trial on {kind} at batch {b0}, slope from the model's " \
                f"estimate", oom_floor, top_ok
        if e1 is not None and e2 is not None:
            scale = self._calibration(ctx, kind, precision)
            fixed = (2 * e1 - e2) * scale
            line = MemoryFit(ratio, fixed, (e2 - e1) * scale, 0, "predicted")
            how = "the model's own estimate" + (f" x {scale:.2f} (measured/estimate on "
                                                f"{kind} here)" if scale != 1.0 else "")
            return line, "predicted", how, oom_floor, None
        if pts:
            b0, v0 = pts[0]
            line = MemoryFit(ratio, 0.0, v0 / b0, 1, src)   # all per-sample: pessimistic
            return line, src, f"1 trial on {kind}, all memory counted per sample", \
                oom_floor, top_ok
        return None

    @staticmethod
    def _check(fit: MemoryFit, est_at: Callable[[int], int | None], batch: int) -> str:
        e = est_at(batch)
        if not e:
            return ""
        ratio = fit.predict(batch) / e
        flag = " - the estimate is off, trust the measurement" if not 0.5 <= ratio <= 2 else ""
        return f"; model estimate at batch {batch} {fb(e)}, measured/estimate {ratio:.2f}{flag}"

    @staticmethod
    def _calibration(ctx: Context, kind: str, precision: str) -> float:
        """measured/estimate over trials on the same device kind; 1.0 when there are none."""
        ratios = [t.peak_memory_bytes / t.estimated_memory_bytes for t in ctx.m.model_trials
                  if t.device.split(":")[0] == kind and t.precision == precision and not t.oom
                  and t.peak_memory_bytes and t.estimated_memory_bytes]
        return max(1.0, max(ratios)) if ratios else 1.0

    @staticmethod
    def _rates(ctx: Context, ratio: float, kind: str) -> dict[int, float]:
        return {t.batch_size: t.samples_per_s for t in ctx.m.model_trials
                if math.isclose(t.reduce_ratio, ratio) and t.samples_per_s and not t.oom
                and t.device.split(":")[0] == kind}

    @classmethod
    def _fastest_batch(cls, ctx: Context, ratio: float, kind: str) -> int | None:
        """Where throughput peaked inside the measured batches, the smallest batch within 5% of
        that peak: a bigger one costs memory and buys nothing (on a CPU it is often slower).
        None while the largest batch measured was also the fastest (it may keep rising)."""
        rates = cls._rates(ctx, ratio, kind)
        if len(rates) < 2:
            return None
        best = max(rates, key=lambda b: rates[b])
        if best == max(rates):
            return None
        return min(b for b, r in rates.items() if r >= 0.95 * rates[best])

    @classmethod
    def _speed(cls, ctx: Context, ratio: float, batch: int, kind: str) -> str:
        rates = cls._rates(ctx, ratio, kind)
        if not rates:
            return ""
        return "; samples/s by batch: " + ", ".join(f"{b}: {r:.3g}" for b, r in sorted(rates.items()))


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


# ---------------------------------------------------------------------------------------------
# Loader workers


class WorkersRule(Rule):
    keys = ("num_workers",)

    def apply(self, ctx: Context) -> None:
        devices, batch = ctx.chosen["devices"], ctx.chosen["batch_size"]
        ratio = ctx.chosen["reduce_ratio"]
        cores = max(1.0, float(ctx.hw.usable_cpus))
        # CPU training computes in the main process on the same cores: leave it one.
        core_cap = max(1, int(cores // devices) - (0 if ctx.on_gpu else 1))
        caps: dict[str, int] = {"cores": core_cap}
        per_worker = self._worker_rss(ctx.m.loader_trials)
        if per_worker:
            used = (ctx.details.get("model_predicted_peak_bytes", 0) if not ctx.on_gpu else 0)
            used += (ctx.m.model_base_rss_bytes or 0) * devices
            left = ctx.ram_budget * (1 - ctx.budgets.ram_margin) - used
            caps["RAM"] = max(0, int(left // (per_worker * devices)))
        shape = _shape_for(ctx.m, ratio)
        if shape and ctx.hw.shm_bytes:
            batch_bytes = batch * shape[0] * shape[1] * 4          # float32 images dominate
            room = ctx.hw.shm_bytes * ctx.budgets.shm_fraction
            caps["/dev/shm"] = max(0, int(room // (devices * ctx.budgets.prefetch_factor
                                                  * batch_bytes)))
        cap = min(caps.values())
        bound = min(caps, key=lambda k: caps[k])
        bounds_txt = ", ".join(f"{k} allow {v}" for k, v in caps.items())
        trials = sorted((t for t in ctx.m.loader_trials if t.error is None and t.samples_per_s),
                        key=lambda t: t.num_workers)
        need = self._model_rate(ctx, ratio, batch)
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
        enough = [t for t in usable if (t.samples_per_s or 0) >= need * LOADER_HEADROOM]
        if enough:
            w = enough[0]
            txt = (f"the fewest workers that feed the model: {w.samples_per_s:.1f} samples/s "
                   f">= {need:.1f} needed x {LOADER_HEADROOM} headroom")
        else:
            w = max(usable, key=lambda t: t.samples_per_s or 0)
            txt = (f"loader is the bottleneck: best {w.samples_per_s:.1f} samples/s within "
                   f"bounds < {need:.1f} the model takes (bound by {bound})")
        ctx.choose("num_workers", w.num_workers,
                   f"{txt}; samples/s by workers: {rates}; {bounds_txt}", src)

    @staticmethod
    def _worker_rss(trials: list[LoaderTrial]) -> float | None:
        """RSS per worker: the slope of the loader's tree RSS against the worker count."""
        pts = [(t.num_workers, t.peak_rss_bytes) for t in trials if t.peak_rss_bytes]
        zero = [r for w, r in pts if w == 0]
        base = min(zero) if zero else None
        per = [(r - base) / w for w, r in pts if w > 0 and base is not None and r]
        if per:
            return max(1.0, max(per))
        with_workers = [r / (w + 1) for w, r in pts if w > 0 and r]
        return max(with_workers) if with_workers else None

    @staticmethod
    def _model_rate(ctx: Context, ratio: float, batch: int) -> float | None:
        """Samples/s one rank's model step consumes at the chosen batch (nearest measured)."""
        kind = "cuda" if ctx.on_gpu else "cpu"
        pts = [t for t in ctx.m.model_trials if math.isclose(t.reduce_ratio, ratio)
               and t.samples_per_s and not t.oom and t.device.split(":")[0] == kind]
        if not pts or (ctx.predicted and ctx.on_gpu):
            return None       # another GPU model: its speed was not measured
        near = min(pts, key=lambda t: (abs(t.batch_size - batch), -t.batch_size))
        return float(near.samples_per_s)  # type: ignore[arg-type]


RULES: dict[str, type[Rule]] = {
    "devices": DevicesRule,
    "precision": PrecisionRule,
    "strategy": StrategyRule,
    "map": MapRule,
    "batch": BatchRule,
    "accumulate": AccumulateRule,
    "workers": WorkersRule,
}


def decide(hw: HardwareInfo, measurements: Measurements, budgets: Budgets | None = None, *,
           estimate: EstimateFn | None = None, predicted: bool = False) -> Decision:
    """Run every rule in order; returns the settings with a reason and a source for each.

    `estimate`: the workload's memory estimate (default: the profile's estimate table).
    `predicted`: the measurements were taken on another machine (`autotune plan`).
    Raises NothingFitsError (a UserError) when even the smallest setting exceeds a budget.
    """
    budgets = budgets or Budgets()
    ctx = Context(hw=hw, m=measurements, budgets=budgets,
                  estimate=estimate or estimate_from_table(measurements.estimates),
                  predicted=predicted)
    for rule in RULES.values():
        rule().apply(ctx)
    settings = Settings(**{k: ctx.chosen[k] for k in Settings.__dataclass_fields__})
    ctx.details["budgets"] = {"ram_budget_bytes": ctx.ram_budget,
                              "vram_margin": budgets.vram_margin,
                              "ram_margin": budgets.ram_margin,
                              "effective_batch_size": budgets.effective_batch_size}
    return Decision(settings=settings, reasons=dict(ctx.reasons), sources=dict(ctx.sources),
                    details=ctx.details)
