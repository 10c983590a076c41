"""The probe times the training step per precision and thread count, and picks what ran
fastest: fake steps whose cost depends on the setting stand in for a CPU with or without
native bf16."""
from __future__ import annotations

import time
from typing import Any

import pytest
from workload_fakes import FakeWorkload

from autotune.decide import Budgets, choose_step_settings
from autotune.probes.step import CellSpec, probe_steps, thread_candidates, time_cells
from autotune.records import HardwareInfo


class SlowStepWorkload(FakeWorkload):
    """make_step sleeps `cost[precision]` seconds per step (/ threads when `scales`)."""

    def __init__(self, cost: dict[str, float], scales: bool = False) -> None:
        super().__init__(rows=8, height=32, width=64)
        self.cost, self.scales = cost, scales
        self.steps: list[tuple[str, int]] = []

    def make_step(self, batch_size, shape, precision, device, batch=None) -> Any:
        import torch
        work = self

        class Step:
            def step(self) -> float:
                n = torch.get_num_threads()
                work.steps.append((precision, n))
                time.sleep(work.cost[precision] / (n if work.scales else 1))
                return 0.0

            def close(self) -> None:
                pass
        return Step()


def cpu(n: int = 2) -> HardwareInfo:
    return HardwareInfo(cpu_count=n, usable_cpus=float(n), ram_bytes=8 << 30,
                        ram_available_bytes=8 << 30, shm_bytes=None, disk_free_bytes=None)


@pytest.mark.parametrize("cost, expected", [
    # 2x apart: a loaded box's sleep jitter (tens of ms) can neither swap them nor push the
    # slower past the 3x cutoff.
    ({"32-true": 0.1, "bf16-mixed": 0.2}, "32-true"),        # AVX2: bf16 emulated
    ({"32-true": 0.2, "bf16-mixed": 0.1}, "bf16-mixed"),     # AMX / AVX512-BF16
])
def test_the_probe_picks_the_precision_that_ran_faster(cost, expected):
    work = SlowStepWorkload(cost)
    steps = probe_steps(work, reduce_ratio=0.5, device="cpu", usable_cpus=2,
                        thread_counts=(1,))
    choice = choose_step_settings(cpu(), Budgets(), steps.precision_trials, steps.thread_trials)
    precision, why = choice.precision, choice.reason
    assert precision == expected
    assert "fp32" in why and "bf16" in why and "samples/s" in why
    # Every cell: one warm-up and at least two timed steps, unless it lost by > 3x.
    for t in steps.precision_trials:
        assert len(t.step_times_s) >= 2 and t.warmup_steps == 1


def test_threads_are_measured_and_the_fastest_count_wins():
    work = SlowStepWorkload({"32-true": 0.08, "bf16-mixed": 0.4}, scales=True)
    steps = probe_steps(work, reduce_ratio=0.5, device="cpu", usable_cpus=4)
    choice = choose_step_settings(cpu(4), Budgets(), steps.precision_trials,
                                  steps.thread_trials)
    precision, threads = choice.precision, choice.num_threads
    # 4 threads ran fastest alone: no rule keeps a core back (the loop stage weighs threads
    # against loader workers where it runs).
    assert (precision, threads) == ("32-true", 4)
    assert {t.num_threads for t in steps.thread_trials} == {1, 2, 3, 4}
    assert {n for _, n in work.steps} == {1, 2, 3, 4}


def test_a_hopeless_cell_is_timed_once_and_the_rest_twice():
    # 20x apart against the 3x cutoff: tens of ms of sleep jitter on the fast cell of a loaded
    # box still leave the slow one hopeless.
    work = SlowStepWorkload({"32-true": 0.05, "bf16-mixed": 1.0})
    shape = work.largest_shape(0.5)
    fast, slow = time_cells(work, [CellSpec("32-true"), CellSpec("bf16-mixed")],
                            batch_size=2, shape=shape)
    assert len(fast.step_times_s) == 2 and len(slow.step_times_s) == 1
    assert fast.samples_per_s > slow.samples_per_s


def test_thread_candidates_cover_one_to_the_usable_cpus():
    assert thread_candidates(2) == (1, 2)
    assert thread_candidates(1.5) == (1,)
    assert thread_candidates(32)[0] == 1 and thread_candidates(32)[-1] == 32


def test_speed_is_timed_on_rows_padded_like_a_training_batch_of_that_size():
    from autotune.probes.step import pad_quantile, typical_batch
    work = FakeWorkload(rows=8, height=64, width=256)
    one, many = typical_batch(work, 1, 1.0), typical_batch(work, 16, 1.0)
    assert pad_quantile(1) == 0.5 and pad_quantile(16) > 0.9
    assert one.shape[0] == 1 and many.shape[0] == 16
    assert many.shape[-1] > one.shape[-1]       # a bigger batch pads to a longer row
