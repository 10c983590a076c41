"""Act on what the monitor sees: more loader workers when the step waits for data, fewer when
RAM nears its budget, and a stop (with the run's work saved) when the process tree stays at
the RAM limit the OOM killer acts at; decided once per monitor interval, applied by the run.

The decision (`decide_workers`) and the bounds (`worker_cap`) are pure functions, so tables
test them; `WorkerAdapter` keeps the few intervals of history they read and the state that
stops it from oscillating. It changes nothing itself: it calls the `SetWorkers` the run gave
the monitor (smt.train hands one that resizes its loader at the next optimizer step), so
autotune never needs to know whose loader it is.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from autotune.monitor.hints import ram_near
from autotune.units import format_bytes as fb

# (new worker count, the reason with its numbers): applied by the run at its next safe point.
SetWorkers = Callable[[int, str], None]


@dataclass(frozen=True)
class AdaptConfig:
    # The starved hint's threshold: above 30% of loop time waiting, a worker pays for itself.
    starved_frac: float = 0.3
    # The RAM hint's threshold: the process tree above 90% of the budget gives a worker back.
    ram_near_frac: float = 0.9
    # A raise may not project the tree above 80% of the budget: the gap to ram_near_frac keeps
    # a raise from triggering the next lowering.
    ram_raise_frac: float = 0.8
    # The stop: the tree above 95% of the RAM limit (the cgroup's or the machine's: where the
    # OOM killer acts) for `patience` intervals after the last worker change. Above
    # ram_near_frac of a budget at most that limit, so the workers are given back first; the
    # 5% left is a few seconds of growth, time to finish a step and write last.ckpt.
    ram_stop_frac: float = 0.95
    # Consecutive intervals a condition must hold: one slow batch or one spike is no trend.
    patience: int = 3
    # Intervals after a change before the next one may be decided; the readings of the
    # intervals before a change never count after it (new workers need a moment to start).
    cooldown: int = 3
    # A busy GPU is not starved: CUDA runs ahead, the host waits in the loader meanwhile
    # (the starved hint's rule too).
    busy_gpu_pct: float = 85.0
    # Batches in flight per worker that /dev/shm must hold, with this margin.
    shm_margin: float = 2.0

    def __post_init__(self) -> None:
        for name in ("starved_frac", "ram_near_frac", "ram_raise_frac", "ram_stop_frac"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if self.ram_raise_frac >= self.ram_near_frac:
            raise ValueError(f"ram_raise_frac must be below ram_near_frac, got "
                             f"{self.ram_raise_frac!r} >= {self.ram_near_frac!r}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience!r}")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {self.cooldown!r}")


@dataclass(frozen=True)
class Reading:
    """One monitor interval, as the controller reads it."""
    t_s: float                         # end of the interval, seconds since the monitor started
    span_s: float                      # its length
    wait_frac: float | None            # share of loop time outside the step (None: no gap)
    rss_bytes: int | None              # the process tree
    available_bytes: int | None        # system-wide
    gpu_util_pct: float | None = None  # mean over the monitored GPUs


@dataclass(frozen=True)
class Limits:
    """What bounds the worker count, per rank; None where unknown (that bound is skipped)."""
    cores: int                         # usable by this run (cgroup and affinity)
    threads: int                       # the training step's intra-op threads per rank
    ranks: int = 1                     # training processes sharing the machine
    ram_budget_bytes: int | None = None
    rss_bytes: int | None = None       # the process tree now
    worker_rss_bytes: int | None = None  # what one more worker adds to the tree's RSS
    shm_free_bytes: int | None = None
    shm_per_worker_bytes: int | None = None  # prefetch x batch bytes, one worker of one rank


@dataclass(frozen=True)
class Change:
    old: int
    new: int
    kind: str                          # "starved" or "ram"
    reason: str                        # the numbers that caused it


def worker_cap(limits: Limits, workers: int, cfg: AdaptConfig = AdaptConfig()) -> tuple[int, str]:
    """(most workers per rank a raise may reach, the bound that sets it).

    Cores: those the step's threads leave free, and at least 1: a step that waits for data
    leaves its cores idle meanwhile, and one worker moves the loading the main process does
    anyway off the step's path, adding no CPU demand. RAM: the tree must stay under
    `ram_raise_frac` of the budget with each new worker's RSS added on every rank. /dev/shm:
    each worker's prefetched batches, with a margin."""
    caps = [(max(1, limits.cores // max(1, limits.ranks) - limits.threads), "cores")]
    if limits.ram_budget_bytes and limits.rss_bytes is not None and limits.worker_rss_bytes:
        room = cfg.ram_raise_frac * limits.ram_budget_bytes - limits.rss_bytes
        extra = math.floor(room / (limits.worker_rss_bytes * max(1, limits.ranks)))
        caps.append((workers + max(0, extra), "RAM"))
    if limits.shm_free_bytes is not None and limits.shm_per_worker_bytes:
        need = cfg.shm_margin * limits.shm_per_worker_bytes * max(1, limits.ranks)
        caps.append((workers + max(0, math.floor(limits.shm_free_bytes / need)), "/dev/shm"))
    return min(caps)


def _span(recent: Sequence[Reading]) -> str:
    return f"{len(recent)} intervals ({sum(r.span_s for r in recent):.0f} s)"


def decide_workers(history: Sequence[Reading], workers: int, cap: int, since_change: int,
                   ram_budget_bytes: int | None, ceiling: int | None = None,
                   cfg: AdaptConfig = AdaptConfig()) -> Optional[Change]:
    """The change the last intervals call for, or None.

    `history`: the intervals since the last change (or the latest of them), oldest first; `cap`: `worker_cap`'s
    bound; `ceiling`: a count RAM already pushed the run below (raises stay under it).
    RAM comes first (a run killed by the OOM killer loses more than a slow one); one worker
    at a time, each after `patience` intervals that all agree and `cooldown` after a change.
    """
    if since_change < max(cfg.cooldown, cfg.patience) or len(history) < cfg.patience:
        return None
    recent = history[-cfg.patience:]
    if workers > 0 and ram_budget_bytes and all(
            ram_near(r.rss_bytes, r.available_bytes, ram_budget_bytes, cfg.ram_near_frac)
            for r in recent):
        peak = max(r.rss_bytes or 0 for r in recent)
        return Change(workers, workers - 1, "ram",
                      f"the run used up to {fb(peak)} of its {fb(ram_budget_bytes)} RAM budget "
                      f"(over {cfg.ram_near_frac:.0%}) over {_span(recent)}")
    # Intervals without a gap between steps (an epoch's first batch) measure nothing: skipped.
    measured = [r for r in history if r.wait_frac is not None][-cfg.patience:]
    starved = len(measured) == cfg.patience and all(
        (r.wait_frac or 0.0) >= cfg.starved_frac
        and (r.gpu_util_pct is None or r.gpu_util_pct < cfg.busy_gpu_pct) for r in measured)
    top = cap if ceiling is None else min(cap, ceiling)
    if starved and workers < top:
        wait = sum(r.wait_frac or 0.0 for r in measured) / len(measured)
        return Change(workers, workers + 1, "starved",
                      f"waited for data {wait:.0%} of each step over {_span(measured)}")
    return None


def decide_stop(history: Sequence[Reading], limit_bytes: int | None,
                cfg: AdaptConfig = AdaptConfig()) -> str | None:
    """Why the run should save and stop now, or None: the last `patience` intervals (since the
    last worker change) all had the process tree, loader workers included, within
    `ram_stop_frac` of the RAM limit (`ram_near`, the worker loop's own test)."""
    if not limit_bytes or len(history) < cfg.patience:
        return None
    recent = history[-cfg.patience:]
    if not all(ram_near(r.rss_bytes, r.available_bytes, limit_bytes, cfg.ram_stop_frac)
               for r in recent):
        return None
    peak = max(r.rss_bytes or 0 for r in recent)
    return (f"the run used up to {fb(peak)} of its {fb(limit_bytes)} RAM limit "
            f"(over {cfg.ram_stop_frac:.0%}) over {_span(recent)}")


class WorkerAdapter:
    """The controller's state: intervals since the last change, and the RAM ceiling."""

    def __init__(self, set_workers: SetWorkers, workers: int,
                 cfg: AdaptConfig | None = None) -> None:
        self.set_workers = set_workers
        self.workers = workers
        self.cfg = cfg or AdaptConfig()
        self.history: list[Reading] = []
        # Only a change starts a cool-down; the first decision needs `patience` intervals.
        self.since_change = max(self.cfg.cooldown, self.cfg.patience)
        self.ceiling: int | None = None
        self.changes: list[Change] = []

    def observe(self, reading: Reading, limits: Limits) -> Change | None:
        """Take one interval; decide, and hand a change to `set_workers`."""
        # a few more than `patience`: intervals without a wait measurement are skipped
        self.history = (self.history + [reading])[-4 * self.cfg.patience:]
        self.since_change += 1
        cap, _ = worker_cap(limits, self.workers, self.cfg)
        change = decide_workers(self.history, self.workers, cap, self.since_change,
                                limits.ram_budget_bytes, self.ceiling, self.cfg)
        if change is None:
            return None
        if change.kind == "ram":
            self.ceiling = change.new
        self.workers = change.new
        self.history = []
        self.since_change = 0
        self.changes.append(change)
        self.set_workers(change.new, change.reason)
        return change
