"""SMTConfig: presets build, bad fields fail at construction naming the field, JSON round trip."""
from __future__ import annotations

import json

import pytest

from smt.config import PRESETS, SMTConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip_through_json(name: str, tmp_path) -> None:
    config = SMTConfig.preset(name, vocab_size=97)
    assert config.vocab_size == 97
    path = config.save(tmp_path / "config.json")
    assert json.loads(path.read_text())["vocab_size"] == 97
    assert SMTConfig.load(path) == config
    assert SMTConfig.from_dict(config.to_dict()) == config


def test_preset_changes_override_and_unknown_preset_is_named() -> None:
    assert SMTConfig.preset("paper").d_model == 256
    assert SMTConfig.preset("debug", max_seq_len=64).max_seq_len == 64
    with pytest.raises(ValueError, match="huge"):
        SMTConfig.preset("huge")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vocab_size": 3}, "vocab_size"),
        ({"vocab_size": 10.0}, "vocab_size"),
        ({"max_height": 8}, "max_height"),
        ({"max_width": 0}, "max_width"),
        ({"max_seq_len": 1}, "max_seq_len"),
        ({"in_channels": 0}, "in_channels"),
        ({"encoder_widths": (64, 128)}, "encoder_widths"),
        ({"encoder_depths": (3, 0, 9)}, "encoder_depths"),
        ({"encoder_widths": (64, 128, 512)}, "encoder_widths"),
        ({"n_heads": 3}, "n_heads"),
        ({"d_model": 254, "encoder_widths": (64, 128, 254), "n_heads": 2}, "d_model"),
        ({"n_layers": 0}, "n_layers"),
        ({"ff_dim": -1}, "ff_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"pad_id": 181}, "pad_id"),
        ({"eos_id": True}, "eos_id"),
        ({"bos_id": 0}, "distinct"),
    ],
)
def test_invalid_fields_raise_value_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SMTConfig.preset("paper", **changes)


def test_unknown_keys_and_bad_files_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="colour"):
        SMTConfig.from_dict({"colour": 3})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        SMTConfig.load(bad)


def test_feature_grid_is_the_image_bound_divided_by_16_rounded_up() -> None:
    config = SMTConfig.preset("paper", max_height=3508, max_width=2480)
    assert (config.grid_height, config.grid_width) == (220, 155)
