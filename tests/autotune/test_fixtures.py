"""Fixture profiles say what they are: a synthetic one is marked so and claims nothing
measured; a recorded probe says when, on what and by which command it was recorded."""
from __future__ import annotations

from pathlib import Path

import pytest

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
