"""Measurements + budgets -> settings, each with the numbers behind it.

Pure functions of records: no probing, no clock, no machine access, so a table of recorded
measurements tests every rule, and `autotune plan` re-decides for a machine described by a
spec. Each setting group is a small rule class (one module each) registered in `RULES`; they
run in order and later rules read what earlier ones chose (accumulation needs the batch,
workers need the batch's RAM).

Safety: a setting is chosen only when its *predicted* cost, with a margin, is under the
budget. RSS sampling misses spikes shorter than its interval and a fit is only as good as its
points, hence the margins; an OOM seen during the probe caps a batch below it regardless of
what the fit says.

Two entry points: `decide` (every rule, the whole settings) and `choose_step_settings` (the
probe's mid-way decision: precision and threads from the timed step cells, before the model
is measured at them).

Layout: `context` (Budgets, Context, Rule, Decision, NothingFitsError), one module per rule
(`devices`, `precision`, `strategy`, `map`, `batch`, `accumulate`, `workers`), `memory` (the
memory-line strategies the batch rule reads), `estimates` (the profile's estimate table read
back as an estimate; the table itself is asked of the workload by `autotune.probes.estimates`).
The fitted cost models are autotune.fits'.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autotune.decide.accumulate import AccumulateRule
from autotune.decide.batch import REDUCE_LADDER, BatchRule
from autotune.decide.context import (Budgets, Context, Decision, EstimateFn, NothingFitsError,
                                     Rule)
from autotune.decide.devices import DevicesRule
from autotune.decide.map import MIN_WRITER_BATCH, WRITER_LADDER, MapRule, fit_map_cost
from autotune.decide.estimates import estimate_from_table
from autotune.decide.loop import LoopCell, LoopRule, loop_cells
from autotune.decide.precision import PrecisionRule
from autotune.decide.strategy import StrategyRule
from autotune.decide.threads import ThreadsRule
from autotune.decide.workers import WorkersRule
from autotune.fits import MapCostModel, fit_memory
from autotune.records import HardwareInfo, Measurements, StepTrial
from autotune.settings import Settings

RULES: dict[str, type[Rule]] = {
    "devices": DevicesRule,
    "precision": PrecisionRule,
    "strategy": StrategyRule,
    "threads": ThreadsRule,
    "map": MapRule,
    "batch": BatchRule,
    "accumulate": AccumulateRule,
    "workers": WorkersRule,
    # Last: where the loop was timed, its cells decide threads, workers and batch together.
    "loop": LoopRule,
}

__all__ = ["AccumulateRule", "BatchRule", "Budgets", "Context", "Decision", "DevicesRule",
           "EstimateFn", "MIN_WRITER_BATCH", "MapCostModel", "MapRule", "NothingFitsError",
           "PrecisionRule", "REDUCE_LADDER", "RULES", "Rule", "StrategyRule", "ThreadsRule", "WRITER_LADDER",
           "StepChoice", "WorkersRule", "choose_step_settings", "decide", "estimate_from_table",
           "fit_map_cost", "fit_memory", "LoopCell", "LoopRule", "loop_cells",
           "candidate_loop_cells"]


def _context(hw: HardwareInfo, measurements: Measurements, budgets: Budgets | None,
             estimate: EstimateFn | None, predicted: bool) -> Context:
    return Context(hw=hw, m=measurements, budgets=budgets or Budgets(),
                   estimate=estimate or estimate_from_table(measurements.estimates),
                   predicted=predicted)


def candidate_loop_cells(hw: HardwareInfo, measurements: Measurements,
                         budgets: Budgets | None = None, *,
                         estimate: EstimateFn | None = None) -> tuple[list[LoopCell], float]:
    """The loop cells worth timing and the reduce ratio to time them at, from what the part
    rules choose on the measurements so far (the probe calls this between its part stages and
    its loop stage)."""
    ctx = _context(hw, measurements, budgets, estimate, False)
    for name, rule in RULES.items():
        if name != "loop":
            rule().apply(ctx)
    return loop_cells(ctx), float(ctx.chosen["reduce_ratio"])


def decide(hw: HardwareInfo, measurements: Measurements, budgets: Budgets | None = None, *,
           estimate: EstimateFn | None = None, predicted: bool = False) -> Decision:
    """Run every rule in order; returns the settings with a reason and a source for each.

    `estimate`: the workload's memory estimate (default: the profile's estimate table).
    `predicted`: the measurements were taken on another machine (`autotune plan`).
    Raises NothingFitsError (a UserError) when even the smallest setting exceeds a budget.
    """
    budgets = budgets or Budgets()
    ctx = _context(hw, measurements, budgets, estimate, predicted)
    for rule in RULES.values():
        rule().apply(ctx)
    settings = Settings(**{k: ctx.chosen[k] for k in Settings.__dataclass_fields__})
    ctx.details["budgets"] = {"ram_budget_bytes": ctx.ram_budget,
                              "vram_margin": budgets.vram_margin,
                              "ram_margin": budgets.ram_margin,
                              "effective_batch_size": budgets.effective_batch_size}
    return Decision(settings=settings, reasons=dict(ctx.reasons), sources=dict(ctx.sources),
                    details=ctx.details)


@dataclass(frozen=True)
class StepChoice:
    """The precision and intra-op threads training will run at, chosen from the step cells."""
    precision: str
    num_threads: int | None             # None: torch's own default
    reason: str                         # the precision's reason, as `decide` will give it


def choose_step_settings(hw: HardwareInfo, budgets: Budgets,
                         precision_trials: Sequence[StepTrial],
                         thread_trials: Sequence[StepTrial]) -> StepChoice:
    """The precision and threads `decide` will choose from these timed step cells (its
    devices, precision and threads rules, the same code), so that the probe measures the
    model the way it will run. Reads the cells only: no other measurement is needed yet."""
    m = Measurements(precision_trials=list(precision_trials), thread_trials=list(thread_trials))
    ctx = Context(hw=hw, m=m, budgets=budgets)
    for rule in (DevicesRule, PrecisionRule, ThreadsRule):
        rule().apply(ctx)
    return StepChoice(str(ctx.chosen["precision"]), ctx.chosen["num_threads"],
                      ctx.reasons["precision"])
