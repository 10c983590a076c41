"""autotune.preflight: the peak a run will reach before it starts (the step's prediction, the
process, the loader's workers), against the budgets, and the nearest settings that fit; and
the budgets `autotune search` and `smt.train` share (autotune.feasible)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from autotune.feasible import FitPredictor, MemoryPredictor, device_budget, ram_budget, vram_budget
from autotune.preflight import Limits, Peak, RunHolds, predict_peak, run_ram, what_fits
from autotune.records import GpuInfo, HardwareInfo, MemoryFit
from autotune.settings import Settings
from autotune.units import GIB, MIB


class Line(MemoryPredictor):
    """fixed + per_sample x batch x area: the shape every real predictor has."""
    source = "fake line"

    def __init__(self, fixed: float, per_sample: float) -> None:
        self.fixed, self.per = fixed, per_sample

    def predict_bytes(self, settings: Settings) -> float | None:
        return self.fixed + self.per * settings.batch_size * settings.reduce_ratio ** 2


class Unknown(MemoryPredictor):
    source = "none"

    def predict_bytes(self, settings: Settings) -> float | None:
        return None


def _s(batch: int = 32, acc: int = 1, ratio: float = 1.0, workers: int = 0) -> Settings:
    return Settings(batch_size=batch, accumulate_grad_batches=acc, reduce_ratio=ratio,
                    num_workers=workers)


CPU = RunHolds(process_bytes=500 * MIB, worker_bytes=100 * MIB)

# (predictor, settings, holds, expected peak)
PEAKS = [
    pytest.param(Line(GIB, 64 * MIB), _s(32), CPU, Peak(GIB + 2 * GIB + 500 * MIB, None),
                 id="cpu-step-plus-process"),
    pytest.param(Line(GIB, 64 * MIB), _s(32, workers=3), CPU,
                 Peak(3 * GIB + 500 * MIB + 300 * MIB, None), id="cpu-workers-counted"),
    pytest.param(Line(GIB, 64 * MIB), _s(32), replace(CPU, ranks=2),
                 Peak(2 * (3 * GIB + 500 * MIB), None), id="cpu-two-ranks-two-steps"),
    pytest.param(Line(GIB, 64 * MIB), _s(32, workers=2), replace(CPU, on_gpu=True),
                 Peak(500 * MIB + 200 * MIB, 3 * GIB), id="gpu-step-in-vram"),
    pytest.param(FitPredictor([MemoryFit(1.0, GIB, 64 * MIB, 3, "measured")],
                              offset_bytes=700 * MIB), _s(32), CPU,
                 Peak(700 * MIB + 3 * GIB, None), id="profile-offset-is-the-process"),
]


@pytest.mark.parametrize("predictor, settings, holds, expected", PEAKS)
def test_the_peak_counts_what_the_run_holds(predictor, settings, holds, expected) -> None:
    assert predict_peak(predictor, settings, holds) == expected


def test_no_prediction_is_no_peak() -> None:
    assert predict_peak(Unknown(), _s(), CPU) is None


# The case: 1.5 GiB container, ~2.7 GiB predicted at batch 32 on CPU.
SMALL_CPU = Line(300 * MIB, 70 * MIB)
# (settings, ram budget, expected (batch, accumulate, ratio) or None)
FITS = [
    pytest.param(_s(32), int(1.2 * GIB), (6, 6, 1.0), id="smaller-batch-keeps-effective-32"),
    pytest.param(_s(32, acc=4), int(1.2 * GIB), (6, 22, 1.0), id="effective-128-kept"),
    pytest.param(_s(8), 850 * MIB, (1, 8, 0.75), id="batch-1-too-big-a-lower-ratio"),
    pytest.param(_s(8), 700 * MIB, None, id="nothing-fits"),
]


@pytest.mark.parametrize("settings, budget, expected", FITS)
def test_what_fits_is_the_largest_batch_then_a_lower_ratio(settings, budget, expected) -> None:
    limits = Limits(budget)
    fit = what_fits(SMALL_CPU, settings, CPU, limits)
    if expected is None:
        assert fit is None
        return
    batch, acc, ratio = expected
    assert fit is not None and fit.reduce_ratio == ratio
    assert not limits.over(predict_peak(SMALL_CPU, fit, CPU))            # it does fit
    assert (fit.batch_size, fit.accumulate_grad_batches) == (batch, acc)
    # one more sample per batch would not
    assert limits.over(predict_peak(SMALL_CPU, replace(fit, batch_size=batch + 1), CPU))
    assert fit.batch_size * fit.accumulate_grad_batches >= \
        settings.batch_size * settings.accumulate_grad_batches


def test_vram_over_budget_on_gpu_is_named() -> None:
    peak = predict_peak(Line(GIB, 64 * MIB), _s(32), replace(CPU, on_gpu=True))
    assert Limits(8 * GIB, 2 * GIB).over(peak) == ["VRAM"]
    assert Limits(400 * MIB, 2 * GIB).over(peak) == ["RAM", "VRAM"]
    assert Limits(8 * GIB, 4 * GIB).over(peak) == []


def _hw(total: int, avail: int | None, gpus: list[GpuInfo] | None = None) -> HardwareInfo:
    return HardwareInfo(cpu_count=4, usable_cpus=4.0, ram_bytes=total, ram_available_bytes=avail,
                        shm_bytes=None, disk_free_bytes=None, gpus=gpus or [])


@pytest.mark.parametrize("avail, own, expected", [
    (GIB, 500 * MIB, GIB + 500 * MIB),            # this process is part of the run
    (int(1.4 * GIB), 500 * MIB, int(1.5 * GIB)),  # never above the limit
])
def test_the_run_counts_its_own_process_in_what_is_available(avail, own, expected) -> None:
    assert run_ram(_hw(int(1.5 * GIB), avail), own).ram_available_bytes == expected


def test_budgets_are_the_probes_rules_and_vram_only_on_gpu() -> None:
    cpu = _hw(int(1.5 * GIB), int(1.5 * GIB))
    ram, why = ram_budget(cpu)
    assert ram == int(int(0.85 * 1.5 * GIB) * 0.9) and "85%" in why and "10%" in why
    assert vram_budget(cpu) is None and device_budget(cpu) == (ram, why)
    gpu = _hw(64 * GIB, 60 * GIB, [GpuInfo(name="T4", memory_bytes=16 * GIB, capability=(7, 5))])
    assert device_budget(gpu)[0] == int(16 * GIB * 0.9) == vram_budget(gpu)[0]


@pytest.mark.parametrize("field, value", [("process_bytes", -1), ("worker_bytes", -1),
                                          ("ranks", 0)])
def test_run_holds_rejects_nonsense(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        replace(CPU, **{field: value})
