"""The memory constraint handed to Optuna, on every Optuna from 3.6 on.

Optuna 5 records a constraint on the trial (`Trial.set_constraint`, read back as
`FrozenTrial.constraints`) and deprecates the samplers' `constraints_func`; Optuna 3.x and
4.x (what Kaggle's and Colab's images carry) have only `constraints_func`, which the sampler
calls after each complete or pruned trial and stores as a list in the trial's system
attributes. Here is the one place that knows both.
"""
from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

# Older Optuna: the violation travels as a user attribute that `memory_constraint` reads back.
HAS_SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")
VIOLATION_ATTR = "memory_violation"


def record_violation(trial: optuna.trial.Trial, violation: float) -> None:
    """Tell the sampler how far over the memory budget this point is predicted (<= 0: fits)."""
    if HAS_SET_CONSTRAINT:
        trial.set_constraint("memory", violation)
    else:
        trial.set_user_attr(VIOLATION_ATTR, float(violation))


def memory_constraint(trial: FrozenTrial) -> tuple[float]:
    """`constraints_func` for older Optuna: the recorded violation; 0 (feasible) when the
    memory model had no prediction, as a trial without a constraint is under Optuna 5."""
    violation = trial.user_attrs.get(VIOLATION_ATTR)
    return (float(violation) if violation is not None else 0.0,)


def constraint_values(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values: `FrozenTrial.constraints` (Optuna 5), else the list the
    sampler's `constraints_func` stored (older Optuna); empty when none was recorded."""
    named = getattr(trial, "constraints", None)
    if isinstance(named, dict):
        return [float(v) for v in named.values()]
    return [float(v) for v in trial.system_attrs.get("constraints") or ()]
