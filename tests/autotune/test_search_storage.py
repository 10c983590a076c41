"""Shared studies on real engines: a PostgreSQL server the suite starts, and a journal file.

The server is the distribution's PostgreSQL (see pg_server.py), started on 127.0.0.1 for this
module and stopped at its end; the trainer is the fake one (search_fixtures/fake_train.py),
so each test takes seconds. Workers are real `python -m autotune.search` processes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.search import cli
from autotune.search.storage import (OUTCOME_SURPLUS, count_trials, dashboard_command,
                                     is_surplus, open_storage, retry_point)
import netns
from pg_server import PASSWORD, PgServer, unavailable

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "autotune" / "search_fixtures" / "fake_train.py"


@pytest.fixture(scope="module")
def pg():
    try:
        import psycopg  # noqa: F401  (the [postgres] extra's driver)
    except ImportError:
        unavailable("psycopg not installed (pip install -e '.[dev]')")
    server = PgServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMT_AUTOTUNE_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(tmp_path / "calls.jsonl"))
    return {**os.environ, "PYTHONPATH": str(REPO)}


def argv(tmp_path: Path, storage: str, study: str, trials: int, *extra: str) -> list[str]:
    return ["--trainer", f"{sys.executable} {FAKE}", "--workload", "none", "--seed", "0",
            "--run-dir", str(tmp_path / "run"), "--storage", storage, "--study", study,
            "--trials", str(trials), "--heartbeat", "1", *extra]


def spawn(args: list[str], env: dict[str, str], cwd: Path, prefix: tuple[str, ...] = (),
          **env_extra: str) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-m", "autotune.search", *args],
                            cwd=cwd, env={**env, **env_extra}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def load(storage: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(storage, 1, 4))


def launches(tmp_path: Path) -> int:
    path = tmp_path / "calls.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(pred, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception:  # the study does not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


def assert_exactly(study: optuna.Study, n: int, tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    """n complete trials, nothing running, each point launched once (surplus ones never)."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n
    assert len({t.number for t in done}) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    surplus = [t for t in study.get_trials() if t.user_attrs.get("outcome") == OUTCOME_SURPLUS]
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert launches(tmp_path) == n + len(failed), (len(surplus), len(failed))
    return done


# -- PostgreSQL -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_on_postgres_finish_exactly_n_trials(tmp_path, env, pg):
    args = argv(tmp_path, pg.url, "pg-two", 6)
    procs = [spawn(args, env, tmp_path, FAKE_TRAIN_SLEEP="1.0") for _ in range(2)]
    for p in procs:
        rc, err = finish(p)
        assert rc == 0, err[-2000:]
    study = load(pg.url, "pg-two")
    done = assert_exactly(study, 6, tmp_path)
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert count_trials(study).finished == 6


