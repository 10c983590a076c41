"""The loop stage: threads x loader workers x batch timed together, and the choice that follows.

The fake loops sleep instead of computing (a step's time scales with the torch threads it is
given, a sample's load time is a sleep in the dataset), so which cell wins is set by the test
and holds on a loaded machine; the real loop runs in the slow probe tests and the bench.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from autotune.decide import Budgets, LoopCell, candidate_loop_cells, decide
from autotune.probes.loop import probe_loop, timed_steps_for
from autotune.records import LoaderTrial, LoopTrial, Measurements, StepTrial
from autotune.workload import ModelShape
from test_decide import CPU_TRIALS, hw, meas
from workload_fakes import FakeWorkload


class _SleepRows:
    """A dataset whose every row takes `load_s` to load (a decode on a slow CPU)."""

    def __init__(self, rows: int, load_s: float) -> None:
        self.rows, self.load_s = rows, load_s

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int) -> Any:
        import torch
        time.sleep(self.load_s)
        return torch.zeros(1, 4, 4)


class _SleepStep:
    """A step that takes `work_s / threads` (threads help), or `work_s` when `flat`."""

    def __init__(self, work_s: float, flat: bool) -> None:
        self.work_s, self.flat = work_s, flat
        self.batches = 0

    def step(self, batch: Any = None) -> float:
        import torch
        self.batches += batch is not None
        time.sleep(self.work_s if self.flat else self.work_s / torch.get_num_threads())
        return 0.0

    def close(self) -> None:
        pass


class LoopFake(FakeWorkload):
    def __init__(self, load_s: float, work_s: float, flat: bool,
                 max_rows: int | None = None) -> None:
        super().__init__()
        self.load_s, self.work_s, self.flat = load_s, work_s, flat
        self.max_rows = max_rows            # a dataset smaller than the cells ask for
        self.steps: list[_SleepStep] = []

    def make_loader(self, batch_size: int, num_workers: int, reduce_ratio: float,
                    rows: int) -> Any:
        import torch
        rows = min(rows, self.max_rows or rows)
        return torch.utils.data.DataLoader(_SleepRows(rows, self.load_s), batch_size=batch_size,
                                           num_workers=num_workers)

    def make_step(self, batch_size: int, shape: ModelShape, precision: str, device: Any,
                  batch: Any = None) -> Any:
        self.steps.append(_SleepStep(self.work_s, self.flat))
        return self.steps[-1]


CELLS = [LoopCell(t, w, 2, "32-true") for t in (1, 2) for w in (0, 1)]


def _choice(trials: list[LoopTrial]) -> tuple[int | None, int]:
    m = meas(trials=CPU_TRIALS)
    m.loop_trials = trials
    d = decide(hw(2, 8), m, Budgets())
    assert d.sources["num_threads"] == d.sources["num_workers"] == "measured"
    assert "training loop timed as it runs" in d.reasons["num_workers"]
    return d.settings.num_threads, d.settings.num_workers


@pytest.mark.parametrize("load_s, work_s, flat, expected", [
    # Loading is free and a second thread halves the step: 2 threads, no worker.
    (0.0, 0.08, False, (2, 0)),
    # Loading in-process costs as much as the step and threads do nothing: a worker.
    (0.03, 0.06, True, (1, 1)),
])
def test_the_choice_follows_the_loop(load_s, work_s, flat, expected) -> None:
    work = LoopFake(load_s, work_s, flat)
    result = probe_loop(work, CELLS, device="cpu", reduce_ratio=1.0, timed_steps=3)
    assert result.rounds == 2 and all(len(t.round_samples_per_s) == 2 for t in result.trials)
    assert {(t.num_threads, t.num_workers) for t in result.trials} == \
        {(c.num_threads, c.num_workers) for c in CELLS}
    # The real step ran on the loader's batches, not on a batch of its own: per round one
    # warm-up, one per batch a worker prefetches, then the timed ones.
    assert sum(s.batches for s in work.steps) == sum(2 * (1 + 2 * c.num_workers + 3)
                                                     for c in CELLS)
    assert _choice(result.trials) == expected


def test_past_the_deadline_the_first_cells_are_timed_and_the_rest_said_untimed() -> None:
    """A deadline already passed: the first round still times MIN_CELLS cells (the best
    predicted, first in the list) so that there is a choice, says the others untimed, and
    no second round starts; the choice is among the timed cells."""
    from autotune.probes.loop import MIN_CELLS, UNTIMED
    result = probe_loop(LoopFake(0.0, 0.02, False), CELLS, device="cpu", reduce_ratio=1.0,
                        timed_steps=2, deadline=time.monotonic() - 1)
    timed = [t for t in result.trials if t.samples_per_s]
    assert result.rounds == 1 and len(timed) == MIN_CELLS
    assert [(t.num_threads, t.num_workers) for t in timed] == \
        [(c.num_threads, c.num_workers) for c in CELLS[:MIN_CELLS]]
    assert all(t.error == UNTIMED for t in result.trials[MIN_CELLS:])
    assert _choice(result.trials) in {(c.num_threads, c.num_workers) for c in CELLS[:MIN_CELLS]}


@pytest.mark.parametrize("max_rows, timed", [(5, 4), (1, 2)])
def test_a_small_dataset_starts_over_like_a_new_epoch(max_rows, timed) -> None:
    work = LoopFake(0.0, 0.001, True, max_rows=max_rows)
    result = probe_loop(work, [LoopCell(1, 0, 2, "32-true"), LoopCell(1, 1, 2, "32-true")],
                        device="cpu", reduce_ratio=1.0, timed_steps=timed)
    if max_rows >= 2:        # 5 rows: batches of 2, 2, 1; the loop reads on into a new pass
        assert all(t.samples_per_s and t.error is None for t in result.trials)
    else:                    # not even one full batch: said, not timed
        assert all(t.samples_per_s is None and "fewer than 2 rows" in t.error
                   for t in result.trials)


def loop(t: int, w: int, b: int, rate: float, precision: str = "32-true") -> LoopTrial:
    return LoopTrial(t, w, b, precision, "cpu", rate, [rate, rate])


@pytest.mark.parametrize("trials, expected", [
    # Threads and a worker both pay: the fastest cell, whatever the step alone said.
    ([loop(1, 0, 2, 8.45), loop(2, 0, 2, 10.35), loop(2, 1, 2, 10.6), loop(1, 1, 2, 7.7)],
     (2, 1, 2)),
    # Within 2% the cell with fewer threads + workers wins (it leaves the rest free).
    ([loop(2, 0, 2, 10.35), loop(2, 1, 2, 10.39)], (2, 0, 2)),
    # A batch neighbour that ran faster moves the batch (accumulation follows).
    ([loop(1, 1, 2, 8.0), loop(1, 1, 4, 9.5)], (1, 1, 4)),
    # Another precision that trained faster in the loop wins the precision too.
    ([loop(1, 0, 2, 8.0), loop(1, 0, 2, 14.0, "bf16-mixed")], (1, 0, 2, "bf16-mixed")),
])
def test_loop_rule_takes_the_fastest_cell(trials, expected) -> None:
    m = meas(trials=CPU_TRIALS)
    m.loop_trials = trials
    d = decide(hw(2, 8), m, Budgets(effective_batch_size=16))
    s = d.settings
    assert (s.num_threads, s.num_workers, s.batch_size, s.precision)[:len(expected)] == expected
    assert s.batch_size * s.accumulate_grad_batches >= 16
    assert d.sources["num_workers"] == "measured"


def test_no_loop_leaves_the_part_rules_and_a_plan_ignores_the_loop() -> None:
    m = meas(trials=CPU_TRIALS)
    plain = decide(hw(2, 8), m, Budgets())
    m.loop_trials = [loop(2, 2, 2, 99.0)]
    planned = decide(hw(2, 8), m, Budgets(), predicted=True)
    assert (planned.settings.num_threads, planned.settings.num_workers) == \
        (plain.settings.num_threads, plain.settings.num_workers)
    assert "loop" not in planned.reasons["num_workers"]


def test_cells_cover_threads_times_workers_and_the_batch_neighbours() -> None:
    m: Measurements = meas(trials=CPU_TRIALS, loader=[
        LoaderTrial(0, 2, 40.0, 80.0, 10**8), LoaderTrial(1, 2, 40.0, 80.0, 2 * 10**8)])
    m.thread_trials = [StepTrial("32-true", n, 2, 100, 400, 50, "cpu", 0.2, r, None, [0.2] * 2)
                       for n, r in ((1, 9.15), (2, 13.7))]
    cells, _ratio = candidate_loop_cells(hw(2, 8), m, Budgets(effective_batch_size=16))
    b = cells[0].batch_size
    pairs = {(c.num_threads, c.num_workers) for c in cells if c.batch_size == b}
    # No rule keeps a core back: 2 threads with a worker is a cell like any other.
    assert pairs == {(t, w) for t in (1, 2) for w in (0, 1, 2)}
    assert {c.batch_size for c in cells} - {b} <= {b // 2, 2 * b}
    # A thread count far slower alone is not worth a cell.
    m.thread_trials[0] = StepTrial("32-true", 1, 2, 100, 400, 50, "cpu", 1.0, 2.0, None, [1.0] * 2)
    assert {c.num_threads for c in candidate_loop_cells(hw(2, 8), m, Budgets())[0]} == {2}


@pytest.mark.parametrize("bf16_rate, cells_in_bf16", [(12.0, 1), (3.0, 0)])
def test_another_precision_near_enough_alone_gets_a_loop_cell(bf16_rate, cells_in_bf16) -> None:
    """The step alone can rank precisions wrongly (pages: bf16 ahead alone, fp32 1.8x faster
    training), so one within PRECISION_KEEP of the chosen is timed in the loop too."""
    m = meas(trials=CPU_TRIALS)
    m.precision_trials = [StepTrial("32-true", 2, 2, 100, 400, 50, "cpu", 0.2, 13.0, None, [0.2] * 2),
                          StepTrial("bf16-mixed", 2, 2, 100, 400, 50, "cpu", 0.2, bf16_rate, None,
                                    [0.2] * 2)]
    cells, _ratio = candidate_loop_cells(hw(2, 8), m, Budgets())
    assert {c.precision for c in cells[:-cells_in_bf16 or None]} == {"32-true"}
    assert sum(c.precision == "bf16-mixed" for c in cells) == cells_in_bf16


@pytest.mark.parametrize("step_s, expected", [(None, 3), (0.01, 8), (0.3, 5), (5.0, 2)])
def test_timed_steps_follow_the_step_time(step_s, expected) -> None:
    assert timed_steps_for(step_s) == expected
