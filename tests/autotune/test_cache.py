"""`autotune cache`: lists and removes only the caches smt-autotune created."""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console

from autotune import cache
from smt.paths import cache_root, prepared_root

DAY = 86400


def _make(folder: Path, meta: dict | str | None, payload_bytes: int = 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "data-00000-of-00001.arrow").write_bytes(b"x" * payload_bytes)
    if meta is not None:
        text = meta if isinstance(meta, str) else json.dumps(meta)
        (folder / "meta.json").write_text(text)
    return folder


def _ours(age_days: float, source: str = "user/grandstaff", **params) -> dict:
    created = datetime.now(timezone.utc) - timedelta(days=age_days)
    return {"creator": "smt-autotune", "kind": "prepared", "source": source,
            "created": created.isoformat(), "complete": age_days > 5,
            "params": params or {"reduce_ratio": 0.5, "num_proc": 1}}


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="autotune")
    cache.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cache", *argv])
    console = Console(record=True, width=200)
    code = args.func(args, console=console)
    return code, console.export_text()


@pytest.fixture
def tree() -> dict[str, Path]:
    """Two of our caches (2 and 10 days old), one embedded-data cache, and three folders we did
    not create: a user's folder with its own meta.json, one without a marker, a broken marker."""
    pr = prepared_root()
    return {
        "new": _make(pr / "a1b2c3", _ours(2, reduce_ratio=0.5), 3000),
        "old": _make(pr / "d4e5f6", _ours(10, source="/data/pages", reduce_ratio=1.0), 5000),
        "default": _make(cache_root() / "default" / "v1", _ours(30, source="embedded")),
        "foreign": _make(pr / "my-own-data", {"creator": "someone-else", "source": "x"}),
        "unmarked": _make(pr / "unmarked", None),
        "broken": _make(pr / "broken", "{not json"),
        "loose_file": _loose(pr / "notes.txt"),
    }


def _loose(path: Path) -> Path:
    path.write_text("keep me")
    return path


def test_lists_only_our_caches_with_size_age_source_settings(tree) -> None:
    code, out = _run()
    assert code == 0
    for name in ("a1b2c3", "d4e5f6", "v1", "user/grandstaff", "/data/pages", "reduce_ratio=0.5"):
        assert name in out
    assert "10.0 d" in out and "2.0 d" in out
    assert "partial" in out and "complete" in out  # a preparation cut short shows as such
    assert "my-own-data" not in out.split("left alone")[0]
    assert "left alone: 3 folder(s)" in out
    entries, foreign = cache.find_caches()
    assert {e.path.name: e.size_bytes for e in entries} == {
        "a1b2c3": 3000 + len(json.dumps(_ours(2, reduce_ratio=0.5))),
        "d4e5f6": 5000 + len((tree["old"] / "meta.json").read_text()),
        "v1": 1000 + len((tree["default"] / "meta.json").read_text())}
    assert [e.path.name for e in entries] == ["v1", "d4e5f6", "a1b2c3"]  # oldest first
    assert sorted(p.name for p in foreign) == ["broken", "my-own-data", "unmarked"]
    assert all(tree[k].exists() for k in tree)  # listing deletes nothing


def test_clear_removes_ours_and_nothing_else(tree) -> None:
    code, out = _run("--clear")
    assert code == 0 and "removed 3 cache(s)" in out
    for key in ("new", "old", "default"):
        assert not tree[key].exists()
    for key in ("foreign", "unmarked", "broken", "loose_file"):
        assert tree[key].exists()
    assert (tree["unmarked"] / "data-00000-of-00001.arrow").read_bytes() == b"x" * 1000
    assert not [p for p in prepared_root().iterdir() if ".deleting-" in p.name]


@pytest.mark.parametrize("days, removed, kept", [
    ("5", {"old", "default"}, {"new"}),
    ("20", {"default"}, {"new", "old"}),
    ("100", set(), {"new", "old", "default"}),
])
def test_clear_older_than(tree, days, removed, kept) -> None:
    code, _ = _run("--clear", "--older-than", days)
    assert code == 0
    assert {k for k in ("new", "old", "default") if not tree[k].exists()} == removed
    assert {k for k in ("new", "old", "default") if tree[k].exists()} == kept
    assert tree["foreign"].exists() and tree["unmarked"].exists()


def test_symlinked_folder_is_never_followed(tmp_path) -> None:
    outside = _make(tmp_path / "elsewhere", _ours(50))
    prepared_root().mkdir(parents=True)
    os.symlink(outside, prepared_root() / "link")
    code, out = _run("--clear")
    assert code == 0 and "no smt-autotune caches" in out
    assert (outside / "meta.json").exists()


def test_marker_removed_after_listing_is_respected(tree) -> None:
    entries, _ = cache.find_caches()
    (tree["new"] / "meta.json").unlink()  # e.g. the user took the folder over
    entry = next(e for e in entries if e.path == tree["new"])
    with pytest.raises(cache.UserError, match="left alone"):
        cache.remove_cache(entry)
    assert tree["new"].exists()


def test_age_falls_back_to_marker_mtime() -> None:
    folder = _make(prepared_root() / "k", {"creator": "smt-autotune", "source": "s"})
    three_days_ago = time.time() - 3 * DAY
    os.utime(folder / "meta.json", (three_days_ago, three_days_ago))
    (entry,), _ = cache.find_caches()
    assert entry.age_s == pytest.approx(3 * DAY, abs=60)


def test_empty_cache_root_says_so() -> None:
    code, out = _run()
    assert code == 0 and "no smt-autotune caches" in out


@pytest.mark.parametrize("bad", ["-1", "soon"])
def test_bad_older_than_is_a_one_line_error(bad, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _run("--older-than", bad)
    assert exc.value.code == 2
    assert "--older-than" in capsys.readouterr().err


def test_registered_on_the_autotune_cli(tree, capsys) -> None:
    from autotune.cli import main
    assert main(["cache", "--clear", "--older-than", "5"]) == 0
    assert "removed 2 cache(s)" in capsys.readouterr().out
    assert tree["new"].exists() and not tree["old"].exists() and tree["foreign"].exists()


def test_another_workloads_layout_and_marker(tmp_path) -> None:
    """The command knows no SMT paths: a workload's declared layout and marker decide."""
    from autotune.workload import CacheLayout
    layout = CacheLayout(root=tmp_path, folders=(("things", tmp_path / "things"),),
                         marker_file="made-by.json", creator="other-tool")
    _make(tmp_path / "things" / "ours", None)
    (tmp_path / "things" / "ours" / "made-by.json").write_text('{"creator": "other-tool"}')
    _make(tmp_path / "things" / "smt-style", _ours(1))            # meta.json: not this marker
    entries, foreign = cache.find_caches(layout=layout)
    assert [e.path.name for e in entries] == ["ours"] and entries[0].kind == "things"
    assert [p.name for p in foreign] == ["smt-style"]
