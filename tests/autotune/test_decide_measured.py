"""Precision, threads and reduce ratio decided from what the probe timed and measured."""
from __future__ import annotations

import json
from pathlib import Path

from autotune.decide import Budgets, decide
from autotune.profile import load_profile, save_profile
from autotune.records import StepTrial
from test_decide import A100, CPU_TRIALS, GIB, hw, meas, model_trials
from test_profile import make_profile


def step(precision: str, rate: float, device: str = "cpu", threads: int | None = None,
         oom: bool = False) -> StepTrial:
    return StepTrial(precision, threads, 2, 180, 580, 200, device, None if oom else 2 / rate,
                     None if oom else rate, None, [2 / rate] * 2, oom=oom)


def test_cpu_precision_fastest_measured_wins_either_way() -> None:
    m = meas(trials=CPU_TRIALS)
    m.precision_trials = [step("32-true", 0.36), step("bf16-mixed", 0.035)]
    d = decide(hw(2, 8), m, Budgets())
    assert d.settings.precision == "32-true" and d.sources["precision"] == "measured"
    assert "fp32 0.36 samples/s vs bf16 0.035 samples/s: fp32" in d.reasons["precision"]
    m.precision_trials = [step("32-true", 0.2), step("bf16-mixed", 0.9)]
    d = decide(hw(2, 8), m, Budgets())
    assert d.settings.precision == "bf16-mixed" and d.sources["precision"] == "measured"


def test_gpu_precision_skips_an_oom_and_plan_uses_the_rule() -> None:
    m = meas(trials=model_trials("cuda:0", 2 * GIB, 1 * GIB, (1, 2, 4)))
    m.precision_trials = [step("16-mixed", 50, "cuda:0", oom=True), step("bf16-mixed", 40, "cuda:0"),
                          step("32-true", 30, "cuda:0")]
    d = decide(hw(4, 30, [A100]), m, Budgets())
    assert d.settings.precision == "bf16-mixed" and "fp16 OOM" in d.reasons["precision"]
    planned = decide(hw(4, 30, [A100]), m, Budgets(), predicted=True)
    assert planned.sources["precision"] == "rule"
    cpu_rule = decide(hw(2, 8), meas(trials=CPU_TRIALS), Budgets())
    assert cpu_rule.sources["precision"] == "rule"


def test_threads_fewest_within_five_percent_of_the_step_alone() -> None:
    m = meas(trials=CPU_TRIALS)
    m.thread_trials = [step("32-true", 1.0, threads=n) for n in (1, 2, 3)] \
        + [step("32-true", 1.03, threads=4)]
    d = decide(hw(4, 8), m, Budgets())
    assert d.settings.num_threads == 1 and d.sources["num_threads"] == "measured"
    assert "1: 1, 2: 1, 3: 1, 4: 1.03" in d.reasons["num_threads"]
    m.thread_trials = [step("32-true", 1.0, threads=1), step("32-true", 1.6, threads=2),
                       step("32-true", 2.0, threads=4)]
    d = decide(hw(4, 8), m, Budgets())
    # No rule caps a measurement: 4 threads ran fastest, 4 it is (the loop, where timed,
    # weighs them against loader workers).
    assert d.settings.num_threads == 4 and "no core" not in d.reasons["num_threads"]
    m.thread_trials = [step("32-true", 1.0, threads=1), step("32-true", 1.6, threads=2)]
    d = decide(hw(2, 8), m, Budgets())
    assert d.settings.num_threads == 2
    unmeasured = decide(hw(2, 8), meas(trials=CPU_TRIALS), Budgets())
    assert unmeasured.settings.num_threads == 1 and unmeasured.sources["num_threads"] == "rule"
    gpu = decide(hw(4, 30, [A100]), meas(trials=model_trials("cuda:0", GIB, GIB, (1, 2))), Budgets())
    assert gpu.settings.num_threads is None


def test_reduce_ratio_from_the_staff_space() -> None:
    legible = round(8 / 14, 3)
    m = meas(trials=model_trials("cpu", 1 * GIB, 0.5 * GIB, (1, 2, 4), ratio=legible)
             + CPU_TRIALS)
    m.staff_space_px, m.staff_images = 14.0, 32
    d = decide(hw(2, 8), m, Budgets())
    assert d.settings.reduce_ratio == legible and d.sources["reduce_ratio"] == "measured"
    assert "staff space 14.0 px" in d.reasons["reduce_ratio"] and "target 8 px" in d.reasons["reduce_ratio"]
    # A larger target asks for more pixels than the images have: never above 1.0.
    d = decide(hw(2, 8), m, Budgets(staff_space_px=20))
    assert d.settings.reduce_ratio == 1.0
    # Memory lowers it further: only batch 1 of the smaller ratio fits a 2.5 GiB machine.
    m.model_trials = model_trials("cpu", 3 * GIB, 1 * GIB, (1, 2), ratio=legible) \
        + model_trials("cpu", 0.3 * GIB, 0.1 * GIB, (1, 2, 4), ratio=0.5)
    d = decide(hw(2, 4), m, Budgets())
    assert d.settings.reduce_ratio == 0.5 and "lowered from" in d.reasons["reduce_ratio"]


def test_old_profile_without_num_threads_loads(tmp_path: Path) -> None:
    path = save_profile(make_profile(), tmp_path / "box.json")
    data = json.loads(path.read_text())
    assert "num_threads" in data["settings"]
    del data["settings"]["num_threads"]
    path.write_text(json.dumps(data))
    old = load_profile(path)
    assert old.settings.num_threads is None and data["schema"] == 1
    data["settings"]["num_threads"] = 1
    path.write_text(json.dumps(data))
    assert load_profile(path).settings.num_threads == 1
