"""Optuna search over training settings (`python -m autotune search`).

Modules, one job each: `searchconfig` (what one search is), `space` (knobs and bounds),
`constraints` (the rejection before running that `autotune.feasible` predicts, as Optuna's
constraint, on Optuna 3.6 to 5), `objectives` (what
a trial is scored on), `length` (a trial's steps and the request the workload launches),
`runner` (one trial = one child training process), `storage` (study storage, heartbeats,
counts), `study` (the loop), `results` (table, profile, plots), `cli` (flags).
"""
from autotune.search.cli import add_parser, main, run_search
from autotune.search.objectives import OBJECTIVES, TrialFailed, make_objective
from autotune.search.runner import TrialResult, TrialRunner
from autotune.search.space import SearchSpace, TrialPoint, space_for
from autotune.search.storage import count_trials, default_storage_url, mask_url, open_storage
from autotune.search.searchconfig import SearchConfig
from autotune.search.study import SearchOutcome, run_study

__all__ = ["add_parser", "run_search", "main", "OBJECTIVES", "TrialFailed", "make_objective",
           "TrialResult", "TrialRunner", "SearchSpace", "TrialPoint", "space_for",
           "count_trials", "default_storage_url", "mask_url", "open_storage", "SearchConfig",
           "SearchOutcome", "run_study"]
