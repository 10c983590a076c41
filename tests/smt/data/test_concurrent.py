"""Two processes preparing the same data at once (two notebooks, two DDP ranks): the second
waits with a message and reuses the first's result, instead of removing its shards (issue 13
item 4). Real processes through the real CLI; slow (seconds of injected per-row delay)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from smt.paths import ENV_CACHE


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **{ENV_CACHE: str(cache)}, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[3]),
                                                    env.get("PYTHONPATH", "")) if p)
    return env


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"the first run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_second_preparation_waits_then_reuses_the_first(synth_raw_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # ~0.4 s a row: the first run is still mapping when the second arrives.
    env = _env(cache, SMT_PREPARE_FAULT="sleep_ms=400")
    cmd = [sys.executable, "-m", "smt.data", "prepare", "--data", str(synth_raw_dir),
           "--shard-rows", "8", "--out"]
    first = subprocess.Popen(cmd + [str(tmp_path / "a")], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

    def started() -> bool:
        metas = list(cache.glob("prepared/*/meta.json"))
        return bool(metas) and not json.loads(metas[0].read_text())["complete"]
    try:
        _wait_for(started, first, "preparation start")
        second = subprocess.run(cmd + [str(tmp_path / "b")], env=env, capture_output=True,
                                text=True, timeout=240)
        out1, err1 = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 0, second.stderr
    assert "waiting for another preparation" in second.stderr
    assert "reusing cached preparation" in second.stdout
    a, b = (datasets.load_from_disk(str(tmp_path / n)) for n in ("a", "b"))
    for split in ("train", "val", "test"):
        assert a[split]["transcription"] == b[split]["transcription"]
        assert len(a[split]) > 0 or split != "train"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_building_the_default_dataset_both_succeed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = ("import smt.data.default as d; d.COUNTS = {'train': 40, 'val': 4, 'test': 4}; "
            "print(d.ensure_default_dataset())")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    dd = datasets.load_from_disk(paths.pop())
    assert {k: len(v) for k, v in dd.items()} == {"train": 40, "val": 4, "test": 4}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ddp_ranks_starting_together_prepare_once(synth_raw_dir: Path, tmp_path: Path) -> None:
    """torchrun starts every rank at once and each prepares: one maps, the other waits and
    reuses (before the lock, one removed the other's shards)."""
    import socket
    cache = tmp_path / "cache"
    env = _env(cache, SMT_PREPARE_FAULT="sleep_ms=100")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "smt.train",
           "--data", str(synth_raw_dir), "--preset", "debug", "--devices", "2", "--strategy",
           "ddp", "--num-workers", "0", "--precision", "32-true", "--batch-size", "2",
           "--max-steps", "1", "--patience", "0", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=560,
                          cwd=str(Path(__file__).resolve().parents[3]))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list(cache.glob("prepared/*/meta.json"))) == 1
    assert (tmp_path / "run" / "summary.json").is_file()
