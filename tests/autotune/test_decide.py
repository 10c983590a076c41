"""Decisions from recorded measurements: one table of machines, and the rules' invariants."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from autotune.decide import Budgets, NothingFitsError, RULES, decide, fit_memory
from autotune.errors import UserError
from autotune.records import (GpuInfo, HardwareInfo, LoaderTrial, MapTrial, Measurements,
                              MemoryEstimate, ModelTrial)
from autotune.settings import Settings

GIB = 1024 ** 3
MIB = 1024 ** 2
T4 = GpuInfo("Tesla T4", 15 * GIB, [7, 5])
P100 = GpuInfo("Tesla P100-PCIE-16GB", 16 * GIB, [6, 0])
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", 40 * GIB, [8, 0])


def hw(cpus: int, ram_gib: float, gpus: list[GpuInfo] = (), shm_gib: float = 8,
       disk_gib: float = 100) -> HardwareInfo:
    return HardwareInfo(cpu_count=cpus, usable_cpus=float(cpus), ram_bytes=int(ram_gib * GIB),
                        ram_available_bytes=int(ram_gib * GIB), shm_bytes=int(shm_gib * GIB),
                        disk_free_bytes=int(disk_gib * GIB),
                        gpus=[replace(g, index=i) for i, g in enumerate(gpus)])


# The map's cost on page-sized rows: 0.5 GiB parent, 0.3 GiB per worker, 40 MiB per buffered row.
BASE, WORKER, ROW = 0.5 * GIB, 0.3 * GIB, 40 * MIB


def map_trial(num_proc: int, wbs: int, rate: float, stalled: bool = False) -> MapTrial:
    peak = BASE + num_proc * (WORKER + wbs * ROW)
    return MapTrial(num_proc, wbs, 48, 48 / rate, None if stalled else rate,
                    None if stalled else int(peak), int(BASE), ROW, 70_000, stalled=stalled)


def model_trials(device: str, fixed: float, per: float, batches: tuple[int, ...],
                 ratio: float = 1.0, oom_at: int | None = None,
                 rate_per_sample: float = 10.0) -> list[ModelTrial]:
    out = []
    for b in batches:
        oom = oom_at is not None and b >= oom_at
        out.append(ModelTrial(ratio, b, int(1024 * ratio), int(1536 * ratio), 256, device,
                              "16-mixed", None if oom else b / (rate_per_sample * b ** 0.9),
                              None if oom else rate_per_sample * b ** 0.1,
                              None if oom else int(fixed + per * b),
                              int(0.9 * (fixed + per * b)), oom=oom))
    return out


def estimates(fixed: float, per: float, ratio: float, precision: str) -> list[MemoryEstimate]:
    return [MemoryEstimate(ratio, b, int(1024 * ratio), int(1536 * ratio), 256, precision,
                           int(fixed + per * b)) for b in (1, 2, 4)]


LOADER = [LoaderTrial(0, 4, 2.0, 8.0, int(1.0 * GIB)), LoaderTrial(1, 4, 3.7, 15.0, int(1.4 * GIB)),
          LoaderTrial(2, 4, 7.0, 28.0, int(1.8 * GIB)), LoaderTrial(4, 4, 10.0, 40.0, int(2.6 * GIB))]


def meas(map_trials: list[MapTrial] | None = None, trials: list[ModelTrial] | None = None,
         est: list[MemoryEstimate] | None = None, loader: list[LoaderTrial] | None = None,
         rows: int = 1000) -> Measurements:
    return Measurements(map_trials=map_trials if map_trials is not None else [
        map_trial(1, 10, 9.0), map_trial(1, 50, 10.0), map_trial(2, 50, 19.0),
        map_trial(4, 50, 36.0)], model_trials=trials or [], estimates=est or [],
        loader_trials=LOADER if loader is None else loader, dataset_rows=rows,
        model_base_rss_bytes=int(0.8 * GIB))


GPU_TRIALS = model_trials("cuda:0", 2 * GIB, 3 * GIB, (1, 2))     # heavy full-page model
CPU_TRIALS = model_trials("cpu", 1 * GIB, 0.5 * GIB, (1, 2, 4))

CASES: list[tuple[str, HardwareInfo, Measurements, Budgets, dict[str, Any]]] = [
    # RAM-starved: only one map process with the measured 50-row writer batch fits 5.1 GiB.
    # RAM-starved (3 GiB): two processes with small writer batches beat one with big ones.
    ("ram_starved", hw(4, 3, [T4]), meas(trials=GPU_TRIALS), Budgets(),
     {"num_proc": 2, "writer_batch_size": 10, "devices": 1, "precision": "16-mixed"}),
    # 6 GiB: four processes fit once their writer batch shrinks from the measured 50 to 10.
    ("ram_tight", hw(4, 6, [T4]), meas(trials=GPU_TRIALS), Budgets(),
     {"num_proc": 4, "writer_batch_size": 10}),
    # Plenty of RAM: the fastest measured setting as measured.
    ("ram_plenty", hw(4, 30, [T4]), meas(trials=GPU_TRIALS), Budgets(),
     {"num_proc": 4, "writer_batch_size": 50}),
    # Many cores, lots of RAM: the fastest measured map setting.
    ("many_cores", hw(32, 128, [A100]), meas(map_trials=[
        map_trial(1, 50, 10.0), map_trial(2, 50, 19.0), map_trial(4, 50, 36.0),
        map_trial(8, 50, 60.0), map_trial(16, 50, 70.0)],
        trials=model_trials("cuda:0", 2 * GIB, 3 * GIB, (1, 2, 4, 8))), Budgets(),
     {"num_proc": 16, "precision": "bf16-mixed", "strategy": "auto", "batch_size": 8,
      "accumulate_grad_batches": 2}),
    # Two T4s: DDP, fp16, batch 3 fits 13.5 GiB (2 + 3 x 3 = 11 GiB), accumulation to >= 16.
    ("two_t4", hw(4, 30, [T4, T4]), meas(trials=GPU_TRIALS), Budgets(),
     {"devices": 2, "strategy": "ddp", "precision": "16-mixed", "batch_size": 3,
      "accumulate_grad_batches": 3, "effective_batch_size": 18, "num_proc": 4}),
    # One P100 (capability 6.0): fp16, no DDP.
    ("one_p100", hw(4, 30, [P100]), meas(trials=GPU_TRIALS), Budgets(),
     {"devices": 1, "strategy": "auto", "precision": "16-mixed", "batch_size": 4,
      "accumulate_grad_batches": 4}),
    # CPU only, 2 cores, 8 GiB: precision not timed, so fp32 by rule (bf16 autocast is
    # emulated, hence slower, on most CPUs); one loader worker beside the computing main
    # process; batch 7 would fit after RAM for the process and a worker, 6 needs no more steps.
    ("cpu_only", hw(2, 8), meas(trials=CPU_TRIALS), Budgets(),
     {"devices": 1, "precision": "32-true", "strategy": "auto", "num_workers": 1,
      "batch_size": 6, "accumulate_grad_batches": 3}),
    # An OOM at batch 2 on the GPU caps the batch at 1 whatever the line says.
    ("oom_caps", hw(4, 30, [A100]), meas(trials=model_trials(
        "cuda:0", 2 * GIB, 1 * GIB, (1, 2, 4), oom_at=2) + model_trials(
        "cuda:0", 2 * GIB, 1 * GIB, (1,))), Budgets(), {"batch_size": 1}),
    # A stall at num_proc 2 rules out num_proc >= 2 even though it looked faster.
    ("stalled_map", hw(8, 64, [T4]), meas(map_trials=[
        map_trial(1, 50, 10.0), map_trial(2, 50, 19.0, stalled=True), map_trial(4, 50, 36.0)],
        trials=GPU_TRIALS), Budgets(), {"num_proc": 1}),
    # Batch 1 does not fit at full size on a 6 GiB GPU: lower the ratio.
    ("ratio_ladder", hw(4, 30, [GpuInfo("GeForce RTX 2060", 6 * GIB, [7, 5])]),
     meas(trials=model_trials("cuda:0", 2 * GIB, 5 * GIB, (1,)) + model_trials(
         "cuda:0", 1 * GIB, 1.2 * GIB, (1, 2), ratio=0.5)), Budgets(),
     {"reduce_ratio": 0.5, "batch_size": 3}),
    # Predicted from the model's estimate only (nothing measured on a GPU).
    ("estimate_only", hw(4, 30, [T4]), meas(est=estimates(2 * GIB, 3 * GIB, 1.0, "16-mixed")),
     Budgets(), {"batch_size": 3}),
    # Explicit budgets win: a 2 GiB RAM budget forces the one-process map.
    ("ram_flag", hw(16, 64, [T4]), meas(trials=GPU_TRIALS), Budgets(ram_budget_bytes=2 * GIB),
     {"num_proc": 1}),
    # Loader: 28 samples/s with 2 workers feeds a model taking ~15.8 samples/s x 1.2;
    # 1 worker (15) would not.
    ("workers_fewest", hw(8, 64, [A100]), meas(trials=model_trials(
        "cuda:0", 2 * GIB, 1 * GIB, (1, 2, 4, 8, 16), rate_per_sample=12.0)),
     Budgets(effective_batch_size=16), {"num_workers": 2}),
]


@pytest.mark.parametrize("name, machine, m, budgets, expected", CASES, ids=[c[0] for c in CASES])
def test_decisions(name: str, machine: HardwareInfo, m: Measurements, budgets: Budgets,
                   expected: dict[str, Any]) -> None:
    d = decide(machine, m, budgets)
    got = d.settings.to_dict()
    assert {k: got[k] for k in expected} == expected, d.reasons
    _check_invariants(machine, budgets, d)


def _check_invariants(machine: HardwareInfo, budgets: Budgets, d: Any) -> None:
    s: Settings = d.settings
    # Every setting has a reason and a source; measured ones quote numbers.
    assert set(d.reasons) == set(s.to_dict()) == set(d.sources)
    assert all(d.reasons.values())
    assert all(any(ch.isdigit() for ch in d.reasons[k]) for k, src in d.sources.items()
               if src in ("measured", "predicted"))
    # Never over a budget by prediction.
    ram = budgets.ram_budget(machine)
    if "map_predicted_peak_bytes" in d.details:
        assert d.details["map_predicted_peak_bytes"] * (1 + budgets.ram_margin) <= ram
    peak = d.details["model_predicted_peak_bytes"]
    if machine.gpus:
        assert peak <= min(g.memory_bytes for g in machine.gpus) * (1 - budgets.vram_margin)
    else:
        assert peak <= ram
    # The effective batch is reached with the fewest accumulation steps.
    assert s.effective_batch_size == s.batch_size * s.devices * s.accumulate_grad_batches
    assert s.effective_batch_size >= budgets.effective_batch_size
    assert s.batch_size * s.devices * (s.accumulate_grad_batches - 1) < budgets.effective_batch_size
    assert s.num_workers <= max(1, int(machine.usable_cpus // s.devices))
    assert s.num_proc <= machine.usable_cpus


def test_nothing_fits_says_what_would() -> None:
    tiny = hw(4, 30, [GpuInfo("GeForce GT 1030", 2 * GIB, [6, 1])])
    m = meas(trials=model_trials("cuda:0", 2 * GIB, 3 * GIB, (1,)) + model_trials(
        "cuda:0", 1.5 * GIB, 1.4 * GIB, (1,), ratio=0.5))
    with pytest.raises(NothingFitsError) as info:
        decide(tiny, m)
    text = str(info.value)
    assert isinstance(info.value, UserError)
    assert "would fit" in text and "0.5" in text and "GiB" in text
    # The suggested device really would fit: 2.9 GiB batch 1 / 0.9 margin.
    bigger = replace(tiny, gpus=[GpuInfo("x", int(2.9 * GIB / 0.9) + MIB, [6, 1])])
    assert decide(bigger, m).settings.reduce_ratio == 0.5


def test_map_that_fits_nowhere() -> None:
    with pytest.raises(NothingFitsError, match="--ram-budget"):
        decide(hw(4, 30, [T4]), meas(trials=GPU_TRIALS), Budgets(ram_budget_bytes=GIB))


def test_disk_too_small_for_the_cache() -> None:
    m = meas(trials=GPU_TRIALS, rows=2_000_000)      # 2M rows x 70 kB = 130 GiB
    with pytest.raises(NothingFitsError, match="on disk"):
        decide(hw(4, 30, [T4], disk_gib=20), m)


def test_devices_flag_beyond_the_machine_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--devices 3"):
        decide(hw(4, 30, [T4, T4]), meas(trials=GPU_TRIALS), Budgets(devices=3))


def test_memory_fit_recovers_the_line_and_checks_the_estimate() -> None:
    fit = fit_memory([(1, 5.0), (2, 7.0), (4, 11.0)], 1.0)
    assert fit is not None and math.isclose(fit.fixed_bytes, 3.0) and \
        math.isclose(fit.per_sample_bytes, 2.0) and fit.points == 3
    assert fit_memory([(2, 7.0), (2, 7.5)], 1.0) is None
    d = decide(hw(4, 30, [T4]), meas(trials=GPU_TRIALS))
    assert "measured/estimate 1.11" in d.reasons["batch_size"]     # trials: estimate = 0.9 x


@pytest.mark.parametrize("field, value", [("ram_fraction", 0), ("ram_fraction", 1.5),
                                          ("vram_margin", -0.1), ("devices", 0),
                                          ("effective_batch_size", 0),
                                          ("max_reduce_ratio", 2.0)])
def test_budget_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        Budgets(**{field: value})


def test_rules_registry_covers_every_setting() -> None:
    keys = [k for rule in RULES.values() for k in rule.keys]
    assert sorted(keys) == sorted(Settings().to_dict())


def test_an_oom_at_a_smaller_image_rules_out_larger_ones() -> None:
    # The estimate says full size fits, but the probe ran out of memory at half size.
    est = [e for r in (1.0, 0.5, 0.25) for e in estimates(1 * GIB, 0.5 * GIB, r, "16-mixed")]
    oom = model_trials("cuda:0", 1 * GIB, 0.5 * GIB, (1,), ratio=0.5, oom_at=1)
    d = decide(hw(4, 30, [T4]), meas(trials=oom, est=est))
    assert d.settings.reduce_ratio == 0.25
    assert "1 (OOM at batch 1)" in d.reasons["reduce_ratio"]
    assert "0.5 (OOM at batch 1)" in d.reasons["reduce_ratio"]


def test_planned_decisions_are_never_marked_measured() -> None:
    d = decide(hw(16, 64, [T4, T4]), meas(trials=GPU_TRIALS), predicted=True)
    assert "measured" not in d.sources.values()
    assert d.settings.num_proc > 4          # scaled to the target's 16 cores from 4 measured
    assert "predicted for 16 core(s)" in d.reasons["num_proc"]


@pytest.mark.parametrize("rates, expected", [
    # Throughput peaks at 4 and falls at 8: the batch stops where speed stopped paying.
    ({1: 1.0, 2: 1.8, 4: 2.0, 8: 1.7}, 4),
    # 2 is within 5% of the peak at 4: the smaller batch, less memory, the same speed.
    ({1: 1.0, 2: 1.95, 4: 2.0, 8: 1.5}, 2),
    # Still rising at the largest batch measured: memory, the target and the 2x extrapolation cap decide.
    ({1: 1.0, 2: 1.8, 4: 2.5, 8: 3.0}, 16),
])
def test_batch_stops_where_measured_speed_stops_rising(rates: dict[int, float],
                                                       expected: int) -> None:
    trials = [replace(t, samples_per_s=rates[t.batch_size])
              for t in model_trials("cuda:0", 2 * GIB, 1 * GIB, (1, 2, 4, 8))]
    d = decide(hw(8, 64, [A100]), meas(trials=trials), Budgets())
    assert d.settings.batch_size == expected
    assert d.settings.effective_batch_size >= 16
    if expected < 16:
        assert "5% of the best samples/s" in d.reasons["batch_size"]
