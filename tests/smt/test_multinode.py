"""Multi-node training launched the standard ways, two "nodes" on loopback.

Both launches run in a network namespace the test makes (tests/netns.py): torch's TCPStore
listens on every interface of the namespace, and there the only one is loopback, so nothing
listens beyond loopback. Each "node" has its own data cache, as separate machines would.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import netns
from tiny_scores import FAST, tiny_dataset_dict

REPO = Path(__file__).resolve().parents[2]
PORT = "29431"   # inside the namespace: no other process can hold it


def _train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["-m", "smt.train", "--data", str(data), *FAST, "--batch-size", "1",
            "--num-nodes", "2", "--devices", "1", "--strategy", "ddp", "--max-steps", str(steps),
            "--ckpt-every", "1", "--val-every", "2", "--val-batches", "1", "--out", str(out),
            "--ddp-interface", "lo", *extra]


def _node_env(tmp_path: Path, node: int) -> dict[str, str]:
    cache = tmp_path / f"node{node}-cache"
    return {"SMT_AUTOTUNE_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "hf"),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _torchrun(tmp_path: Path, data: Path, out: Path, steps: int, tag: str, *extra: str) -> list[dict]:
    return [{"argv": [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                      "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", f"127.0.0.1:{PORT}", "--rdzv-id", f"smt-{tag}",
                      "--max-restarts", "0", *_train_args(data, out, steps, *extra)],
             "env": _node_env(tmp_path, node), "log": str(tmp_path / f"{tag}-node{node}.log")}
            for node in range(2)]


def _slurm(tmp_path: Path, data: Path, outs: list[Path], steps: int) -> list[dict]:
    """What `srun --nodes 2 --ntasks-per-node 1 python -m smt.train ...` gives each task."""
    return [{"argv": [sys.executable, *_train_args(data, outs[rank], steps)],
             "env": {**_node_env(tmp_path, rank), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "smt",
                     "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
                     "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank),
                     "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": PORT},
             "log": str(tmp_path / f"slurm-rank{rank}.log")}
            for rank in range(2)]


def _only_loopback(report: dict) -> None:
    seen = set(report["listening"])
    assert seen, "the run opened no listening socket at all"
    assert seen <= {"127.0.0.1", "::1", "0.0.0.0", "::"}, seen  # the namespace has only lo


@pytest.fixture
def data(tmp_path: Path) -> Path:
    netns.require("net")
    return tiny_dataset_dict(tmp_path / "tiny", n_train=4, n_val=1, n_test=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torchrun_two_nodes_train_count_every_rank_and_resume(tmp_path, data):
    run = tmp_path / "shared" / "run"          # the shared file system both nodes see
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    _only_loopback(netns.run(_torchrun(tmp_path, data, run, 2, "first"), tmp_path, env=env))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["world_size"] == 2
    assert summary["effective_batch_size"] == 2          # batch 1 x 1 device x 2 nodes
    assert summary["samples"] == 4                        # every rank's batches counted
    logs = "".join(Path(c["log"]).read_text() for c in _torchrun(tmp_path, data, run, 2, "first"))
    assert "x 2 node(s) = effective 2" in logs
    assert "DDP sockets bind to interface lo" in logs

    # The same launch again, resuming: both ranks load rank 0's checkpoint.
    netns.run(_torchrun(tmp_path, data, run, 4, "again", "--resume", str(run)), tmp_path, env=env)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples"] == 4      # 2 more steps x 2 ranks
    logs = "".join(Path(c["log"]).read_text()
                   for c in _torchrun(tmp_path, data, run, 4, "again"))
    assert "at step 2" in logs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_two_nodes_only_global_rank_zero_writes(tmp_path, data):
    # Separate run folders, as on nodes without a shared disk: rank 1 (local rank 0 on its
    # node) must leave its folder without checkpoints or summaries.
    outs = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    _only_loopback(netns.run(_slurm(tmp_path, data, outs, 2), tmp_path, env=env))
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 2
    assert (outs[0] / "checkpoints" / "last.ckpt").is_file()
    written = sorted(str(p.relative_to(outs[1])) for p in outs[1].rglob("*") if p.is_file()) \
        if outs[1].exists() else []
    assert not [p for p in written if p.endswith((".ckpt", "summary.json", "run.json",
                                                  "config.json", "metrics.csv"))], written
