"""How long a search trial trains, and the request the workload turns into a launch."""
from __future__ import annotations

import math
from pathlib import Path

from autotune.search.searchconfig import SearchConfig
from autotune.search.space import TrialPoint
from autotune.workload import TrialRequest

# Loader batches a throughput trial runs at least: twice the trainer's warm-up, which its
# steady samples/s leaves out, so every trial reports a steady rate and trials are compared on
# the same kind of figure (SMT: 5 warm-up batches, so 10).
MIN_BATCHES_PER_WARMUP = 2
MIN_BATCHES_FLOOR = 10


def min_batches(config: SearchConfig) -> int:
    warmup = config.trial_workload().trial_warmup_batches()
    return max(MIN_BATCHES_FLOOR, MIN_BATCHES_PER_WARMUP * warmup)


def steps_for(config: SearchConfig, point: TrialPoint) -> int:
    """Optimizer steps for a trial.

    throughput: K steps (at least `min_batches` loader batches). quality: a fixed number of
    samples, K x the base effective batch. both: the same, raised for every trial alike to
    `min_batches` batches of the largest batch size, so that throughput is measured steady.
    """
    s = point.settings
    acc = s.accumulate_grad_batches
    if not config.objective.needs_validation:
        return max(config.steps_per_trial, math.ceil(min_batches(config) / acc))
    budget = config.steps_per_trial * config.space.base.effective_batch_size
    if config.objective.name == "both":
        budget = max(budget, min_batches(config) * config.space.batch_size[1] * s.devices)
    return max(1, round(budget / s.effective_batch_size))


VALIDATIONS_PER_TRIAL = 4       # a quality trial's intermediate values for the pruner


def trial_request(config: SearchConfig, point: TrialPoint, steps: int, out: Path) -> TrialRequest:
    prunable, validates = config.objective.prunable, config.objective.needs_validation
    return TrialRequest(
        settings=point.settings, max_steps=steps, out_dir=out,
        # Same seed for every trial: differences come from the settings, not the shuffle.
        seed=config.seed or 0, lr=point.lr, preset=config.preset, data=config.data,
        val_every_steps=max(1, steps // VALIDATIONS_PER_TRIAL) if prunable else None,
        # Throughput ignores validation; decode one batch at the end instead of the split.
        val_batches=1 if not validates else None)


def trainer_args(config: SearchConfig, point: TrialPoint, steps: int, out: Path) -> list[str]:
    """The trial's full command line, as the workload launches it (with --trainer's command)."""
    launch = config.trial_workload().trial_launch(trial_request(config, point, steps, out))
    return launch.with_command(config.trainer).argv
