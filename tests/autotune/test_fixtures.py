"""Fixture profiles say what they are: a synthetic one is marked so and claims nothing
measured; a recorded probe says when, on what and by which command it was recorded, and
carries every stage the probe runs.

Re-record profile-recorded-cpu-debug.json (about 40 s on 2 cores, the embedded dataset built
once into the cache first): run its `provenance["command"]` from the repository root with
`--out tests/autotune/fixtures/profile-recorded-cpu-debug.json` added, e.g.
    PYTHONPATH=. timeout 600 python -m autotune probe --preset debug --time-budget 30 \
        --name recorded-cpu-debug --out tests/autotune/fixtures/profile-recorded-cpu-debug.json
The probe writes the new provenance (when, machine, platform, torch) itself."""
from __future__ import annotations

from pathlib import Path

import pytest
from probe_checks import assert_every_stage_reached_the_profile

from autotune.profile import load_profile

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("path", sorted(FIX.glob("*.json")), ids=lambda p: p.name)
def test_every_fixture_profile_declares_its_provenance(path: Path) -> None:
    profile = load_profile(path)
    prov = profile.provenance
    if profile.kind == "synthetic":
        assert prov.get("synthetic") is True and prov.get("generator")
        assert (FIX.parents[2] / prov["generator"]).is_file()
        assert "measured" not in profile.sources.values()
    else:
        assert profile.kind == "probe" and not prov.get("synthetic")
        assert prov["command"].startswith("python -m autotune probe")
        assert prov["recorded_at"] and prov["machine"]
        assert prov["hardware_fingerprint"] == profile.hardware_fingerprint
        assert "measured" in profile.sources.values()


@pytest.mark.parametrize("path", sorted(FIX.glob("profile-recorded-*.json")), ids=lambda p: p.name)
def test_a_recorded_probe_carries_every_stage(path: Path) -> None:
    # A fixture recorded before a stage existed (precision by rule, empty step lists) fails.
    assert_every_stage_reached_the_profile(load_profile(path))
