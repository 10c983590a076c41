"""The one memory line: what a single batch size gives to each reader, and the map peak model
the probe and the decision share."""
from __future__ import annotations

import pytest

from autotune.decide import estimate_from_table
from autotune.fits import MapCostModel, bound_memory, fit_memory
from autotune.fits import fit_trials
from autotune.records import MemoryEstimate, ModelTrial


def test_one_batch_size_has_no_slope_and_the_bound_goes_through_the_origin() -> None:
    pts = [(2, 200.0), (2, 210.0)]
    assert fit_memory(pts, 1.0) is None
    line = bound_memory(pts, 1.0)
    assert line is not None and line.fixed_bytes == 0.0
    assert line.per_sample_bytes == pytest.approx(105.0)    # the worse of the two readings
    assert line.predict(8) >= 4 * 210.0                      # never under the measurement, scaled
    assert bound_memory([], 1.0) is None


def test_probe_fits_and_the_estimate_table_read_one_point_the_same_way() -> None:
    trial = ModelTrial(1.0, 2, 8, 8, 4, "cpu", "32-true", 0.1, 20.0, 200, None)
    est = estimate_from_table([MemoryEstimate(1.0, 2, 8, 8, 4, "32-true", 200)])
    fit = fit_trials([trial], 1.0)
    assert est is not None and fit is not None
    for batch in (1, 2, 8):
        assert est(batch, 1.0, "32-true") == int(fit.predict(batch))


def test_two_batch_sizes_recover_the_line() -> None:
    fit = bound_memory([(1, 5.0), (2, 7.0), (4, 11.0)], 1.0)
    assert fit is not None and fit.fixed_bytes == pytest.approx(3.0)
    assert fit.per_sample_bytes == pytest.approx(2.0)


def test_map_peak_caps_the_buffer_at_a_workers_shard() -> None:
    cost = MapCostModel(base=100.0, worker=10.0, row=1.0)
    assert cost.peak(2, 50) == 100 + 2 * (10 + 50)
    assert cost.peak(2, 50, rows=40) == 100 + 2 * (10 + 20)   # 20 rows per worker at most
