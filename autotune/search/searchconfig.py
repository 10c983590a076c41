"""What one search is: its objective, space, run folder, limits and the workload whose trials
it launches (the loop that runs it is `autotune.search.study`).

A module of its own so that the trial-length rules (`search.length`) and the loop can both
read it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.feasible import MemoryPredictor, NullPredictor
from autotune.search.objectives import Objective
from autotune.search.space import SearchSpace
from autotune.search.storage import GRACE_S, HEARTBEAT_S, default_storage_url
from autotune.workload import DEFAULT_WORKLOAD, TrialRequest, Workload, load_workload


@dataclass
class SearchConfig:
    objective: Objective
    space: SearchSpace
    run_dir: Path
    trials: int = 20
    # Optimizer steps of a trial at the base effective batch. Quality trials keep the number of
    # SAMPLES fixed (steps x base effective batch), so a bigger effective batch is not
    # rewarded for having seen more data.
    steps_per_trial: int = 50
    timeout_s: float | None = None             # whole search: no new trial after this
    trial_timeout_s: float = 900.0             # one trial's training: killed and failed past this
    # Before training starts (data preparation at a new reduce ratio, start-up): a separate,
    # longer limit, because preparing a large dataset legitimately takes many minutes.
    setup_timeout_s: float = 3600.0
    storage: str | None = None
    study_name: str | None = None
    preset: str | None = None
    data: str | None = None
    seed: int | None = None
    memory_budget_bytes: int | None = None
    predictor: MemoryPredictor = field(default_factory=NullPredictor)
    # Whose trial launch (command, flags, report) the trials use, and an optional command that
    # replaces the workload's own (`--trainer`; it must take the same flags).
    workload: str = DEFAULT_WORKLOAD
    trainer: tuple[str, ...] | None = None
    heartbeat_s: int = HEARTBEAT_S
    grace_s: int = GRACE_S
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # points to try first
    # Stop after this many attempts in this process (rejections and failures included), so a
    # space where nothing fits or a trainer that always crashes cannot loop forever.
    max_attempts: int | None = None
    _workload: Workload | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.steps_per_trial < 1:
            raise ValueError(f"steps_per_trial must be >= 1, got {self.steps_per_trial}")
        if self.trial_timeout_s <= 0:
            raise ValueError(f"trial_timeout_s must be > 0, got {self.trial_timeout_s}")

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.run_dir)

    @property
    def name(self) -> str:
        return self.study_name or f"smt-{self.objective.name}-{self.preset or 'default'}"

    def trial_workload(self) -> Workload:
        """The workload that launches the trials (built once; building it reads no data)."""
        if self._workload is None:
            self._workload = load_workload(self.workload, data=self.data,
                                           preset=self.preset or "paper")
        return self._workload

    def trainer_command(self) -> tuple[str, ...]:
        """The program each trial runs: `trainer`, else the workload's own."""
        if self.trainer:
            return self.trainer
        probe = TrialRequest(settings=self.space.base, max_steps=1, out_dir=self.run_dir)
        return self.trial_workload().trial_launch(probe).command
