"""The search loop: ask Optuna for a point, reject it or run it, record everything.

The loop runs one Optuna trial at a time (`optimize(n_trials=1)`, which brings heartbeats and
stale-trial failing with it) and re-counts the study before each: `--trials N` means N
finished trials in the study, whoever ran them, so a resumed search stops at N and several
workers on one storage stop together.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState
from rich.console import Console

from autotune.atomic import atomic_write_json
from autotune.errors import UserError
from autotune.feasible import Feasibility
from autotune.search.objectives import TrialFailed
from autotune.search.runner import TrialResult, TrialRunner
from autotune.search.space import TrialPoint
from autotune.search.storage import (OUTCOME_COMPLETE, OUTCOME_FAILED, OUTCOME_PRUNED,
                                     OUTCOME_REJECTED, OUTCOME_SURPLUS, StudyCounts,
                                     count_trials, is_surplus, mask_url, open_storage,
                                     retry_point, storage_errors, wait_for_running)
from autotune.search.constraints import HAS_SET_CONSTRAINT, memory_constraint, record_violation
from autotune.search.length import steps_for, trainer_args, trial_request
from autotune.search.searchconfig import SearchConfig
from autotune.workload import TrialReport


@dataclass
class SearchOutcome:
    study: optuna.Study
    counts: StudyCounts
    stop_reason: str
    elapsed_s: float
    attempts: int


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_alive(worker: str, started: float | None) -> bool:
    """False only when the worker ran on this host and its process is gone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: its heartbeat decides
    try:
        p = psutil.Process(int(pid))
        return started is None or abs(p.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials of dead processes on this host at once, not after the grace time."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not _worker_alive(worker, t.user_attrs.get("worker_started")):
            try:
                optuna.trial.Trial(study, t._trial_id).set_user_attr(
                    "error", "its search process died mid-trial")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                retry_point(study, t)
                failed.append(t.number)
            except Exception:  # another worker got there first
                pass
    return failed


def open_study(config: SearchConfig) -> optuna.Study:
    storage = open_storage(config.storage_url, config.heartbeat_s, config.grace_s)
    directions = list(config.objective.directions)
    meta = {"objective": config.objective.name, "metric": config.objective.metric,
            "steps_per_trial": config.steps_per_trial, "preset": config.preset,
            "data": config.data, "searched": list(config.space.searched)}
    try:
        existing = optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        old = existing.user_attrs.get("search") or {}
        for key in ("objective", "metric", "preset", "data"):
            if key in old and old[key] != meta[key]:
                raise UserError(
                    f"study {config.name!r} in {mask_url(config.storage_url)} was created with "
                    f"{key}={old[key]!r}, not {meta[key]!r}; use another --study name")
    sampler = optuna.samplers.TPESampler(
        seed=config.seed, n_startup_trials=max(2, min(10, config.trials // 3)),
        **({} if HAS_SET_CONSTRAINT else {"constraints_func": memory_constraint}))
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if config.objective.prunable else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=config.name, sampler=sampler,
                                pruner=pruner, directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"study {config.name!r} optimizes {study.directions}, not {directions}")
    if existing is None:
        study.set_user_attr("search", meta)
    for params in config.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


def make_objective_fn(config: SearchConfig, runner: TrialRunner, console: Console):
    def objective(trial: optuna.trial.Trial) -> float | list[float]:
        point, desc, feas = _suggest(config, trial, console)
        res, report = _train(config, runner, console, trial, point, desc, feas)
        return _score(config, console, trial, desc, res, report)

    return objective


def _suggest(config: SearchConfig, trial: optuna.trial.Trial,
             console: Console) -> tuple[TrialPoint, str, Feasibility]:
    """The trial's point, described, and rejected (pruned) if predicted over the budget."""
    if is_surplus(trial.study, trial.number, config.trials):
        # Another worker took the last slot first: drop this one before launching.
        trial.set_user_attr("outcome", OUTCOME_SURPLUS)
        raise optuna.TrialPruned("other workers' trials already make up --trials")
    trial.set_user_attr("worker", _worker_id())
    trial.set_user_attr("worker_started", psutil.Process().create_time())
    point = config.space.suggest(trial)
    s = point.settings
    trial.set_user_attr("settings", s.to_dict())
    trial.set_user_attr("lr", point.lr)
    desc = (f"batch {s.batch_size} x accum {s.accumulate_grad_batches} "
            f"(eff. {s.effective_batch_size}), ratio {s.reduce_ratio:g}, "
            f"workers {s.num_workers}" + (f", lr {point.lr:.2e}" if point.lr else ""))
    budget = config.memory_budget_bytes
    feas = Feasibility(config.predictor.predict_bytes(s), budget)
    if feas.predicted_bytes is not None:
        trial.set_user_attr("predicted_memory_bytes", int(feas.predicted_bytes))
    if feas.violation is not None:
        record_violation(trial, feas.violation)
    if not feas.feasible:
        msg = (f"predicted {feas.predicted_bytes / 2**30:.2f} GiB > budget "
               f"{budget / 2**30:.2f} GiB ({config.predictor.source})")
        trial.set_user_attr("outcome", OUTCOME_REJECTED)
        trial.set_user_attr("error", msg)
        console.print(f"[yellow]trial {trial.number}[/] {desc}: rejected before running, {msg}")
        raise optuna.TrialPruned(msg)
    return point, desc, feas


def _train(config: SearchConfig, runner: TrialRunner, console: Console,
           trial: optuna.trial.Trial, point: TrialPoint, desc: str,
           feas: Feasibility) -> tuple[TrialResult, TrialReport | None]:
    """Launch the trial as the workload declares, watch it, and read back its report."""
    obj, s = config.objective, point.settings
    out = config.run_dir / "trials" / f"{trial.number:04d}"
    steps = steps_for(config, point)
    workload = config.trial_workload()
    launch = workload.trial_launch(trial_request(config, point, steps, out))
    launch = launch.with_command(config.trainer)
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("trial_dir", str(out))
    atomic_write_json(out / "trial.json", {
        "study": config.name, "trial": trial.number, "worker": _worker_id(),
        "command": launch.argv, "settings": s.to_dict(), "lr": point.lr,
        "predicted_memory_bytes": feas.predicted_bytes, "budget_bytes": feas.budget_bytes})

    def on_progress(rec: dict[str, Any]) -> bool:
        step = rec["samples"] if rec["samples"] is not None else rec["step"] * s.effective_batch_size
        trial.report(rec["value"], step)
        return not trial.should_prune()

    with console.status(f"trial {trial.number}: training {steps} steps, {desc}"):
        res = runner.run(launch, out, config.trial_timeout_s,
                         metric=obj.metric if obj.prunable else None,
                         on_progress=on_progress if obj.prunable else None,
                         setup_limit_s=config.setup_timeout_s)
    trial.set_user_attr("elapsed_s", round(res.elapsed_s, 2))
    trial.set_user_attr("peak_rss_bytes", res.peak_rss_bytes)
    trial.set_user_attr("status", res.status)
    report = workload.trial_report(out)
    for key in REPORTED:
        if report is not None and report.metric(key) is not None:
            trial.set_user_attr(key, report.metric(key))
    _judge(res, report)
    return res, report


def _score(config: SearchConfig, console: Console, trial: optuna.trial.Trial, desc: str,
           res: TrialResult, report: TrialReport | None) -> float | list[float]:
    """The objective values of a finished trial; pruned or failed ones raise."""
    obj = config.objective
    if res.status == "stopped":
        trial.set_user_attr("outcome", OUTCOME_PRUNED)
        console.print(f"[cyan]trial {trial.number}[/] {desc}: pruned after "
                      f"{res.elapsed_s:.1f} s ({obj.metric} {res.progress[-1]['value']:.4g})")
        raise optuna.TrialPruned("stopped by the pruner")
    if res.status != "complete":
        trial.set_user_attr("outcome", OUTCOME_FAILED)
        trial.set_user_attr("error", res.error)
        console.print(f"[red]trial {trial.number}[/] {desc}: {res.status}: {res.error} "
                      f"(log: {res.log_path})")
        raise TrialFailed(res.error)
    try:
        assert report is not None              # _judge failed the trial otherwise
        values = obj.values(report)
    except TrialFailed as exc:
        trial.set_user_attr("outcome", OUTCOME_FAILED)
        trial.set_user_attr("error", str(exc))
        console.print(f"[red]trial {trial.number}[/] {desc}: {exc}")
        raise
    trial.set_user_attr("outcome", OUTCOME_COMPLETE)
    shown = ", ".join(f"{n} {v:.4g}" for n, v in zip(obj.names, values))
    console.print(f"[green]trial {trial.number}[/] {desc}: {shown} ({res.elapsed_s:.1f} s)")
    return values[0] if len(values) == 1 else values


# What a trial's record keeps from its report (the study's table and saved profile read them).
REPORTED = ("samples_per_s", "val_loss", "val_ser", "train_loss", "peak_memory_bytes")


def _judge(res: TrialResult, report: TrialReport | None) -> None:
    """Turn a trainer that exited 0 into a failure when its report says the run is no good."""
    if res.status != "complete":
        return
    if report is None:
        res.status, res.error = "failed", "trainer exited 0 but wrote no summary.json"
    elif report.oom_events:
        # The trainer survived by shrinking its micro-batch: these settings do not fit.
        res.status = "oom"
        res.error = (f"out of memory: the trainer backed off to micro-batch "
                     f"{report.micro_batch_size} ({report.oom_events} OOM event(s))")
    elif report.interrupted:
        res.status, res.error = "failed", "the trainer reports it was interrupted"


def run_study(config: SearchConfig, console: Console | None = None,
              runner: TrialRunner | None = None) -> SearchOutcome:
    console = console or Console(stderr=True)
    runner = runner or TrialRunner()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(logging.ERROR)  # we print our own line per trial
    with storage_errors(config.storage_url):
        return _run_loop(config, console, runner)


def _run_loop(config: SearchConfig, console: Console, runner: TrialRunner) -> SearchOutcome:
    study = open_study(config)
    fn = make_objective_fn(config, runner, console)
    start = time.monotonic()
    max_attempts = config.max_attempts or 3 * config.trials + 10
    attempts = 0
    reason = ""
    dead = fail_dead_local_trials(study)
    if dead:
        console.print(f"failed trial(s) {dead}: their search process on this host is gone")
    while True:
        counts = count_trials(study)
        if counts.finished >= config.trials:
            reason = f"{counts.finished} finished trials (asked {config.trials})"
            break
        if config.timeout_s is not None and time.monotonic() - start >= config.timeout_s:
            reason = f"--timeout {config.timeout_s:g} s reached"
            break
        if attempts >= max_attempts:
            reason = (f"gave up after {attempts} attempts in this process "
                      f"({counts.rejected} rejected, {counts.failed} failed in the study)")
            break
        if counts.finished + counts.running >= config.trials:
            # Other workers' trials may finish the study; wait for them (or their heartbeat).
            wait_for_running(study, min(5.0, max(0.5, config.heartbeat_s / 2)))
            fail_dead_local_trials(study)
            continue
        study.optimize(fn, n_trials=1, catch=(TrialFailed,))
        attempts += 1
    counts = count_trials(study)
    elapsed = time.monotonic() - start
    atomic_write_json(config.run_dir / "search.json", {
        "study": config.name, "storage": mask_url(config.storage_url),
        "objective": config.objective.name, "metric": config.objective.metric,
        "stop_reason": reason, "elapsed_s": round(elapsed, 2), "attempts": attempts,
        "counts": counts.__dict__ | {"finished": counts.finished}})
    return SearchOutcome(study, counts, reason, elapsed, attempts)


__all__ = ["SearchConfig", "SearchOutcome", "run_study", "open_study", "trainer_args",
           "trial_request", "steps_for", "fail_dead_local_trials"]
