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
        assert proc.poll() is None, f"the run ended before {what}"
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


# The first builder holds its build until the test says go (the file `go` appears), so that
# the second process surely arrives mid-build, however loaded the machine; without the gate
# the second could start after the first finished and never meet the lock.
_GATED_BUILD = """
import sys, time
from pathlib import Path
import smt.data.default as d
d.COUNTS = {{'train': 40, 'val': 4, 'test': 4}}
build = d._build
def gated(path, quiet):
    Path({building!r}).touch()
    deadline = time.monotonic() + 120
    while not Path({go!r}).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    build(path, quiet)
d._build = gated
print(d.ensure_default_dataset(), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_building_the_default_dataset_both_succeed(tmp_path: Path) -> None:
    """The second process waits (says so), then reuses the first's build: one build only."""
    cache, go = tmp_path / "cache", tmp_path / "go"
    building = [tmp_path / f"building{i}" for i in range(2)]     # touched as a build starts
    logs = [(tmp_path / f"out{i}", tmp_path / f"err{i}") for i in range(2)]

    def start(i: int) -> subprocess.Popen:
        code = _GATED_BUILD.format(building=str(building[i]), go=str(go))
        out, err = logs[i]
        return subprocess.Popen([sys.executable, "-c", code], env=_env(cache),
                                stdout=out.open("w"), stderr=err.open("w"))
    procs = [start(0)]
    try:
        _wait_for(building[0].exists, procs[0], "first build")
        procs.append(start(1))
        # Mid-build the second must wait for the lock; without it, it starts a build too.
        _wait_for(lambda: "waiting for another process" in logs[1][1].read_text()
                  or building[1].exists(), procs[1], "wait message from the second process")
        assert not building[1].exists(), "the second process built instead of waiting"
        go.touch()
        for p in procs:
            p.wait(timeout=240)
    finally:
        go.touch()
        for p in procs:
            p.kill()
    texts = [(out.read_text(), err.read_text()) for out, err in logs]
    for p, (_out, err) in zip(procs, texts):
        assert p.returncode == 0, err
    (out1, _err1), (out2, err2) = texts
    built = "building the embedded default dataset"
    assert built in out1 and built not in out2      # one build: the second reused the first's
    assert "waiting for another process to finish building the default dataset" in err2
    paths = {out.strip().splitlines()[-1] for out, _ in texts}
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
