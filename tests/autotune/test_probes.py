"""Probes: a stalled map is caught by the watchdog, an OOM ends a batch ladder, budgets and
deadlines hold, and the fits extrapolate the way the decisions assume."""
from __future__ import annotations

import math
import time

import psutil
import pytest

from autotune.fits import fit_map_peak, fit_trials
from autotune.probes.loader import probe_loader, worker_counts
from autotune.probes.map import probe_map, run_map_trial, trial_grid
from autotune.probes.model import probe_model
from autotune.records import MapTrial, ModelTrial
from workload_fakes import FakeWorkload


_BASELINE_PIDS: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before_the_test():
    # Processes that outlive any one test by design (multiprocessing's fork server and
    # resource tracker, started by an earlier preparation in the same session) are not ours.
    _BASELINE_PIDS.clear()
    _BASELINE_PIDS.update(c.pid for c in psutil.Process().children(recursive=True))
    yield


def _no_children_left() -> bool:
    return not [c for c in psutil.Process().children(recursive=True)
                if c.pid not in _BASELINE_PIDS and c.is_running()
                and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(60)
def test_stalled_map_is_detected_within_the_watchdog_time_and_killed(tmp_path):
    marker = tmp_path / "stalled"
    work = FakeWorkload(rows=20, stall_after=5, stall_marker=str(marker))
    sample = work.raw_sample(20)
    started = time.monotonic()
    trial = run_map_trial(sample, work.map_spec(1.0), num_proc=1, writer_batch_size=4,
                          stall_s=1.0, timeout_s=30)
    elapsed = time.monotonic() - started
    assert marker.exists(), "the map never reached the stalling row"
    assert trial.stalled
    assert "no progress for 1 s" in trial.error and "5/20 rows" in trial.error
    assert trial.rows_per_s is None and trial.seconds is None
    # The stall is called, not the 30 s trial timeout: fork and the first rows take well under
    # a second, and a loaded box gets slack beyond that.
    assert elapsed < 30 / 2
    assert _no_children_left()


@pytest.mark.timeout(60)
def test_stalled_map_in_worker_processes_is_killed_with_its_tree(tmp_path):
    work = FakeWorkload(rows=20, stall_after=2)
    trial = run_map_trial(work.raw_sample(20), work.map_spec(1.0), num_proc=2,
                          writer_batch_size=4, stall_s=1.5, timeout_s=30)
    assert trial.stalled
    assert _no_children_left()


@pytest.mark.timeout(120)
def test_map_probe_measures_and_extrapolates_to_the_full_dataset():
    work = FakeWorkload(rows=24, height=120, width=480)
    result = probe_map(work, usable_cpus=2, sample_rows=24)
    assert [(t.num_proc, t.writer_batch_size) for t in result.trials] == \
        trial_grid(2, 24)
    assert all(not t.stalled and t.error is None for t in result.trials)
    assert all(t.rows_per_s and t.rows_per_s > 0 for t in result.trials)
    # A PNG row of 120x480 noise is about 58 KB on disk; the cache holds every row once.
    assert 120 * 480 * 0.8 < result.cache_bytes_per_row < 120 * 480 * 1.5
    assert result.full_rows == work.dataset_rows()
    small, big = result.predict(1, 10), result.predict(1, 1000)
    assert big.peak_rss_bytes > small.peak_rss_bytes            # more buffered rows, more RAM
    assert result.predict(2, 10).peak_rss_bytes > small.peak_rss_bytes
    assert small.cache_bytes == pytest.approx(result.cache_bytes_per_row * work.dataset_rows())
    rate = max(t.rows_per_s for t in result.trials if t.num_proc == 1)
    assert small.seconds >= work.dataset_rows() / rate
    assert _no_children_left()


def _mt(num_proc: int, wbs: int, peak_mib: float, rows: int = 48,
        base_mib: float = 200) -> MapTrial:
    return MapTrial(num_proc, wbs, rows, 1.0, 10.0, int(peak_mib * 2**20), int(base_mib * 2**20),
                    None, 1000.0)


@pytest.mark.parametrize("trials, base, worker, row", [
    # worker 50 MiB, 1 MiB per buffered row; num_proc 2 buffers at most 24 rows per shard.
    ([_mt(1, 4, 254), _mt(1, 24, 274), _mt(2, 24, 200 + 2 * (50 + 24))], 200, 50, 1.0),
    # one writer_batch_size only: no row cost, the worker takes all the growth.
    ([_mt(1, 24, 300)], 200, 100, None),
    # RSS noise makes the bigger buffer look smaller: clamped, never a negative cost.
    ([_mt(1, 4, 260), _mt(1, 24, 258)], 200, 60, 0.0),
    # a stalled trial says nothing about the steady state.
    ([_mt(1, 24, 300), MapTrial(2, 24, 48, None, None, 10**10, 200 * 2**20, None, None,
                                stalled=True)], 200, 100, None),
])
def test_peak_model_fit(trials, base, worker, row):
    b, w, r = fit_map_peak(trials)
    assert b == pytest.approx(base * 2**20)
    assert w == pytest.approx(worker * 2**20, rel=1e-6)
    assert (r is None) == (row is None)
    if row is not None:
        assert r == pytest.approx(row * 2**20, rel=1e-6, abs=1)


@pytest.mark.parametrize("cpus, rows, grid", [
    (1, 64, [(1, 10), (1, 64)]),
    (2, 64, [(1, 10), (1, 64), (2, 32)]),
    (6, 64, [(1, 10), (1, 64), (2, 32), (4, 16), (6, 11)]),
    (64, 64, [(1, 10), (1, 64), (2, 32), (4, 16), (8, 10)]),     # capped at 8 processes
    (2, 8, [(1, 10), (2, 10)]),                                   # tiny sample: one size
])
def test_trial_grid_stays_within_the_cores(cpus, rows, grid):
    assert trial_grid(cpus, rows) == grid


@pytest.mark.timeout(60)
def test_oom_above_a_batch_size_ends_the_ladder_there():
    work = FakeWorkload(height=32, width=64, oom_above_batch=2)
    result = probe_model(work, batch_sizes=(1, 2, 4, 8, 16), reduce_ratios=(1.0, 0.5))
    sizes = [(t.batch_size, t.oom) for t in result.trials]
    assert sizes == [(1, False), (2, False), (4, True)]      # 8 and 16 never tried
    assert "out of memory" in result.trials[-1].error
    fit = result.fit_for(1.0)
    assert fit is not None and fit.points == 2
    assert len(result.fits) == 1                                # ratio 1.0 fits: no step down

    # ... and the decision built on these trials stays below the batch that went OOM.
    from autotune.decide import decide
    from autotune.records import HardwareInfo, Measurements
    hw = HardwareInfo(cpu_count=4, usable_cpus=4, ram_bytes=64 * 2**30,
                      ram_available_bytes=60 * 2**30, shm_bytes=8 * 2**30,
                      disk_free_bytes=100 * 2**30, fingerprint="test")
    decision = decide(hw, Measurements.from_dict({"model": result.to_dict()}))
    assert decision.settings.batch_size < 4
    assert "OOM" in decision.reasons["batch_size"]


@pytest.mark.timeout(60)
def test_batch_one_oom_walks_down_the_reduce_ladder():
    class BigImages(FakeWorkload):
        def training_loss(self, model, batch):
            if batch.shape[-1] > 40:
                raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return super().training_loss(model, batch)

    work = BigImages(height=32, width=64)
    result = probe_model(work, batch_sizes=(1, 2), reduce_ratios=(1.0, 0.75, 0.5))
    assert [(t.reduce_ratio, t.batch_size, t.oom) for t in result.trials] == [
        (1.0, 1, True), (0.75, 1, True), (0.5, 1, False), (0.5, 2, False)]
    assert [f.reduce_ratio for f in result.fits] == [0.5]
    assert any("batch 1 does not fit at reduce_ratio 1" in n for n in result.notes)


@pytest.mark.timeout(60)
def test_a_batch_predicted_above_the_budget_is_not_tried():
    work = FakeWorkload(height=64, width=256)
    # estimate_memory of the fake grows by 2 MiB per sample; a 5 MiB budget stops the ladder
    # once two measured points predict more than that.
    result = probe_model(work, batch_sizes=(1, 2, 4, 8, 16, 32), memory_budget_bytes=5 * 2**20)
    assert all(not t.oom for t in result.trials)
    assert result.trials[-1].batch_size < 32
    assert any("not tried" in n for n in result.notes)


@pytest.mark.timeout(60)
def test_model_probe_keeps_to_its_deadline():
    work = FakeWorkload(height=64, width=256)
    result = probe_model(work, batch_sizes=(1, 2, 4, 8, 16, 32, 64),
                         deadline=time.monotonic() - 1)
    assert len(result.trials) == 1          # one point is always taken, nothing after


@pytest.mark.timeout(60)
def test_cpu_memory_grows_with_batch_and_fits_a_line():
    work = FakeWorkload(height=128, width=512)
    result = probe_model(work, batch_sizes=(1, 4, 16))
    peaks = [t.peak_memory_bytes for t in result.trials]
    assert all(p is not None and p > 0 for p in peaks)
    assert peaks[-1] > peaks[0]
    fit = result.fit_for(1.0)
    assert fit.per_sample_bytes > 0
    # 16 samples of two 8-channel float maps are 33 MiB of activations at least.
    assert peaks[-1] > 16 * 8 * 128 * 512 * 4


@pytest.mark.parametrize("trials, fixed, per_sample", [
    ([(1, 110), (2, 120), (4, 140)], 100, 10),
    # One batch size cannot split fixed from per-sample memory: the safe reading, through the
    # origin (an all-fixed line would predict 110 at any batch).
    ([(1, 110)], 0, 110),
    ([(1, 110), (2, 100)], 105, 0),        # noise: a negative slope is clamped to 0
])
def test_memory_fit(trials, fixed, per_sample):
    records = [ModelTrial(1.0, b, 8, 8, 4, "cpu", "32-true", 0.1, 10.0, m, None)
               for b, m in trials]
    fit = fit_trials(records, 1.0)
    assert fit.per_sample_bytes == pytest.approx(per_sample)
    assert fit.predict(1) == pytest.approx(fixed + per_sample) if per_sample else True
    if per_sample:
        assert fit.fixed_bytes == pytest.approx(fixed)


@pytest.mark.parametrize("cpus, counts", [(1, [0, 1]), (2, [0, 1, 2]), (6, [0, 1, 2, 4, 6]),
                                          (64, [0, 1, 2, 4, 8])])
def test_worker_counts(cpus, counts):
    assert worker_counts(cpus) == counts


@pytest.mark.timeout(60)
def test_loader_probe_times_each_worker_count():
    work = FakeWorkload(height=32, width=64)
    result = probe_loader(work, batch_size=4, usable_cpus=2, batches=6, model_step_s=None)
    assert [t.num_workers for t in result.trials] == [0, 1, 2]
    assert all(t.error is None and t.batches_per_s > 0 for t in result.trials)
    assert work.loaders_built == [(4, 0), (4, 1), (4, 2)]
    assert _no_children_left()


@pytest.mark.timeout(60)
def test_loader_probe_stops_once_the_model_is_fed_twice_over():
    work = FakeWorkload(height=32, width=64)
    result = probe_loader(work, batch_size=4, usable_cpus=8, batches=6, model_step_s=10.0)
    assert [t.num_workers for t in result.trials] == [0, 1]
    assert math.isclose(result.model_batches_per_s, 0.1)


# -- the real SMT workload, debug preset, tiny rendered dataset --------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_probes_on_the_debug_preset(synth_raw_dir):
    from autotune.workload import load_workload
    work = load_workload("smt", data=str(synth_raw_dir), preset="debug")

    mapped = probe_map(work, usable_cpus=2, sample_rows=8, reduce_ratio=0.3)
    assert mapped.full_rows == 24 and mapped.sample_rows == 8
    assert all(t.error is None and not t.stalled and t.rows_per_s > 0 for t in mapped.trials)
    # A clean system PNG at 0.3 scale is a few KB to a few tens of KB.
    assert 500 < mapped.cache_bytes_per_row < 200_000
    assert mapped.predict(1, 100).seconds > 0

    model = probe_model(work, reduce_ratios=(0.3,), batch_sizes=(1, 2), precision="32-true")
    assert [(t.batch_size, t.oom) for t in model.trials] == [(1, False), (2, False)]
    for t in model.trials:
        shape = work.largest_shape(0.3)
        assert (t.height, t.width, t.seq_len) == (shape.height, shape.width, shape.seq_len)
        assert t.peak_memory_bytes > 0 and t.estimated_memory_bytes > 0 and t.step_s > 0
    assert model.num_params == work.num_params()

    loader = probe_loader(work, batch_size=2, usable_cpus=2, reduce_ratio=0.3, batches=3,
                          num_workers=(0, 1), model_step_s=model.trials[-1].step_s)
    assert [t.num_workers for t in loader.trials] == [0, 1]
    assert all(t.error is None and t.samples_per_s > 0 for t in loader.trials)
    assert _no_children_left()


@pytest.mark.timeout(60)
def test_on_cpu_a_batch_one_estimated_above_the_budget_is_not_tried():
    # The fake's estimate is ~2 MiB per sample at 64x256 and a quarter of that at half size:
    # on CPU exceeding RAM brings the OOM killer, not an exception, so it must not be tried.
    work = FakeWorkload(height=64, width=256)
    result = probe_model(work, device="cpu", reduce_ratios=(1.0, 0.5), batch_sizes=(1, 2),
                         memory_budget_bytes=2**20)
    assert [(t.reduce_ratio, t.batch_size) for t in result.trials] == [(0.5, 1)]
    assert any("reduce_ratio 1: batch 1 not tried" in n for n in result.notes)
    assert any("reduce_ratio 0.5: batch 2 not tried" in n for n in result.notes)
