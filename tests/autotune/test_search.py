"""Optuna search: trials run in child processes, are rejected, killed, resumed and shared.

The trainer is a fake (tests/autotune/search_fixtures/fake_train.py) that takes smt.train's
flags and writes summary.json from a formula, so these tests exercise the search machinery
(isolation, limits, storage) in seconds; the real smt.train run is the slow test at the end.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from autotune.records import MemoryFit, ModelTrial
from autotune.search import cli
from autotune.feasible import (Feasibility, FitPredictor, fit_line, fits_from_profile,
                                      offset_from_profile)
from autotune.units import parse_size
from autotune.search.objectives import make_objective
from autotune.search.runner import ProgressReader
from autotune.search.space import SEARCHED, make_point, space_for
from autotune.search.storage import count_trials, mask_url
from autotune.search.searchconfig import SearchConfig
from autotune.search.study import run_study, steps_for
from autotune.settings import Settings

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "autotune" / "search_fixtures" / "fake_train.py"
FAKE_CMD = f"{sys.executable} {FAKE}"

PROFILE = {
    "schema": 1, "name": "probe-here", "created": "2025-01-01T00:00:00+00:00",
    "hardware": {"fingerprint": "hw", "cpu_count": 2, "ram_bytes": 8 * 2**30, "shm_bytes": None,
                 "disk_free_bytes": None, "gpus": []},
    "workload": {"fingerprint": "wl", "dataset": "default", "model": "debug"},
    "settings": {"num_proc": 1, "writer_batch_size": 100, "batch_size": 4, "reduce_ratio": 0.5,
                 "accumulate_grad_batches": 2, "num_workers": 1, "precision": "bf16-mixed",
                 "strategy": "auto", "devices": 1, "effective_batch_size": 8},
    "reasons": {},
    "measurements": {"model": {"trials": [asdict(ModelTrial(
        reduce_ratio=0.5, batch_size=b, height=512, width=1024, seq_len=256, device="cuda:0",
        precision="bf16-mixed", step_s=0.1, samples_per_s=10.0 * b,
        peak_memory_bytes=None if oom else 2**30 + b * 2**29, estimated_memory_bytes=None,
        oom=oom)) for b, oom in ((1, False), (2, False), (4, False), (8, True))]}},
}


def search_argv(tmp_path: Path, *extra: str) -> list[str]:
    # The fake trainer ignores the data: no SMT workload to open (it would render the dataset).
    return ["--trainer", FAKE_CMD, "--workload", "none", "--run-dir", str(tmp_path / "run"),
            "--seed", "0", *extra]


def load(tmp_path: Path, name: str = "smt-throughput-default") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'run' / 'search.db'}")


def calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(log))
    monkeypatch.setenv("SMT_AUTOTUNE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.chdir(tmp_path)  # profiles/ and runs/ defaults land in the test folder
    return log


def config_for(tmp_path: Path, objective: str = "throughput", **kw) -> SearchConfig:
    defaults = dict(objective=make_objective(objective), space=space_for(objective, PROFILE),
                    run_dir=tmp_path / "run", trials=2, steps_per_trial=5, seed=0,
                    trainer=(sys.executable, str(FAKE)), trial_timeout_s=60)
    defaults.update(kw)
    return SearchConfig(**defaults)


# -- the search, end to end with the fake trainer ------------------------------------------

@pytest.mark.timeout(60)
def test_throughput_search_saves_a_profile_training_accepts(tmp_path, fake_env):
    out = tmp_path / "best.json"
    rc = cli.main(search_argv(tmp_path, "--trials", "3", "--save-profile", str(out)))
    assert rc == 0
    study = load(tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and len(calls(fake_env)) == 3
    profile = json.loads(out.read_text())
    assert profile["schema"] == 1 and profile["name"] == "best"
    settings = Settings.from_dict(profile["settings"])  # what smt.train --profile applies
    best = max(done, key=lambda t: t.value)
    assert settings.to_dict() == best.user_attrs["settings"]
    assert profile["measurements"]["search"]["trial"] == best.number
    # Each trial trained with its own settings, in its own folder, with its log kept.
    for t in done:
        launched = [c for c in calls(fake_env) if c["batch_size"] == t.params["batch_size"]
                    and c["num_workers"] == t.params["num_workers"]]
        assert launched
        assert (Path(t.user_attrs["trial_dir"]) / "trainer.log").exists()


@pytest.mark.timeout(60)
def test_infeasible_point_is_rejected_without_running(tmp_path, fake_env):
    fits = fits_from_profile(PROFILE)            # 1 GiB + 0.5 GiB per sample at ratio 0.5
    config = config_for(tmp_path, predictor=FitPredictor(fits), memory_budget_bytes=4 * 2**30,
                        enqueue=[{"batch_size": 8, "num_workers": 0},
                                 {"batch_size": 2, "num_workers": 0}])
    outcome = run_study(config)
    trials = outcome.study.get_trials()
    first = trials[0]
    assert first.state == TrialState.PRUNED and first.user_attrs["outcome"] == "rejected"
    assert first.constraints["memory"] == pytest.approx((2**30 + 8 * 2**29 - 4 * 2**30)
                                                        / (4 * 2**30))
    assert "trial_dir" not in first.user_attrs
    assert all(c["batch_size"] != 8 for c in calls(fake_env))    # never launched
    assert trials[1].params["batch_size"] == 2 and trials[1].state == TrialState.COMPLETE
    assert trials[1].constraints["memory"] < 0
    assert outcome.counts.finished == 2 and outcome.counts.rejected >= 1


@pytest.mark.timeout(60)
def test_nothing_fits_is_one_clear_error(tmp_path, fake_env, capsys):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps(PROFILE))
    rc = cli.entry(search_argv(tmp_path, "--from", str(profile), "--memory-budget", "100MiB",
                               "--trials", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "nothing fits" in err and "Traceback" not in err
    assert calls(fake_env) == []


@pytest.mark.timeout(60)
def test_hanging_trial_is_killed_with_its_children_and_search_goes_on(tmp_path, fake_env,
                                                                      monkeypatch):
    marker = tmp_path / "hung.pid"
    monkeypatch.setenv("FAKE_TRAIN_HANG_ONCE", str(marker))
    outcome = run_study(config_for(tmp_path, trials=2, trial_timeout_s=2.0))
    trials = outcome.study.get_trials()
    assert trials[0].state == TrialState.FAIL
    assert "training ran past the trial time limit" in trials[0].user_attrs["error"]
    assert 2.0 <= trials[0].user_attrs["elapsed_s"] < 15
    grandchild = int(marker.read_text())
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert outcome.counts.complete == 2 and outcome.counts.failed == 1


@pytest.mark.timeout(60)
def test_trial_stuck_before_training_is_killed_by_the_setup_limit(tmp_path, fake_env,
                                                                 monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_HANG_SETUP", "3")
    outcome = run_study(config_for(tmp_path, trials=1, trial_timeout_s=0.5, setup_timeout_s=1.5,
                                   enqueue=[{"batch_size": 3, "num_workers": 0}]))
    first = outcome.study.get_trials()[0]
    assert first.state == TrialState.FAIL and "had not started" in first.user_attrs["error"]
    assert 1.5 <= first.user_attrs["elapsed_s"] < 10
    # The training limit counts from run.json: a quick trial with a 0.5 s limit still completes.
    assert outcome.counts.complete == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("env, message", [
    ("FAKE_TRAIN_FAIL_BATCH", "exit 1): RuntimeError: fake trainer failure"),
    ("FAKE_TRAIN_OOM_BATCH", "out of memory: the trainer backed off to micro-batch 3"),
])
def test_crashed_or_oom_trial_is_failed_with_its_reason(tmp_path, fake_env, monkeypatch, env,
                                                        message):
    monkeypatch.setenv(env, "6")
    outcome = run_study(config_for(tmp_path, trials=1,
                                   enqueue=[{"batch_size": 6, "num_workers": 0}]))
    first = outcome.study.get_trials()[0]
    assert first.state == TrialState.FAIL and message in first.user_attrs["error"]
    assert outcome.counts.complete == 1


@pytest.mark.timeout(60)
def test_quality_prunes_a_hopeless_trial_and_stops_its_process(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_PROGRESS_S", "0.3")    # five validations, 1.5 s in all
    good = {"batch_size": 4, "effective_batch_size": 8, "reduce_ratio": 0.5, "lr": 3e-4}
    config = config_for(tmp_path, "quality", trials=3,
                        enqueue=[good, {**good, "lr": 2e-4}, {**good, "lr": 1e-5}])
    outcome = run_study(config)
    t = outcome.study.get_trials()
    assert [x.state for x in t[:2]] == [TrialState.COMPLETE] * 2
    assert t[2].state == TrialState.PRUNED and t[2].user_attrs["outcome"] == "pruned"
    # Stopped before its five validations: fewer reports, and less time than the two trials
    # that ran them all (same process start, so a loaded box slows both alike).
    assert 0 < len(t[2].intermediate_values) < 5       # the pruner saw its progress
    assert t[2].user_attrs["elapsed_s"] < min(x.user_attrs["elapsed_s"] for x in t[:2])
    assert outcome.counts.finished == 3


@pytest.mark.timeout(90)
def test_both_gives_a_pareto_front_plots_and_saves_a_chosen_point(tmp_path, fake_env):
    plots = tmp_path / "plots"
    rc = cli.main(search_argv(tmp_path, "--objective", "both", "--trials", "4", "--plot",
                              str(plots), "--save-profile", "pareto", "--steps-per-trial", "2"))
    assert rc == 0
    study = load(tmp_path, "smt-both-default")
    front = {t.number for t in study.best_trials}
    saved = json.loads((tmp_path / "profiles" / "pareto.json").read_text())
    assert saved["measurements"]["search"]["trial"] in front
    from autotune.outdir import OUT_MARKER       # the folder's "written by search --plot" mark
    written = [p for p in plots.iterdir() if p.name != OUT_MARKER]
    assert {p.name for p in written} == {"history_samples_s.png",
                                         "history_val_loss.png", "pareto_front.png"}
    assert all(p.stat().st_size > 5000 for p in written)
    # A chosen Pareto point; a trial that does not exist is a one-line error.
    pick = min(front)
    assert cli.main(search_argv(tmp_path, "--objective", "both", "--trials", "4",
                                "--save-profile", "mine", "--pick", str(pick))) == 0
    assert json.loads((tmp_path / "profiles" / "mine.json").read_text())[
        "measurements"]["search"]["trial"] == pick
    assert cli.entry(search_argv(tmp_path, "--objective", "both", "--trials", "4",
                                 "--save-profile", "x", "--pick", "99")) == 2


# -- interruption and sharing: real processes -----------------------------------------------

def _spawn(tmp_path: Path, trials: int, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.search", *search_argv(tmp_path, "--trials", str(trials),
                                                               "--heartbeat", "1")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)


def _wait_for(pred, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception:  # the database or the study does not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_search_killed_midway_resumes_to_the_asked_number(tmp_path, fake_env):
    proc = _spawn(tmp_path, 4, {"FAKE_TRAIN_SLEEP": "1.0"})
    try:
        # Trial folders appear only after the search created the tables: no race with it.
        _wait_for(lambda: (tmp_path / "run" / "trials").exists(), 60)
        _wait_for(lambda: count_trials(load(tmp_path)).complete >= 1
                  and count_trials(load(tmp_path)).running == 1, 60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # the search and its running trainer
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    before = count_trials(load(tmp_path))
    assert before.running == 1 and before.complete < 4
    rc = cli.main(search_argv(tmp_path, "--trials", "4", "--heartbeat", "1"))
    assert rc == 0
    after = count_trials(load(tmp_path))
    assert after.complete == 4 and after.running == 0 and after.failed == 1
    killed = load(tmp_path).get_trials(states=(TrialState.FAIL,))[0]
    assert "died" in killed.user_attrs["error"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_share_one_study(tmp_path, fake_env):
    env = {"FAKE_TRAIN_SLEEP": "0.7"}
    procs = [_spawn(tmp_path, 6, env)]
    _wait_for(lambda: (tmp_path / "run" / "trials").exists(), 30)  # one creates the tables
    procs.append(_spawn(tmp_path, 6, env))
    for p in procs:
        _, err = p.communicate(timeout=100)
        assert p.returncode == 0, err.decode()[-2000:]
    study = load(tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6             # a worker late for the last slot drops its trial
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert len({t.number for t in done}) == len(done)


# -- units ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("postgresql://bob:s3cret@db.example:5432/optuna", "postgresql://bob:***@db.example:5432/optuna"),
    ("mysql+pymysql://u:p%40ss@h/db", "mysql+pymysql://u:***@h/db"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
])
def test_storage_urls_are_printed_with_the_password_masked(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize("objective", ["throughput", "quality", "both"])
def test_space_bounds_come_from_the_probe_profile(objective):
    space = space_for(objective, PROFILE)
    assert space.searched == SEARCHED[objective]
    assert space.batch_size == (1, 8)              # twice the largest batch that did not OOM
    assert max(space.reduce_ratio) == 0.5          # no rung above the probe's ratio
    assert space.effective_batch_size == (4, 8, 16, 32)
    assert space.num_workers == (0, 2)
    trial = optuna.create_study().ask()
    point = space.suggest(trial)
    s = point.settings
    assert 1 <= s.batch_size <= 8
    assert (point.lr is not None) == (objective != "throughput")
    if objective == "throughput":               # speed alone must not shrink the image
        assert s.reduce_ratio == 0.5 and s.effective_batch_size >= 8
        # ...but it turns what the probe's loop decides: threads and precision too.
        assert space.num_threads == (1, 2) and 1 <= (s.num_threads or 0) <= 2
        assert space.precision == ("32-true", "bf16-mixed") and s.precision in space.precision
    else:
        assert s.precision == "bf16-mixed"      # the profile's, not searched


@pytest.mark.parametrize("batch, effective, devices, accum, eff_out", [
    (4, 16, 1, 4, 16), (3, 16, 1, 6, 18), (32, 16, 1, 1, 32), (2, 16, 2, 4, 16), (1, 1, 1, 1, 1),
])
def test_points_keep_the_effective_batch(batch, effective, devices, accum, eff_out):
    base = Settings(devices=devices, strategy="ddp" if devices > 1 else "auto")
    s = make_point(base, batch, effective, 0.5, 2, None).settings
    assert (s.accumulate_grad_batches, s.effective_batch_size) == (accum, eff_out)


@pytest.mark.parametrize("objective, batch, effective, steps", [
    ("throughput", 4, 8, 5),         # K=5 steps are 10 loader batches at accumulation 2...
    ("throughput", 8, 8, 10),        # ...and at accumulation 1 it is raised to 10 batches
    ("quality", 4, 8, 5),            # K x base effective 8 = 40 samples / 8 per step
    ("quality", 4, 32, 1),           # the same 40 samples at a bigger effective batch
    ("both", 4, 8, 10),              # raised for all alike: 10 batches of the largest batch 8
    ("both", 2, 16, 5),
])
def test_trial_length_keeps_samples_fair_and_throughput_steady(tmp_path, objective, batch,
                                                                effective, steps):
    config = config_for(tmp_path, objective, steps_per_trial=5)
    point = make_point(config.space.base, batch, effective, 0.5, 1, None)
    assert steps_for(config, point) == steps


def test_memory_fit_from_probe_trials_and_area_scaling():
    fits = fits_from_profile(PROFILE)
    assert len(fits) == 1 and fits[0].points == 3
    assert fits[0].fixed_bytes == pytest.approx(2**30)
    assert fits[0].per_sample_bytes == pytest.approx(2**29)
    pred = FitPredictor(fits)
    half = pred.predict_bytes(Settings(batch_size=4, reduce_ratio=0.25))
    assert half == pytest.approx(2**30 + 4 * 2**29 / 4)      # a quarter of the pixels
    assert fit_line(1.0, [(2, 100)]) == MemoryFit(1.0, 0.0, 50.0, 1)
    assert Feasibility(5.0, 4).violation == pytest.approx(0.25)
    assert Feasibility(None, 4).feasible and not Feasibility(5.0, 4).feasible


@pytest.mark.parametrize("device, model_base, map_base, offset", [
    ("cuda:0", 3 * 2**30, 2**30, 0.0),         # GPU fits are allocator peaks: nothing to add
    ("cpu", 3 * 2**30, 2**30, 3 * 2**30),      # CPU fits are RSS growth over the process
    ("cpu", None, 2**30, 2**30),               # no model figure: the map's parent, as decide
    ("cpu", None, None, 0.0),
])
def test_cpu_fits_add_the_process_rss_the_decision_counts(device, model_base, map_base, offset):
    meas = copy.deepcopy(PROFILE["measurements"])
    for t in meas["model"]["trials"]:
        t["device"] = device
    meas["model"]["base_rss_bytes"] = model_base
    meas["map"] = {"base_rss_bytes": map_base}
    assert offset_from_profile({**PROFILE, "measurements": meas}) == offset


@pytest.mark.parametrize("text, size", [("12GiB", 12 * 2**30), ("16GB", 16 * 10**9),
                                        ("800M", 800 * 10**6), ("1e9", 10**9)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "0GiB", "nan", "-1GB", "12 parsecs"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_progress_reader_reads_jsonl_and_lightning_csv(tmp_path):
    (tmp_path / "progress.jsonl").write_text(
        '{"step": 10, "samples": 80, "val_loss": 2.5}\n{"step": 20, "val_ser": 90}\n{"step": 3')
    logs = tmp_path / "logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n0,5,3.0,\n0,30,,2.0\n")
    reader = ProgressReader(tmp_path, "val_loss")
    assert reader.poll() == [{"step": 10, "samples": 80, "value": 2.5},
                             {"step": 30, "samples": None, "value": 2.0}]
    assert reader.poll() == []                       # each record is reported once


@pytest.mark.parametrize("argv, message", [
    (["--from", "no-such-profile"], "--from no-such-profile"),
    (["--memory-budget", "lots"], "--memory-budget"),
    (["--storage", "not-a-url"], "--storage"),
    (["--trials", "0"], "--trials"),
])
def test_bad_input_is_one_line(tmp_path, fake_env, capsys, argv, message):
    assert cli.entry(search_argv(tmp_path, *argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("autotune search: error:")


def test_joining_a_study_with_another_objective_is_refused(tmp_path, fake_env, capsys):
    assert cli.main(search_argv(tmp_path, "--trials", "1", "--study", "s")) == 0
    rc = cli.entry(search_argv(tmp_path, "--trials", "1", "--study", "s", "--objective", "quality"))
    assert rc == 2 and "objective='throughput'" in capsys.readouterr().err


def test_add_parser_registers_search_under_a_parent_cli():
    import argparse
    parent = argparse.ArgumentParser(prog="autotune")
    parent.add_argument("--debug", action="store_true")
    cli.add_parser(parent.add_subparsers(dest="command"))
    args = parent.parse_args(["--debug", "search", "--objective", "both", "--trials", "3"])
    assert args.func is cli.run_search and args.trials == 3 and args.objective == "both"
    assert args.debug is True                      # the parent's flag survives the subparser
    assert parent.parse_args(["search"]).debug is False


# -- the real trainer ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_smt_train_trial_saves_a_profile_smt_train_applies(tmp_path, synth_raw_dir,
                                                                monkeypatch):
    """One real `python -m smt.train` trial (debug preset, tiny rendered set), then the saved
    profile goes through smt.train's own planning (`--profile PATH`)."""
    monkeypatch.setenv("SMT_AUTOTUNE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))       # the trial's `python -m smt.train`
    monkeypatch.chdir(tmp_path)
    small = json.loads(json.dumps(PROFILE))
    small["settings"].update(batch_size=1, reduce_ratio=0.25, accumulate_grad_batches=1,
                             effective_batch_size=1, num_workers=0)
    small["measurements"] = {}
    (tmp_path / "small.json").write_text(json.dumps(small))
    out = tmp_path / "searched.json"
    rc = cli.main(["--data", str(synth_raw_dir), "--preset", "debug", "--from",
                   str(tmp_path / "small.json"), "--trials", "1", "--steps-per-trial", "1",
                   "--trial-timeout", "300", "--run-dir", str(tmp_path / "run"),
                   "--save-profile", str(out), "--seed", "0"])
    assert rc == 0
    study = optuna.load_study(study_name="smt-throughput-debug",
                              storage=f"sqlite:///{tmp_path / 'run' / 'search.db'}")
    (trial,) = study.get_trials(states=(TrialState.COMPLETE,))
    summary = json.loads((Path(trial.user_attrs["trial_dir"]) / "summary.json").read_text())
    assert summary["steps"] == 10                      # 10 loader batches: a steady rate exists
    assert trial.value == pytest.approx(summary["steady_samples_per_s"])
    assert summary["settings"] == trial.user_attrs["settings"]

    from smt.train import build_parser, plan_run
    plan = plan_run(build_parser().parse_args(
        ["--profile", str(out), "--data", str(synth_raw_dir), "--preset", "debug",
         "--max-steps", "1", "--out", str(tmp_path / "train")]))
    assert plan.settings.to_dict() == json.loads(out.read_text())["settings"]
    assert plan.settings.batch_size == trial.params["batch_size"]
