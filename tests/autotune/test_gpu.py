"""On a CUDA machine: the inventory reads the GPU for real, and the step probe times every
precision the capability allows with the allocator peak. Skipped where there is no GPU
(`bench/gpu_check.py` runs these with `-m gpu`)."""
from __future__ import annotations

import pytest
from workload_fakes import FakeWorkload

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_nvml_inventory_agrees_with_torch():
    from autotune.hardware import gpu_inventory
    gpus = gpu_inventory()
    assert len(gpus) == torch.cuda.device_count()
    total = torch.cuda.get_device_properties(0).total_memory
    assert abs(gpus[0].memory_bytes - total) / total < 0.05
    assert tuple(gpus[0].capability) == tuple(torch.cuda.get_device_capability(0))


def test_step_probe_times_the_capability_candidates_on_cuda():
    from autotune.probes.step import precision_candidates, probe_steps, time_cell
    cap = tuple(torch.cuda.get_device_capability(0))
    work = FakeWorkload(rows=8, height=64, width=128)
    steps = probe_steps(work, reduce_ratio=1.0, device="cuda:0", usable_cpus=4, capability=cap)
    assert [t.precision for t in steps.precision_trials] == list(precision_candidates("cuda:0", cap))
    assert all(t.samples_per_s and len(t.step_times_s) >= 1 for t in steps.precision_trials)
    assert steps.thread_trials == []
    alone = time_cell(work, precision="32-true", batch_size=4, shape=work.largest_shape(1.0),
                      device="cuda:0")
    assert alone.peak_memory_bytes and alone.peak_memory_bytes > 0
