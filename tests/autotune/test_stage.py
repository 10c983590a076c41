"""A curriculum stage's micro-batch from the probe's memory line at the stage's image size."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from autotune.decide.stage import StageMemory, batch_at_size
from autotune.records import ModelTrial

MIB = 2**20
# 100 MiB fixed + 50 MiB per sample measured at 200x1000 px, 1 GiB a step may use.
LINE = StageMemory(100 * MIB, 50 * MIB, 200, 1000, 1024 * MIB)


@pytest.mark.parametrize("height, width, cap, batch", [
    (200, 1000, 8, 8),        # the measured size: (1024 - 100) / 50 = 18 fit, the loader's 8
    (800, 1000, 8, 4),        # 4x the pixels: 200 MiB a sample, 4 fit
    (1600, 1000, 8, 2),       # 8x: 2 fit
    (8000, 1000, 8, 1),       # 40x: not even 1 is predicted to fit; 1 and the OOM back-off
])
def test_the_batch_follows_the_pixels(height, width, cap, batch) -> None:
    pick = batch_at_size(LINE, height, width, cap)
    assert pick.batch == batch
    assert pick.pixels_ratio == pytest.approx(height * width / (200 * 1000), rel=1e-3)
    if batch > 1:
        assert pick.predicted_peak_bytes <= LINE.budget_bytes
    else:
        assert "OOM back-off" in pick.reason


def test_the_line_comes_from_a_probe_profile_or_not_at_all() -> None:
    profile = {"details": {"memory_fit": {"reduce_ratio": 0.5, "fixed_bytes": 1e8,
                                          "per_sample_bytes": 5e7, "source": "measured"},
                           "model_memory_budget_bytes": 2**30},
               "measurements": {"model": {"trials": [asdict(ModelTrial(
                   0.5, 1, 240, 1200, 64, "cpu", "32-true", 0.2, 5.0, 10**8, 10**8))]}}}
    line = StageMemory.from_profile(profile)
    assert (line.height, line.width, line.budget_bytes) == (240, 1200, 2**30)
    assert StageMemory.from_profile({"details": {}}) is None
    profile["measurements"]["model"]["trials"][0]["reduce_ratio"] = 1.0   # another ratio
    assert StageMemory.from_profile(profile) is None


@pytest.mark.parametrize("field, kwargs", [
    ("height", dict(height=0)), ("budget_bytes", dict(budget_bytes=-1)),
    ("per_sample_bytes", dict(per_sample_bytes=0)),
])
def test_a_bad_line_names_its_field(field, kwargs) -> None:
    values = dict(fixed_bytes=1.0, per_sample_bytes=1.0, height=1, width=1, budget_bytes=1)
    with pytest.raises(ValueError, match=field):
        StageMemory(**{**values, **kwargs})
