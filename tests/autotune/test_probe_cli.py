"""The probe end to end: `python -m autotune probe` on the tiny rendered dataset with the debug
preset writes a valid profile and prints every setting with its reason; `--profile auto`
probes once for real, then reuses what it saved."""
from __future__ import annotations

import functools
import json

import pytest

from autotune.cli import main as autotune_main
from autotune.hardware import inventory
from autotune.probe import probe_profile
from autotune.profile import load_profile
from autotune.resolve import resolve_profile
from autotune.settings import Settings


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_probe_cli_writes_a_profile_and_explains_every_setting(synth_raw_dir, tmp_path, capsys):
    out = tmp_path / "p.json"
    code = autotune_main(["probe", "--data", str(synth_raw_dir), "--preset", "debug",
                          "--time-budget", "15", "--name", "tiny", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    profile = load_profile(out)
    assert profile.name == "tiny" and profile.kind == "probe"
    assert profile.hardware_fingerprint == inventory().fingerprint
    assert profile.workload["model"] == "debug" and profile.workload["dataset"] == str(synth_raw_dir)
    for key in Settings.__dataclass_fields__:
        assert key in printed and profile.reasons.get(key), key
    m = profile.measurements
    assert m.map_trials and m.model_trials and m.loader_trials and m.estimates
    assert all(not t.stalled for t in m.map_trials)
    # Nothing chosen above what was seen to work.
    ok_batches = [t.batch_size for t in m.model_trials if not t.oom and t.error is None]
    assert profile.settings.batch_size <= 2 * max(ok_batches)
    assert profile.settings.num_proc <= max(1, int(inventory().usable_cpus))
    seconds = profile.details["probe_seconds"]
    assert 0 < seconds <= 15 * 1.5          # keeps to its budget (a trial in flight may finish)
    assert f"probe took {seconds:.1f} s" in printed
    assert json.loads(out.read_text())["schema"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_profile_auto_probes_for_real_then_reuses(synth_raw_dir, tmp_path):
    said: list[str] = []
    probe = functools.partial(probe_profile, time_budget_s=10)
    first = resolve_profile("auto", data=str(synth_raw_dir), preset="debug",
                            profiles_dir=tmp_path, say=said.append, probe=probe)
    assert first.probed and first.path.exists() and first.path.parent == tmp_path
    assert any("probing" in s for s in said)
    second = resolve_profile("auto", data=str(synth_raw_dir), preset="debug",
                             profiles_dir=tmp_path, say=said.append, probe=probe)
    assert not second.probed and second.path == first.path
    assert second.settings == first.settings
    assert first.profile["details"]["probe_seconds"] <= 10 * 1.5
