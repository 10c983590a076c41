"""The training loop, measured: the workload's own DataLoader feeding its own training step, at a
few (threads, loader workers, batch) cells, interleaved, warm, median of the rounds.

Why not the parts: the step probe times the step with the cores to itself and the loader probe
times the loader with nothing computing beside it. Training runs both at once on the same cores,
where a worker and a second OpenMP thread compete, and where loading in the main process adds
to every step. Only the loop shows what that costs, so the decision on threads, workers and
batch comes from here (`autotune.decide.loop.LoopRule`).

One cell, one round: the loader is built as training builds it (`Workload.make_loader`), its
first batch is drawn (worker start-up is paid once per run, not per step, so it is left out),
one untimed step runs on it (thread pool and allocator warm at this cell's settings) and one
more per batch the workers prefetch (their start-up burst is over), then `timed_steps` x
(next batch + step) are timed. The round's rate is samples over that wall time;
the share of it spent in `next()` is the data wait. Rounds go over every cell in turn (the
second in reverse order), so that load from elsewhere and the model's own warm-up fall on every
cell alike; the cell's rate is the median of its rounds. The step objects (one per batch size)
are built once and kept: a cell differs from its neighbours only in the setting under test.

Bounded: past the deadline no cell starts another round (a cell keeps the rounds it has); in
the first round the cells after the first MIN_CELLS are then left untimed (they come best
predicted first, so the ones left out are those predicted slower), each said so. A watchdog
kills the workers of a cell whose next batch does not come for `stall_s`; an OOM is a result
for its cell.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from autotune.decide.loop import LoopCell
from autotune.measure import ProgressWatchdog, RssSampler, error_line, free_memory, is_oom_error
from autotune.probes.loader import kill_loader_workers
from autotune.probes.step import threads
from autotune.records import LoopTrial
from autotune.workload import Workload

ROUNDS = 2
# Timed (next batch + step) per cell and round: enough that one slow batch does not decide,
# few enough that a page-sized CPU step (seconds) keeps the stage within its share.
MIN_TIMED_STEPS, MAX_TIMED_STEPS = 2, 8
# Wall time a cell's timed steps aim at, per round.
TARGET_CELL_S = 1.5
# Batches each DataLoader worker loads ahead (torch's default prefetch_factor).
PREFETCH = 2
# Cells the first round times even past the deadline: a choice needs a comparison.
MIN_CELLS = 2
UNTIMED = "not timed: the probe's time budget ran out"


@dataclass
class LoopProbeResult:
    trials: list[LoopTrial]
    reduce_ratio: float
    rounds: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed_steps_for(step_s: float | None) -> int:
    """Timed steps per cell and round for a step of `step_s` seconds (None: unknown)."""
    if not step_s or step_s <= 0:
        return MIN_TIMED_STEPS + 1
    return max(MIN_TIMED_STEPS, min(MAX_TIMED_STEPS, round(TARGET_CELL_S / step_s)))


def batch_rows(batch: Any) -> int:
    """Samples in a loader's batch: a mapping's `images`, a sequence's first tensor, a tensor."""
    if isinstance(batch, dict):
        batch = batch.get("images")
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    shape = getattr(batch, "shape", None)
    return int(shape[0]) if shape else 0


class _TooFewRows(Exception):
    """The prepared sample cannot fill one batch of the cell's size."""


@dataclass
class _Cell:
    spec: LoopCell
    rates: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    error: str | None = None


