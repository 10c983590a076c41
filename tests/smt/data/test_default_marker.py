"""The embedded default dataset carries the cache marker (issue 13 item 12): `autotune cache`
lists it and `--clear` can remove it, like every other folder our tools put in the cache."""
from __future__ import annotations

import json

import pytest

import smt.data.default as default
from autotune.cli import main as autotune_main
from smt.paths import default_dataset_dir


def test_autotune_cache_lists_the_embedded_default_dataset(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(default, "COUNTS", {"train": 3, "val": 1, "test": 1})   # seconds, not a minute
    path = default.ensure_default_dataset(quiet=True)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["creator"] == "smt-autotune" and meta["kind"] == "default"
    capsys.readouterr()
    assert autotune_main(["cache"]) == 0
    listed = capsys.readouterr().out
    assert "1 cache(s)" in listed and "│ default │" in listed and "complete" in listed
    assert autotune_main(["cache", "--clear"]) == 0
    assert not default_dataset_dir(default.VERSION).exists()


def test_a_default_dataset_built_before_the_marker_gets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default, "COUNTS", {"train": 3, "val": 1, "test": 1})
    path = default.ensure_default_dataset(quiet=True)
    (path / "meta.json").unlink()
    assert default.ensure_default_dataset(quiet=True) == path
    assert json.loads((path / "meta.json").read_text())["creator"] == "smt-autotune"
