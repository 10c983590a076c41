"""Preparation survives faults: SIGKILL mid-run resumes shard-exactly; the watchdog turns a
stall or a RAM spike into lighter settings instead of a hang or an OOM kill.

These run real child processes (the CLI, the spawned shard workers) with faults injected
through SMT_PREPARE_FAULT, so they take seconds each and are marked slow.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.measure import tree_rss_bytes
from smt.data.prepare import PrepareConfig, prepare
from smt.paths import ENV_CACHE


def _same(a, b) -> None:
    assert set(a) == set(b)
    for split in a:
        assert a[split]["transcription"] == b[split]["transcription"], split
        ia = a[split].with_format("arrow")["image"].to_pylist()
        ib = b[split].with_format("arrow")["image"].to_pylist()
        assert [x["bytes"] for x in ia] == [x["bytes"] for x in ib], split


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_run_resumes_only_unfinished_shards(synth_raw_dir, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    env = dict(os.environ, **{ENV_CACHE: str(cache), "SMT_PREPARE_FAULT": "sleep_ms=250"})
    cmd = [sys.executable, "-m", "smt.data", "prepare", "--data", str(synth_raw_dir),
           "--shard-rows", "8", "--writer-batch-size", "4"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list(cache.glob("prepared/*/shards/*/done.json")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)          # the whole run: CLI, shard child, workers
        proc.wait()
    done_before = {p.parent.name for p in cache.glob("prepared/*/shards/*/done.json")}
    assert 1 <= len(done_before) < 4                  # train-0 (+ maybe train-1) of 4 shards
    time.sleep(1.0)                                   # any orphan would have written by now
    assert {p.parent.name for p in cache.glob("prepared/*/shards/*/done.json")} == done_before

    monkeypatch.setenv(ENV_CACHE, str(cache))
    monkeypatch.delenv("SMT_PREPARE_FAULT", raising=False)
    resumed = prepare(synth_raw_dir, PrepareConfig(shard_rows=8, writer_batch_size=4), quiet=True)
    assert resumed.shards_total == 4 and resumed.shards_reused == len(done_before)
    assert "resumed:" in resumed.summary()

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "clean"))
    clean = prepare(synth_raw_dir, PrepareConfig(shard_rows=8, isolate=False), quiet=True)
    _same(resumed.dataset, clean.dataset)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_watchdog_stops_a_stalled_map_and_continues_lighter(synth_raw_dir, monkeypatch) -> None:
    # The map hangs after 2 rows while writer_batch_size > 50, like the user's frozen 9%.
    monkeypatch.setenv("SMT_PREPARE_FAULT", "stall_after=2;above_wbs=50")
    res = prepare(synth_raw_dir, PrepareConfig(writer_batch_size=100, stall_timeout_s=3.0),
                  quiet=True)
    assert [a.reason for a in res.actions] == ["stall"]
    a = res.actions[0]
    assert (a.writer_batch_size_before, a.writer_batch_size_after) == (100, 50)
    assert a.num_proc_after == a.num_proc_before == 1
    assert res.writer_batch_size == 50 and res.rows_kept == {"train": 16, "val": 4, "test": 4}
    assert "watchdog: shard train-00000: stall" in res.summary()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_watchdog_acts_before_the_ram_budget(synth_raw_dir, monkeypatch) -> None:
    # While writer_batch_size > 50 each shard worker holds 1.2 GB more: over the budget below.
    monkeypatch.setenv("SMT_PREPARE_FAULT", "ram_mb=1200;sleep_ms=300;above_wbs=50")
    budget = tree_rss_bytes() + 2**30
    res = prepare(synth_raw_dir, PrepareConfig(writer_batch_size=100, ram_budget_bytes=budget,
                                               stall_timeout_s=60),
                  quiet=True)
    assert [a.reason for a in res.actions] == ["ram"]
    assert res.writer_batch_size == 50
    assert sum(res.rows_kept.values()) == 24


def test_lowering_order_is_writer_batch_then_num_proc() -> None:
    from smt.data.prepare import _lower
    assert _lower(4, 100) == (4, 50)
    assert _lower(4, 12) == (4, 10)
    assert _lower(4, 10) == (2, 10)
    assert _lower(1, 10) == (1, 10)          # nothing lighter: the caller gives up with a message
