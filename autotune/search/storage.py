"""Where a study lives: the default SQLite file, PostgreSQL/MySQL URLs, a journal file.

One study can be shared by several processes or machines (`--storage postgresql://...`, or
`--storage journal:PATH` on a shared file system with no database): each takes trials from
the same sampler history. Heartbeats let a process that joins or resumes fail the trials of
a process that died mid-trial and queue the same point again, so a crash never leaves a trial
RUNNING forever and the "finished" count stays honest.
"""
from __future__ import annotations

import contextlib
import inspect
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import UserError

# A trial process writes a heartbeat every HEARTBEAT_S; a trial silent for GRACE_S is stale.
# 30 s costs one tiny UPDATE per trial every 30 s and fails a dead worker's trial within ~2 min.
HEARTBEAT_S = 30
GRACE_S = 120
# A point whose worker died is queued again this many times (then it stays failed).
MAX_RETRY = 1
JOURNAL_PREFIX = "journal:"

# Outcomes a trial records in user_attrs["outcome"]: what the search did with it.
OUTCOME_COMPLETE = "complete"     # trained, values recorded
OUTCOME_PRUNED = "pruned"         # trained partly, stopped by the pruner as hopeless
OUTCOME_REJECTED = "rejected"     # predicted over the memory budget, never launched
OUTCOME_FAILED = "failed"         # crashed, OOM, killed by its time limit, no summary
# Started by a worker when other workers' trials already made up --trials: never launched,
# not counted, so two workers never both run the last trial.
OUTCOME_SURPLUS = "surplus"


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'search.db'}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by *** (safe to print and log)."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: mask anything that looks like user:pass@
        return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def _postgres_url(url: str) -> str:
    """A bare postgresql:// URL with the driver that is installed.

    SQLAlchemy 2.0 reads bare `postgresql://` as psycopg2, 2.1 as psycopg (3); the
    `[postgres]` extra installs psycopg 3, so name it when psycopg2 is absent.
    """
    if url.startswith("postgres://"):  # the short scheme many hosts print; SQLAlchemy refuses it
        url = "postgresql://" + url[len("postgres://"):]
    if not url.startswith("postgresql://"):
        return url
    import importlib.util
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def retry_point(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial's point again, up to MAX_RETRY times for one original point.

    The heartbeat calls it for a dead worker's trial, and so does the same-host check. The
    system attrs are Optuna's own retry callback's (`failed_trial`, `retry_history`), so its
    `retried_trial_number` reads them; user attrs (a dead worker's error) are not copied.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def dashboard_command(url: str) -> str:
    """The optuna-dashboard line that watches this storage (password masked)."""
    if url.startswith(JOURNAL_PREFIX):
        return f"optuna-dashboard {url[len(JOURNAL_PREFIX):]}"
    # The driver named as open_storage uses it: the dashboard goes through SQLAlchemy too.
    return f"optuna-dashboard '{mask_url(_postgres_url(url))}'"


def _retry_kwargs() -> dict[str, Any]:
    """RDBStorage's stale-trial callback, under the name this Optuna version gives it."""
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    name = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback")                  # Optuna 3.x
    return {name: retry_point}


class _RDBStorage(optuna.storages.RDBStorage):
    """A heartbeat that misses one beat while the database is down, instead of a traceback
    from its thread: the search's next own storage call reports the outage in one line."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception:
            pass


try:
    from optuna.storages._heartbeat import BaseHeartbeat
except ImportError:  # pragma: no cover - every Optuna this project supports has it
    BaseHeartbeat = object  # type: ignore[assignment,misc]


class _HeartbeatJournal(optuna.storages.JournalStorage, BaseHeartbeat):  # type: ignore[misc]
    """A journal with heartbeats, which Optuna's JournalStorage lacks: a beat is a trial system
    attr with the writer's wall-clock time, so a worker on another machine that dies (the
    journal's whole use case) is failed and retried like on a database. The clocks of the
    machines sharing the file should agree to within the grace period."""

    def __init__(self, backend: Any, heartbeat_s: int, grace_s: int | None) -> None:
        super().__init__(backend)
        self._heartbeat_s = heartbeat_s
        self._grace_s = grace_s or 2 * heartbeat_s

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, "heartbeat_at", time.time())
        except Exception:  # a finished trial or an unreadable share: the next beat retries
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False,
                                                           states=(TrialState.RUNNING,))
                if now - float(t.system_attrs.get("heartbeat_at", now)) > self._grace_s]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return retry_point

    def get_failed_trial_callback(self) -> Any:  # the same, by its Optuna 3.x name
        return retry_point


def check_journal(path_text: str) -> Path:
    """The journal file, checked before Optuna opens it: a file (not a folder) in a folder we
    can write (the lock file goes beside it), and, when it exists, a journal (JSON lines of
    operations) rather than some other file that appending to would spoil."""
    import json

    from autotune.outdir import check_out_file

    if not path_text:
        raise UserError("--storage journal:PATH needs a file path (e.g. journal:/shared/search.log)")
    flag = "--storage"
    path = check_out_file(Path(path_text).expanduser(), flag=flag)
    if not path.is_file():
        return path
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
    except OSError as exc:
        raise UserError(f"{flag} {JOURNAL_PREFIX}{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if first:
        try:
            entry = json.loads(first)
        except (ValueError, RecursionError):
            entry = None
        if not isinstance(entry, dict) or "op_code" not in entry:
            raise UserError(f"{flag} {JOURNAL_PREFIX}{path}: is an existing file that is not an Optuna journal; "
                            "name a new file or a journal an earlier search wrote")
    return path


def _open_journal(path_text: str, heartbeat_s: int,
                  grace_s: int | None) -> optuna.storages.BaseStorage:
    path = check_journal(path_text)
    try:  # Optuna >= 4.0
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # Optuna 3.x names
        from optuna.storages import JournalFileOpenLock  # type: ignore[attr-defined,no-redef]
        from optuna.storages import JournalFileStorage as JournalFileBackend  # type: ignore
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The open(O_EXCL) lock: atomic on NFSv3 and later, the usual cluster share.
        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return _HeartbeatJournal(backend, heartbeat_s, grace_s)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S,
                 grace_s: int | None = GRACE_S) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats, or a journal file; SQLite waits for locks."""
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal(url[len(JOURNAL_PREFIX):], heartbeat_s, grace_s)
    if "://" not in url:
        raise UserError(f"--storage {url!r} is not a database URL (e.g. sqlite:///runs/search.db, "
                        "postgresql://user:pass@host/db or journal:/shared/search.log)")
    url = _postgres_url(url)
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        db_path = url.split(":///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file contend for its write lock; wait up to 60 s.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        # A server that went away and came back: replace dead pooled connections; an
        # unreachable one: fail within 10 s instead of the OS's minutes-long TCP timeout.
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    last: Exception | None = None
    # Two workers starting together on a fresh database race to create its tables; the loser
    # sees "table already exists" or a lock, and simply opens it again a moment later.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _RDBStorage(url, engine_kwargs=engine_kwargs,
                                   heartbeat_interval=heartbeat_s, grace_period=grace_s,
                                   **_retry_kwargs())
        except ImportError as exc:  # e.g. no driver for postgresql://
            raise UserError(f"--storage {mask_url(url)}: driver not installed ({exc}); "
                            "pip install 'smt-autotune[postgres]'") from exc
        except Exception as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise UserError(f"--storage {mask_url(url)}: cannot open ({_first_line(last)})") from last


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and those it was raised from or during, outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _db_errors() -> tuple[type[BaseException], ...]:
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:
        return (optuna.exceptions.StorageInternalError,)
    return (optuna.exceptions.StorageInternalError, DBAPIError)


def _first_line(exc: BaseException | None) -> str:
    """The database's own words, on one line: the innermost storage error in the chain
    (Optuna wraps the driver's error, and may raise another one while handling it)."""
    found = [e for e in _chain(exc) if isinstance(e, _db_errors())] or list(_chain(exc))
    inner = found[-1] if found else None
    text = str(getattr(inner, "orig", None) or inner or "unknown error").strip()
    return text.splitlines()[0] if text else type(inner).__name__


def _is_storage_error(exc: BaseException) -> bool:
    return any(isinstance(e, _db_errors()) for e in _chain(exc))


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """A lost database connection mid-study becomes one line (exit 2): the study is safe in
    the database; what was running is failed and retried when a worker resumes."""
    try:
        yield
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        raise UserError(f"--storage {mask_url(url)}: lost the database ({_first_line(exc)}); "
                        "finished trials are kept there: when it is back, run the same "
                        "command to resume") from exc


def is_surplus(study: optuna.Study, number: int, wanted: int) -> bool:
    """True when trials before `number` already finished or are running to make `wanted`.

    Storages number trials under a lock (RDB: the study row FOR UPDATE; journal: the file
    lock), so every earlier trial is visible here and two workers never both take the last
    slot. A surplus trial is dropped before launch; if an earlier one fails, the loop of the
    worker that sees it starts another.
    """
    ahead = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                      TrialState.RUNNING)):
        if t.number < number and outcome(t) in (OUTCOME_COMPLETE, OUTCOME_PRUNED, "running"):
            ahead += 1
    return ahead >= wanted


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
        if kind == OUTCOME_SURPLUS:
            continue
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
