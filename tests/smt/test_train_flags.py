"""One source of truth for a run's settings: every flag pairs with a TrainConfig (or Settings)
field, names its default from there, and `merge` layers defaults < resumed < profile < flags."""
from __future__ import annotations

import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from autotune.errors import UserError
from autotune.settings import Settings
from smt.train.cli import build_parser
from smt.train.planner import PLAN_FLAG, plan_run, ranks_read_plan
from smt.runconfig import (AUGMENTS, CURRICULUM_FLAGS, DEFAULTS, FLAG_OF, OFF_FLAGS, RUN_FLAGS,
                                 SETTINGS_FLAGS, CurriculumConfig, Layers, TrainConfig, dest,
                                 merge)

ACTIONS = {flag: action for action in build_parser()._actions for flag in action.option_strings}


def _default_text(value: Any) -> str:
    return f"default {value:g}" if isinstance(value, float) else f"default {value}"


@pytest.mark.parametrize("field, flag", sorted(FLAG_OF.items()))
def test_every_field_has_its_flag_and_the_flag_names_the_default(field: str, flag: str) -> None:
    action = ACTIONS.get(flag)
    assert action is not None, f"{flag} (for {field}) is not a flag"
    assert action.dest == dest(flag)
    # Not given = None, so that merge can tell a flag from the lower layers.
    assert action.default in (None, False)
    if field in SETTINGS_FLAGS:
        assert field in {f.name for f in fields(Settings)}
        return
    owner = TrainConfig if field in RUN_FLAGS or field in OFF_FLAGS else CurriculumConfig
    default = {f.name: f.default for f in fields(owner)}[field]
    if default is None or isinstance(default, bool) or default == -1:
        return                  # "not set", said in words where it matters
    assert _default_text(default) in (action.help or ""), (flag, action.help)


def test_every_setting_and_run_value_a_user_may_set_has_a_flag() -> None:
    decided = {"out", "settings", "cpu_demo", "resume_ckpt", "profile", "curriculum"}
    assert {f.name for f in fields(TrainConfig)} - decided == set(RUN_FLAGS) | set(OFF_FLAGS)
    assert {f.name for f in fields(Settings)} - {"effective_batch_size"} == set(SETTINGS_FLAGS)
    assert {f.name for f in fields(CurriculumConfig)} == set(CURRICULUM_FLAGS)


def test_augment_names_are_the_augmentation_presets() -> None:
    from smt.data.augment import PRESETS
    assert set(AUGMENTS) == set(PRESETS)


def _layers(**changes: Any) -> Layers:
    base = Layers(defaults=DEFAULTS, demo={}, resumed={}, profile={}, flags={},
                  decided={"out": Path("r")})
    return replace(base, **changes)


@pytest.mark.parametrize("layers, lr, batch", [
    ({}, DEFAULTS.lr, Settings.batch_size),
    ({"demo": {"lr": 1e-3}}, 1e-3, Settings.batch_size),
    ({"demo": {"lr": 1e-3}, "resumed": {"lr": 2e-4, "settings": {"batch_size": 3}}}, 2e-4, 3),
    ({"resumed": {"lr": 2e-4, "settings": {"batch_size": 3}},
      "profile": {"lr": 3e-4, "settings": {"batch_size": 5}}}, 3e-4, 5),
    ({"resumed": {"lr": 2e-4}, "profile": {"lr": 3e-4, "settings": {"batch_size": 5}},
      "flags": {"lr": 5e-4, "batch_size": 7}}, 5e-4, 7),
], ids=["defaults", "demo", "resumed", "profile", "flags"])
def test_merge_layers_defaults_then_resumed_then_profile_then_flags(
        layers: dict[str, Any], lr: float, batch: int) -> None:
    config = merge(_layers(**layers))
    assert (config.lr, config.settings.batch_size) == (lr, batch)
    s = config.settings
    assert s.effective_batch_size == s.batch_size * s.accumulate_grad_batches * s.devices


@pytest.mark.parametrize("resumed, flags, expected", [
    ({"fmt": "kern"}, {"fmt": "ekern"}, "kern"),       # its vocabulary is in that format
    ({}, {"fmt": "ekern"}, "ekern"),
    ({}, {}, DEFAULTS.fmt),
])
def test_a_resumed_run_keeps_its_format(resumed: dict, flags: dict, expected: str) -> None:
    assert merge(_layers(resumed=resumed, flags=flags)).fmt == expected


def test_a_resumed_null_is_a_value_and_clipping_off_is_not_a_missing_flag() -> None:
    assert merge(_layers(resumed={"grad_clip": None})).grad_clip is None
    assert merge(_layers(flags={"grad_clip": None})).grad_clip is None
    assert merge(_layers()).grad_clip == DEFAULTS.grad_clip
    # Per machine: never from the resumed run.
    assert merge(_layers(resumed={"ddp_interface": "eth9"})).ddp_interface is None


@pytest.mark.parametrize("changes, message", [
    ({"flags": {"precision": "8-bit"}}, "--precision: precision must be one of"),
    ({"flags": {"batch_size": 10**9}}, "--batch-size: batch_size is absurdly large"),
    ({"flags": {"stage_steps": 0}, "curriculum": True}, "--stage-steps: stage_steps must be >= 1"),
    ({"resumed": {"patience": -1}}, "patience must be >= 0"),
])
def test_a_bad_value_names_its_flag_from_the_field(changes: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        merge(_layers(**changes))
    assert str(err.value).startswith(message) or message in str(err.value), str(err.value)
    if "flags" not in changes:
        assert "--" not in str(err.value)        # not a flag's fault: no flag named


def test_curriculum_defaults_resume_from_the_dict_every_run_json_holds() -> None:
    assert merge(_layers()).curriculum is None
    fresh = merge(_layers(curriculum=True, flags={"stage_steps": 7}))
    assert fresh.curriculum == CurriculumConfig(stage_steps=7, pretrain_steps=7)
    older = {"stage_steps": 2, "pretrain_steps": 3, "systems": None, "synthetic_share": 0.5,
             "max_systems": 3}
    resumed = merge(_layers(resumed={"curriculum": older}, flags={"max_systems": 4}))
    assert resumed.curriculum == CurriculumConfig(2, 3, None, 0.5, 4)
    record = json.loads(json.dumps(resumed.to_json()))
    assert record["curriculum"] == {**older, "max_systems": 4}
    assert TrainConfig.from_json(record) == resumed


def test_planning_without_flags_gives_the_dataclass_defaults(tmp_path: Path) -> None:
    plan = plan_run(build_parser().parse_args(["--max-steps", "1", "--out", str(tmp_path / "r")]))
    for name in RUN_FLAGS:
        if name != "max_steps":
            assert getattr(plan, name) == getattr(DEFAULTS, name), name


def test_ddp_ranks_lightning_starts_read_rank_zeros_plan(tmp_path: Path) -> None:
    plan = plan_run(build_parser().parse_args(["--max-steps", "2", "--lr", "0.002",
                                               "--out", str(tmp_path / "r")]))
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(plan.to_json()))
    before = list(sys.argv)
    with ranks_read_plan(run_json):
        assert sys.argv[-2:] == [PLAN_FLAG, str(run_json.resolve())]
        argv = sys.argv[1:]
    assert sys.argv == before                    # a later run in this process never sees it
    # What such a rank parses: the same flags (a different --out even) and the plan file.
    rank = plan_run(build_parser().parse_args(["--max-steps", "9", "--out", str(tmp_path / "x"),
                                               *argv[-2:]]))
    assert rank == plan