@pytest.fixture(params=["postgres", "journal"])
def shared_storage(request, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg").url
    return f"journal:{tmp_path / 'shared' / 'search.log'}"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_killed_mid_trial_is_failed_by_heartbeat_and_retried(tmp_path, env,
                                                                    shared_storage):
    # The killed worker runs under another hostname (its own UTS namespace), as on another
    # machine: only the heartbeat can tell it died, not the same-host process check.
    netns.require("uts")
    hang = tmp_path / "hang"
    args = argv(tmp_path, shared_storage, "kill", 3)
    remote = ("unshare", "--uts", "sh", "-c", 'hostname other-node && exec "$@"', "sh")
    proc = spawn(args, env, tmp_path, remote, FAKE_TRAIN_HANG_ONCE=str(hang))
    try:
        wait_for(lambda: hang.exists() and hang.read_text().strip(), 60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the search and its hanging trainer, mid-trial
        finish(proc)
    (killed,) = load(shared_storage, "kill").get_trials(states=(TrialState.RUNNING,))
    assert killed.user_attrs["worker"].startswith("other-node:")

    assert cli.main(argv(tmp_path, shared_storage, "kill", 3)) == 0
    study = load(shared_storage, "kill")
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.number == killed.number and "error" not in failed.user_attrs  # the heartbeat
    retried = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
               if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert_exactly(study, 3, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_server_stopped_mid_study_is_one_line_and_the_study_resumes(tmp_path, env, pg):
    args = argv(tmp_path, pg.url, "pg-stop", 4)
    proc = spawn(args, env, tmp_path, FAKE_TRAIN_SLEEP="1.5")
    try:
        wait_for(lambda: (lambda c: c.complete >= 1 and c.running == 1)(
            count_trials(load(pg.url, "pg-stop"))), 90)
        before = {t.number: t.value for t in
                  load(pg.url, "pg-stop").get_trials(states=(TrialState.COMPLETE,))}
        pg.stop()
        rc, err = finish(proc, 60)
    finally:
        pg.start()
    lines = err.strip().splitlines()
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    assert "lost the database" in lines[-1] and "run the same command" in lines[-1]
    assert len(lines) == 1 and PASSWORD not in err and "smt:***@127.0.0.1" in lines[-1]

    study = load(pg.url, "pg-stop")      # intact after the restart
    kept = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert before.items() <= kept.items()
    assert cli.main(args) == 0           # the same command resumes to 4 finished trials
    assert_exactly(load(pg.url, "pg-stop"), 4, tmp_path)


# -- journal file -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_on_a_journal_file_finish_exactly_n_trials(tmp_path, env):
    storage = f"journal:{tmp_path / 'shared' / 'search.log'}"
    args = argv(tmp_path, storage, "journal-two", 4)
    procs = [spawn(args, env, tmp_path, FAKE_TRAIN_SLEEP="0.5") for _ in range(2)]
    for p in procs:
        rc, err = finish(p)
        assert rc == 0, err[-2000:]
    assert_exactly(load(storage, "journal-two"), 4, tmp_path)
    # A finished study reopens as-is: nothing more runs.
    assert cli.main(args) == 0 and launches(tmp_path) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here, not optimize
def test_a_trial_started_after_the_last_slot_was_taken_is_surplus(tmp_path):
    study = optuna.create_study(storage=open_storage(f"journal:{tmp_path / 'j.log'}"))
    for x in (1.0, 2.0):
        study.add_trial(optuna.trial.create_trial(value=x, params={"x": x},
                        distributions={"x": optuna.distributions.FloatDistribution(0, 3)}))
    running = study.ask()                        # a worker takes the third slot
    late = study.ask()                           # another starts a moment later
    assert not is_surplus(study, running.number, 3)
    assert is_surplus(study, late.number, 3)
    late.set_user_attr("outcome", OUTCOME_SURPLUS)   # what the search does with it
    study.tell(late, state=TrialState.PRUNED)
    assert count_trials(study).finished == 2 and count_trials(study).failed == 0
    study.tell(running, state=TrialState.FAIL)   # the slot frees up: a new trial may run
    assert not is_surplus(study, study.ask().number, 3)
    # A failed point is queued again once, with Optuna's own retry markers.
    retry_point(study, study.trials[running.number])
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["failed_trial"] == running.number


def test_the_search_says_how_to_watch_the_study(tmp_path, env, capsys):
    storage = f"journal:{tmp_path / 'j.log'}"
    assert cli.main(argv(tmp_path, storage, "watch", 1)) == 0
    assert f"optuna-dashboard {tmp_path / 'j.log'}" in capsys.readouterr().out
    shown = dashboard_command("postgresql://bob:pw@db/optuna")
    assert "bob:***@db/optuna" in shown and ":pw@" not in shown


def test_storage_flag_errors_are_one_line(tmp_path, env, capsys):
    assert cli.entry(argv(tmp_path, "journal:", "j", 1)) == 2
    assert "journal:PATH" in capsys.readouterr().err
    assert cli.entry(argv(tmp_path, "runs/db", "j", 1)) == 2
    assert "journal:" in capsys.readouterr().err.strip().splitlines()[-1]


def test_postgres_urls_name_the_installed_driver(monkeypatch):
    import importlib.util

    from autotune.search import storage
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg2" else real(name, *a))
    assert storage._postgres_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert storage._postgres_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert storage._postgres_url("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"
    assert storage._postgres_url("sqlite:///x.db") == "sqlite:///x.db"
