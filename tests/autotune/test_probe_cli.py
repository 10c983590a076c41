"""The probe end to end: `python -m autotune probe` on the tiny rendered dataset with the debug
preset writes a valid profile and prints every setting with its reason; `--profile auto`
probes once for real, then reuses what it saved."""
from __future__ import annotations

import contextlib
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from probe_checks import assert_every_stage_reached_the_profile

from autotune.cli import main as autotune_main
from autotune.hardware import inventory
from autotune.probe import probe_profile
from autotune.profile import Profile, load_profile
from autotune.resolve import resolve_profile
from autotune.settings import Settings
from smt.paths import ENV_CACHE


# The probe's time budget here: long enough that every stage, the loader included, starts
# before its deadline on a loaded 2-core box; short enough for one shared run.
BUDGET_S = 20.0


@dataclass
class ProbeRun:
    profile: Profile
    printed: str
    path: Path
    data: Path


@pytest.fixture(scope="module")
def probe_run(synth_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ProbeRun:
    """One real `python -m autotune probe` on the tiny rendered dataset, debug preset, shared
    by the tests below (a probe is tens of seconds)."""
    out = tmp_path_factory.mktemp("probe") / "p.json"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv(ENV_CACHE, str(tmp_path_factory.mktemp("probe-cache")))
        mp.setenv("COLUMNS", "200")
        code = autotune_main(["probe", "--data", str(synth_raw_dir), "--preset", "debug",
                              "--time-budget", f"{BUDGET_S:g}", "--name", "tiny",
                              "--out", str(out)])
    assert code == 0, printed.getvalue()[-2000:]
    return ProbeRun(load_profile(out), printed.getvalue(), out, synth_raw_dir)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_probe_cli_writes_a_profile_and_explains_every_setting(probe_run: ProbeRun) -> None:
    profile, printed, out = probe_run.profile, probe_run.printed, probe_run.path
    assert profile.name == "tiny" and profile.kind == "probe"
    assert profile.hardware_fingerprint == inventory().fingerprint
    assert profile.workload["model"] == "debug" and profile.workload["dataset"] == str(probe_run.data)
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
    # Keeps to its budget: a trial in flight may finish past it, and on a loaded box runs
    # slower, hence the slack; the default budget (90 s) would still be far outside.
    assert 0 < seconds <= BUDGET_S * 2.5
    assert f"probe took {seconds:.1f} s" in printed
    assert json.loads(out.read_text())["schema"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_probe_stage_reaches_the_profile(probe_run: ProbeRun) -> None:
    """precision and threads measured with every candidate's rate in the reason, the staff
    space and its ratio, the map, model and loader trials: none left to the rules."""
    assert_every_stage_reached_the_profile(probe_run.profile)
    # The saved file carries them too (what `--profile auto` and `plan` read back).
    saved = json.loads(probe_run.path.read_text())["measurements"]
    assert saved["step"]["precision_trials"] and saved["step"]["thread_trials"]
    assert saved["staff"]["staff_space_px"] == probe_run.profile.measurements.staff_space_px


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
    # Keeps to its budget, with the slack a trial in flight on a loaded box needs.
    assert first.profile["details"]["probe_seconds"] <= 10 * 2.5
