"""What a search leaves behind: a table of the best trials, a profile, plots."""
from __future__ import annotations

import datetime as _dt
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from autotune.atomic import atomic_write_json
from autotune.errors import UserError
from autotune.search.constraints import constraint_values
from autotune.search.objectives import Objective
from autotune.search.storage import count_trials, mask_url
from autotune.settings import Settings


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Single objective: complete feasible trials, best first. Two: the Pareto front."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if all(v <= 0 for v in constraint_values(t))]
    if len(study.directions) > 1:
        front = study.best_trials
        return sorted(front, key=lambda t: -t.values[0])
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(complete, key=lambda t: sign * t.value)


def knee(trials: list[FrozenTrial], directions: list[Any]) -> FrozenTrial:
    """The Pareto point nearest the ideal corner once each objective is scaled to [0, 1]."""
    if len(trials) == 1:
        return trials[0]
    cols = list(zip(*[t.values for t in trials]))
    def scaled(t: FrozenTrial) -> float:
        total = 0.0
        for i, d in enumerate(directions):
            lo, hi = min(cols[i]), max(cols[i])
            span = (hi - lo) or 1.0
            good = (hi - t.values[i]) if d == optuna.study.StudyDirection.MAXIMIZE \
                else (t.values[i] - lo)
            total += (good / span) ** 2
        return math.sqrt(total)
    return min(trials, key=scaled)


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """`--pick N`, else the best (single objective) or the Pareto knee (both)."""
    best = best_trials(study)
    if not best:
        raise UserError(f"study {study.study_name!r} has no completed feasible trial to save")
    if number is None:
        return best[0] if len(study.directions) == 1 else knee(best, study.directions)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number == number:
            return t
    raise UserError(f"--pick {number}: no completed trial with that number in study "
                    f"{study.study_name!r} (completed: "
                    f"{', '.join(str(t.number) for t in best[:10])}...)")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _gib(v: Any) -> str:
    return "-" if not v else f"{v / 2**30:.2f}"


def results_table(study: optuna.Study, objective: Objective, limit: int = 10,
                  chosen: int | None = None) -> Table:
    counts = count_trials(study)
    title = (f"study {study.study_name}: {counts.complete} complete, {counts.pruned} pruned, "
             f"{counts.rejected} rejected before running, {counts.failed} failed")
    kind = "Pareto front" if len(objective.directions) > 1 else "best trials"
    table = Table(title=f"{title}\n{kind}", title_justify="left")
    rows = []
    for t in best_trials(study)[:limit]:
        s = t.user_attrs.get("settings") or {}
        rows.append([f"{t.number}{' *' if t.number == chosen else ''}",
                     *[_fmt(v) for v in t.values],
                     _fmt(s.get("batch_size")), _fmt(s.get("accumulate_grad_batches")),
                     _fmt(s.get("effective_batch_size")), _fmt(s.get("reduce_ratio")),
                     _fmt(s.get("num_workers")), _fmt(t.user_attrs.get("lr")),
                     _fmt(t.user_attrs.get("elapsed_s")),
                     _gib(t.user_attrs.get("peak_rss_bytes")),
                     _gib(t.user_attrs.get("predicted_memory_bytes"))])
    header = ["trial", *[f"{n} ({'max' if d == 'maximize' else 'min'})"
                         for n, d in zip(objective.names, objective.directions)],
              "batch", "accum", "eff.batch", "ratio", "workers", "lr", "time s",
              "peak RSS GiB", "pred. GiB"]
    # Columns with nothing in them (lr when not searched, no memory model) only cost width.
    keep = [i for i in range(len(header)) if i < 1 + len(objective.names)
            or any(r[i] != "-" for r in rows)]
    for i in keep:
        table.add_column(header[i], justify="right")
    for r in rows:
        table.add_row(*[r[i] for i in keep])
    return table


def profile_path(name: str) -> Path:
    """Where `--save-profile NAME` writes: a path as given, else the profiles folder."""
    from autotune.profile import resolve_profile_path
    return resolve_profile_path(name)