def _run_round(workload: Workload, cell: _Cell, steps: dict[tuple[int, str], Any], *,
               device: str, reduce_ratio: float, timed: int, rows: int,
               stall_s: float) -> None:
    """One round of one cell: build its loader, warm, time `timed` (next batch + step)."""
    spec = cell.spec
    shape = workload.largest_shape(reduce_ratio)
    loader = workload.make_loader(spec.batch_size, spec.num_workers, reduce_ratio, rows)
    watchdog = ProgressWatchdog(stall_s, on_stall=lambda _s: kill_loader_workers())
    sampler = RssSampler(interval_ms=50, keep_samples=False)
    batches: Any = None

    def next_batch() -> Any:
        # A sample smaller than the cell needs starts over, as training's next epoch does.
        nonlocal batches
        for _ in range(2):
            try:
                return next(batches)
            except StopIteration:
                batches = iter(loader)
        raise StopIteration
    try:
        with threads(spec.num_threads), sampler, watchdog:
            batches = iter(loader)
            first = next_batch()
            for _ in range(2):                  # a short last batch: take the next one
                if batch_rows(first) == spec.batch_size:
                    break
                first = next_batch()
            if batch_rows(first) != spec.batch_size:
                raise _TooFewRows
            watchdog.beat()
            key = (spec.batch_size, spec.precision)
            step = steps.get(key)
            if step is None:
                step = steps[key] = workload.make_step(
                    spec.batch_size, shape, spec.precision, device, batch=first)
            step.step(first)
            # Workers fill their prefetch queues (PREFETCH batches each) right after they
            # start, computing beside the step: untimed, or a worker cell is timed in a burst
            # that training, whose workers live for the whole run, sees once.
            for _ in range(PREFETCH * spec.num_workers):
                step.step(next_batch())
                watchdog.beat()
            wait, samples = 0.0, 0
            start = time.perf_counter()
            for _ in range(timed):
                t0 = time.perf_counter()
                batch = next_batch()
                wait += time.perf_counter() - t0
                watchdog.beat()
                step.step(batch)
                samples += batch_rows(batch)
                watchdog.beat()
            wall = time.perf_counter() - start
        cell.rates.append(samples / wall)
        cell.waits.append(wait / wall)
    except StopIteration:
        cell.error = "the loader gave no batch"
    except _TooFewRows:
        cell.error = f"the data sample holds fewer than {spec.batch_size} rows"
    except Exception as exc:
        if watchdog.stalled:
            cell.error = f"no batch for {stall_s:g} s"
        elif is_oom_error(exc):
            cell.error = f"OOM: {error_line(exc)}"
            stale = steps.pop((spec.batch_size, spec.precision), None)
            if stale is not None:
                stale.close()
            free_memory()
        else:
            raise
    finally:
        del loader
        peak = sampler.peak_rss_bytes
        if peak is not None:
            cell.peak_rss_bytes = max(peak, cell.peak_rss_bytes or 0)


def probe_loop(workload: Workload, cells: Sequence[LoopCell], *, device: str,
               reduce_ratio: float, timed_steps: int = MIN_TIMED_STEPS + 1,
               rounds: int = ROUNDS, deadline: float | None = None, stall_s: float = 30.0,
               on_trial: Callable[[LoopTrial], None] | None = None) -> LoopProbeResult:
    """Time each cell's loop over `rounds` interleaved rounds (fewer when the deadline comes);
    returns one `LoopTrial` per cell, in the order given."""
    started = time.monotonic()
    state = [_Cell(spec) for spec in cells]
    steps: dict[tuple[int, str], Any] = {}
    done_rounds = 0
    # Every cell reads the same rows (one preparation of the sample, the same size mix); a
    # cell stops after its timed steps and its workers end with the loader.
    warm = PREFETCH * max((c.num_workers for c in cells), default=0)
    rows = max((c.batch_size for c in cells), default=1) * (timed_steps + 2 + warm)
    def past_deadline() -> bool:
        return deadline is not None and time.monotonic() >= deadline
    try:
        for r in range(rounds):
            if r and past_deadline():
                break
            order = state if r % 2 == 0 else list(reversed(state))
            for cell in order:
                if cell.error is not None:
                    continue
                if past_deadline() and (r or sum(bool(c.rates) for c in state) >= MIN_CELLS):
                    # Out of time: a later round stops here (each cell keeps the rounds it
                    # has); the first goes on to MIN_CELLS, then the rest, predicted slower
                    # (the cells come best predicted first), are said untimed.
                    if not r:
                        for rest in state:
                            if not rest.rates and rest.error is None:
                                rest.error = UNTIMED
                    break
                _run_round(workload, cell, steps, device=device,
                           reduce_ratio=reduce_ratio, timed=timed_steps, rows=rows,
                           stall_s=stall_s)
            done_rounds += 1
    finally:
        for step in steps.values():
            step.close()
        steps.clear()
        free_memory()
    trials = []
    for cell in state:
        rate = statistics.median(cell.rates) if cell.rates and cell.error is None else None
        trial = LoopTrial(
            num_threads=cell.spec.num_threads, num_workers=cell.spec.num_workers,
            batch_size=cell.spec.batch_size, precision=cell.spec.precision, device=device,
            samples_per_s=round(rate, 4) if rate else None,
            round_samples_per_s=[round(x, 4) for x in cell.rates],
            data_wait_frac=round(statistics.median(cell.waits), 4) if cell.waits else None,
            timed_steps=timed_steps, peak_rss_bytes=cell.peak_rss_bytes, error=cell.error)
        trials.append(trial)
        if on_trial:
            on_trial(trial)
    return LoopProbeResult(trials=trials, reduce_ratio=reduce_ratio,
                           rounds=done_rounds, seconds=round(time.monotonic() - started, 3))
