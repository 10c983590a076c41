"""What a real probe promises to carry into its profile, stage by stage: one home for the
end-to-end probe test (tests/autotune/test_probe_cli.py) and the recorded fixture's test
(tests/autotune/test_fixtures.py). A stage whose results stopped reaching `Measurements`
would let `decide` fall back to its rules; every check here then fails."""
from __future__ import annotations

import pytest

from autotune.decide.precision import short
from autotune.profile import Profile
from autotune.staff import DEFAULT_STAFF_SPACE_PX, ratio_for_staff_space


def assert_every_stage_reached_the_profile(profile: Profile,
                                           staff_target_px: float = DEFAULT_STAFF_SPACE_PX
                                           ) -> None:
    """map -> staff -> step (precision x threads) -> model -> loader -> loop, each seen in the
    measurements and in the decision it feeds (source `measured`, its figures in the reason)."""
    m, sources, reasons = profile.measurements, profile.sources, profile.reasons
    # map: num_proc and writer_batch_size come from timed trials.
    assert m.map_trials and all(not t.stalled for t in m.map_trials)
    assert sources["num_proc"] == sources["writer_batch_size"] == "measured"
    # step, precision: every candidate timed, and every candidate's rate in the reason.
    precision_ok = [t for t in m.precision_trials if t.samples_per_s and not t.oom]
    assert len({t.precision for t in precision_ok}) >= 2, m.precision_trials
    assert sources["precision"] == "measured", reasons["precision"]
    for t in precision_ok:
        assert f"{short(t.precision)} {t.samples_per_s:.3g} samples/s" in reasons["precision"]
    assert profile.settings.precision == max(precision_ok, key=lambda t: t.samples_per_s).precision
    # step, threads: every count timed, each rate in the reason.
    thread_ok = [t for t in m.thread_trials if t.samples_per_s and not t.oom]
    assert thread_ok and sources["num_threads"] == "measured", reasons["num_threads"]
    for t in thread_ok:
        assert f"{t.num_threads}: {t.samples_per_s:.3g}" in reasons["num_threads"]
    assert profile.settings.num_threads in {t.num_threads for t in thread_ok}
    # staff: the space measured, the ratio it gives is where the model was measured and what
    # the reduce ratio's reason names.
    assert m.staff_space_px and m.staff_images, "the staff space did not reach the profile"
    legible = ratio_for_staff_space(m.staff_space_px, staff_target_px)
    assert f"staff space {m.staff_space_px:.1f} px" in reasons["reduce_ratio"]
    assert f"ratio {legible:.3g}" in reasons["reduce_ratio"]
    assert max(t.reduce_ratio for t in m.model_trials) == pytest.approx(legible, abs=1e-3)
    assert profile.settings.reduce_ratio <= legible + 1e-9
    # model and loader: the batch and the workers come from timed trials.
    assert any(not t.oom and t.error is None for t in m.model_trials)
    assert sources["batch_size"] == "measured"
    assert m.loader_trials and sources["num_workers"] == "measured"
    assert m.estimates
    # loop: threads, workers and batch come from the loader + step cells timed together, every
    # cell's rate is in the reason, and the settings are one of the cells.
    loop_ok = [t for t in m.loop_trials if t.samples_per_s and t.error is None]
    assert loop_ok, f"the loop stage did not reach the profile: {m.loop_trials}"
    for key in ("num_threads", "num_workers"):
        assert sources[key] == "measured" and "training loop timed as it runs" in reasons[key]
    for t in loop_ok:      # a cell at another precision than the step stage's names it
        cell = f"{t.num_threads or 'torch'}x{t.num_workers}@{t.batch_size}"
        assert any(f"{cell}{p}: {t.samples_per_s:.3g}" in reasons["num_workers"]
                   for p in ("", f" {t.precision}")), (cell, reasons["num_workers"])
    s = profile.settings
    assert (s.num_threads, s.num_workers, s.batch_size) in \
        {(t.num_threads, t.num_workers, t.batch_size) for t in loop_ok}
