"""Where a study lives: the default SQLite file, any Optuna storage URL, heartbeats, counts.

One study can be shared by several processes or machines (`--storage postgresql://...`):
each takes trials from the same sampler history. Heartbeats let a process that joins or
resumes fail the trials of a process that died mid-trial, so a crash never leaves a trial
RUNNING forever and the "finished" count stays honest.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import UserError

# A trial process writes a heartbeat every HEARTBEAT_S; a trial silent for GRACE_S is stale.
# 30 s costs one tiny UPDATE per trial every 30 s and fails a dead worker's trial within ~2 min.
HEARTBEAT_S = 30
GRACE_S = 120

# Outcomes a trial records in user_attrs["outcome"]: what the search did with it.
OUTCOME_COMPLETE = "complete"     # trained, values recorded
OUTCOME_PRUNED = "pruned"         # trained partly, stopped by the pruner as hopeless
OUTCOME_REJECTED = "rejected"     # predicted over the memory budget, never launched
OUTCOME_FAILED = "failed"         # crashed, OOM, killed by its time limit, no summary


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'search.db'}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by *** (safe to print and log)."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: mask anything that looks like user:pass@
        return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S,
                 grace_s: int | None = GRACE_S) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; SQLite waits for locks instead of failing at once."""
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a database URL "
                        "(e.g. sqlite:///runs/search.db or postgresql://user:pass@host/db)")
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        db_path = url.split(":///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file contend for its write lock; wait up to 60 s.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    # Two workers starting together on a fresh database race to create its tables; the loser
    # sees "table already exists" or a lock, and simply opens it again a moment later.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                    grace_period=grace_s)
        except ImportError as exc:  # e.g. psycopg2 missing for postgresql://
            raise UserError(f"--storage {mask_url(url)}: driver not installed ({exc})") from exc
        except Exception as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise UserError(f"--storage {mask_url(url)}: cannot open ({last})") from last


@dataclass(frozen=True)
class StudyCounts:
    complete: int
    pruned: int        # stopped by the pruner: counts as finished
    rejected: int      # never launched (memory constraint)
    failed: int
    running: int

    @property
    def finished(self) -> int:
        """Trials that ran to a verdict; `--trials N` asks for N of these."""
        return self.complete + self.pruned


def outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return OUTCOME_COMPLETE
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        return "waiting"
    return str(trial.user_attrs.get("outcome", OUTCOME_FAILED if trial.state == TrialState.FAIL
                                    else OUTCOME_PRUNED))


def count_trials(study: optuna.Study) -> StudyCounts:
    counts = {"complete": 0, "pruned": 0, "rejected": 0, "failed": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        kind = outcome(t)
        if kind in counts:
            counts[kind] += 1
        elif kind != "waiting":
            counts["failed"] += 1
    return StudyCounts(**counts)


def fail_stale(study: optuna.Study) -> None:
    """Fail RUNNING trials whose worker stopped beating (what Optuna does before each trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def wait_for_running(study: optuna.Study, poll_s: float) -> None:
    """Sleep while other workers' trials may still finish the study."""
    time.sleep(poll_s)
    fail_stale(study)