def _hardware() -> dict[str, Any]:
    from autotune import hardware
    info = hardware.inventory()
    data = info.to_dict()
    data["gpus"] = [{**g, "capability": list(g["capability"])} for g in data["gpus"]]
    return data


def build_profile(name: str, trial: FrozenTrial, study: optuna.Study, objective: Objective,
                  base_profile: dict[str, Any] | None, storage_url: str,
                  workload: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 profile whose settings are the chosen trial's; `smt.train --profile` reads it."""
    settings = Settings.from_dict(trial.user_attrs["settings"])
    values = dict(zip(objective.names, trial.values))
    measured = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
    why = f"Optuna study {study.study_name!r} trial {trial.number} ({objective.name}: {measured})"
    base_reasons = (base_profile or {}).get("reasons") or {}
    searched = trial.params.keys()
    reasons = {}
    for key in settings.to_dict():
        if key in searched or (key == "accumulate_grad_batches"
                               and "effective_batch_size" in searched):
            reasons[key] = f"searched: {why}"
        else:
            reasons[key] = base_reasons.get(key, "kept from the search's base settings")
    base_sources = (base_profile or {}).get("sources") or {}
    sources = {k: ("measured" if reasons[k].startswith("searched") else
                   base_sources.get(k, "default")) for k in reasons}
    search = {"study": study.study_name, "storage": mask_url(storage_url),
              "objective": objective.name, "trial": trial.number,
              "values": values, "params": dict(trial.params),
              "elapsed_s": trial.user_attrs.get("elapsed_s"),
              "peak_rss_bytes": trial.user_attrs.get("peak_rss_bytes"),
              "peak_memory_bytes": trial.user_attrs.get("peak_memory_bytes"),
              "predicted_memory_bytes": trial.user_attrs.get("predicted_memory_bytes"),
              "steps": trial.user_attrs.get("steps")}
    # The base profile's details (its predicted peaks, budgets) describe its own choice, not
    # this one: only name where the search started.
    details: dict[str, Any] = {}
    if base_profile is not None:
        details["base_profile"] = base_profile.get("name")
    if trial.user_attrs.get("lr") is not None:
        # Not a `settings` key (those are fixed by the schema): the trainer's learning rate.
        details["lr"] = trial.user_attrs["lr"]
    details["search"] = {"study": study.study_name, "trial": trial.number}
    workload_section = dict(workload) if workload.get("fingerprint") else \
        {**((base_profile or {}).get("workload") or {}), **workload}
    workload_section.setdefault("fingerprint", "")
    return {
        "schema": 1,
        "name": Path(name).stem if name.endswith(".json") else name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": "probe",     # measured on this hardware, by real training runs
        # The trials ran here, whatever machine a --from profile described.
        "hardware": _hardware(),
        "workload": workload_section,
        "settings": settings.to_dict(),
        "reasons": reasons,
        "sources": sources,
        "details": details,
        "measurements": {**((base_profile or {}).get("measurements") or {}), "search": search},
    }


def save_profile(profile: dict[str, Any], name: str) -> Path:
    """Validate through autotune.profile (what smt.train reads) and write atomically."""
    from autotune.profile import Profile
    from autotune.profile import save_profile as save
    path = profile_path(name)
    return save(Profile.from_dict(profile, source=path), path)


def write_plots(study: optuna.Study, objective: Objective, out_dir: Path) -> list[Path]:
    """Optimization history (one per objective) and, for two objectives, the Pareto front."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        multi = len(objective.directions) > 1
        for i, name in enumerate(objective.names):
            kw: dict[str, Any] = {"target_name": name}
            if multi:
                kw["target"] = (lambda t, i=i: t.values[i])
            ax = ovm.plot_optimization_history(study, **kw)
            path = out_dir / f"history_{_slug(name)}.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
        if multi:
            ax = ovm.plot_pareto_front(study, target_names=list(objective.names))
            path = out_dir / "pareto_front.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def print_results(console: Console, study: optuna.Study, objective: Objective,
                  chosen: int | None = None) -> None:
    console.print(results_table(study, objective, chosen=chosen))
