"""Planning for a machine we do not have: specs, and decisions from a recorded profile."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.decide import NothingFitsError
from autotune.errors import UserError
from autotune.plan import hardware_from_spec, load_spec, plan_profile
from autotune.profile import load_profile

FIX = Path(__file__).parent / "fixtures"
SPECS = Path(__file__).parents[2] / "profiles" / "specs"
GIB = 1024 ** 3

sys.path.insert(0, str(Path(__file__).parent))
from workload_fakes import FakeWorkload  # noqa: E402  (the probe engineer's fake workload)


@pytest.fixture
def recorded() -> Any:
    # Made-up probe figures (kind "synthetic") shaped to exercise the rules; plans re-decide
    # from the measurements, so nothing here relies on them having been measured.
    return load_profile(FIX / "profile-synthetic-cpu.json")


@pytest.mark.parametrize("spec, expect", [
    ({"cpu_count": 4, "ram": "30GB"}, {"ram_bytes": 30_000_000_000, "gpus": 0, "usable_cpus": 4.0}),
    ({"cpu_count": 4, "usable_cpus": 2.5, "ram_bytes": 8 * GIB, "shm": "64MiB",
      "gpu": {"name": "Tesla T4", "memory": "15GiB", "capability": [7, 5]}, "gpu_count": 2},
     {"ram_bytes": 8 * GIB, "gpus": 2, "usable_cpus": 2.5, "shm_bytes": 64 * 1024 ** 2}),
])
def test_spec_to_hardware(spec: dict, expect: dict) -> None:
    hw = hardware_from_spec(spec, "s.json")
    assert hw.ram_bytes == expect["ram_bytes"] and len(hw.gpus) == expect["gpus"]
    assert hw.usable_cpus == expect["usable_cpus"] and len(hw.fingerprint) == 16
    if "shm_bytes" in expect:
        assert hw.shm_bytes == expect["shm_bytes"]


@pytest.mark.parametrize("spec, message", [
    ({"ram": "30GB"}, "'cpu_count' must be an integer"),
    ({"cpu_count": 4}, "missing key 'ram'"),
    ({"cpu_count": 4, "ram": "lots"}, "key 'ram'"),
    ({"cpu_count": 4, "ram": "8GB", "gpus": [{"name": "T4", "memory": "15GiB"}]},
     r"gpus\[0\]: key 'capability'"),
    ({"cpu_count": 4, "ram": "8GB", "gpus": [{"memory": "15GiB", "capability": [7, 5]}]},
     r"gpus\[0\]: missing key 'name'"),
    ({"cpu_count": 4, "ram": "8GB", "cores": 3}, "unknown key\\(s\\) 'cores'"),
    ({"cpu_count": 2, "usable_cpus": 3, "ram": "8GB"}, "usable_cpus"),
])
def test_bad_specs_name_file_and_key(spec: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        hardware_from_spec(spec, "target.json")
    assert "target.json" in str(info.value)


def test_spec_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text('{"cpu_count": 4, "ram"')
    with pytest.raises(UserError, match="spec.json: hardware spec is truncated"):
        load_spec(bad)


@pytest.mark.parametrize("spec, expect", [
    ("kaggle-t4x2", {"devices": 2, "strategy": "ddp", "precision": "16-mixed"}),
    ("kaggle-p100", {"devices": 1, "strategy": "auto", "precision": "16-mixed"}),
    ("colab-t4", {"devices": 1, "precision": "16-mixed"}),
    ("cpu-2core", {"devices": 1, "precision": "32-true", "strategy": "auto"}),
])
def test_plan_shipped_specs_from_a_recorded_probe(recorded: Any, spec: str,
                                                  expect: dict) -> None:
    hw, name = load_spec(SPECS / f"{spec}.json")
    assert name == spec
    profile = plan_profile(hw, source=recorded, name=name)
    s = profile.settings
    assert {k: getattr(s, k) for k in expect} == expect
    assert profile.kind == "plan"
    # Nothing in a plan claims to be measured on the target.
    assert "measured" not in profile.sources.values()
    assert profile.sources["batch_size"] == "predicted"
    assert profile.workload == recorded.workload
    # The memory of the chosen batch is predicted under the target's budget.
    peak = profile.details["model_predicted_peak_bytes"]
    if hw.gpus:
        assert peak <= min(g.memory_bytes for g in hw.gpus) * 0.9
    assert s.effective_batch_size == s.batch_size * s.devices * s.accumulate_grad_batches >= 16


def test_bigger_gpu_gets_a_bigger_batch_or_resolution(recorded: Any) -> None:
    small = plan_profile(hardware_from_spec({"cpu_count": 4, "ram": "30GB", "gpus": [
        {"name": "T4", "memory": "15GiB", "capability": [7, 5]}]}), source=recorded)
    big = plan_profile(hardware_from_spec({"cpu_count": 4, "ram": "30GB", "gpus": [
        {"name": "A100", "memory": "80GiB", "capability": [8, 0]}]}), source=recorded)
    assert (big.settings.reduce_ratio, big.settings.batch_size) > \
        (small.settings.reduce_ratio, small.settings.batch_size)
    assert big.settings.precision == "bf16-mixed"


def test_more_cores_predict_more_map_processes(recorded: Any) -> None:
    few = plan_profile(hardware_from_spec({"cpu_count": 2, "ram": "64GB"}), source=recorded)
    many = plan_profile(hardware_from_spec({"cpu_count": 16, "ram": "64GB"}), source=recorded)
    assert few.settings.num_proc <= 2 < many.settings.num_proc <= 16
    assert many.sources["num_proc"] == "predicted"


def test_plan_from_the_workload_estimate_alone() -> None:
    hw = hardware_from_spec({"cpu_count": 4, "ram": "16GB", "gpus": [
        {"name": "Tesla T4", "memory": "15GiB", "capability": [7, 5]}]})
    profile = plan_profile(hw, workload=FakeWorkload())
    assert profile.measurements.estimates            # the table travels with the profile
    assert profile.workload["fingerprint"] == FakeWorkload().fingerprint()
    assert profile.sources["batch_size"] == "predicted"
    assert "estimate" in profile.reasons["batch_size"]


def test_plan_nothing_fits(recorded: Any) -> None:
    hw = hardware_from_spec({"cpu_count": 2, "ram": "2GB"})
    with pytest.raises(NothingFitsError, match="would fit"):
        plan_profile(hw, source=recorded)


def test_plan_without_anything_to_plan_from() -> None:
    with pytest.raises(UserError, match="--from PROFILE"):
        plan_profile(hardware_from_spec({"cpu_count": 2, "ram": "8GB"}))


def test_shipped_profiles_are_valid_plans() -> None:
    shipped = sorted((SPECS.parent).glob("*.json"))
    names = {p.stem for p in shipped}
    # A missing shipped profile is a failure, not a skip: the README promises these four.
    missing = {"kaggle-t4x2", "kaggle-p100", "colab-t4", "cpu-2core"} - names
    assert not missing, f"shipped profiles missing from profiles/: {sorted(missing)}"
    for path in shipped:
        profile = load_profile(path)
        if path.stem in ("kaggle-t4x2", "kaggle-p100", "colab-t4", "cpu-2core"):
            assert profile.kind == "plan" and "measured" not in profile.sources.values()
            spec = json.loads((SPECS / f"{path.stem}.json").read_text())
            assert len(profile.hardware.gpus) == (spec.get("gpu_count") or len(spec["gpus"]))
