"""Where DDP's sockets bind (smt.distributed.pin_sockets); the real runs are in
tests/test_bad_input.py (loopback on one node) and tests/smt/test_multinode.py."""
from __future__ import annotations

import pytest

from autotune.errors import UserError
from autotune.errors import run_cli
from smt.distributed import SOCKET_IFNAME_VARS, check_launch, loopback_interface, pin_sockets
from smt.train import main


def test_one_node_pins_loopback_unless_the_user_chose():
    env: dict[str, str] = {}
    assert pin_sockets(1, environ=env) is None
    assert env == {v: loopback_interface() for v in SOCKET_IFNAME_VARS}
    env = {"GLOO_SOCKET_IFNAME": "eth7"}
    assert "GLOO_SOCKET_IFNAME=eth7" in pin_sockets(1, environ=env)
    assert env == {"GLOO_SOCKET_IFNAME": "eth7"}


def test_several_nodes_bind_the_named_interface_and_say_so():
    env: dict[str, str] = {}
    assert "interface lo (127.0.0.1" in pin_sockets(2, "lo", environ=env)
    assert all(env[v] == "lo" for v in SOCKET_IFNAME_VARS)
    env = {"SMT_DDP_INTERFACE": "lo"}
    assert "interface lo" in pin_sockets(2, environ=env)
    env = {}
    assert "--ddp-interface" in pin_sockets(2, environ=env) and env == {}   # gloo's own choice
    with pytest.raises(UserError, match="no interface nope0 on"):
        pin_sockets(2, "nope0", environ={})


@pytest.mark.parametrize("env, message", [
    ({}, "start it on every node with torchrun --nnodes 2 --nproc-per-node 1"),
    ({"WORLD_SIZE": "3"}, "= 2 ranks, but the launcher started 3"),
    ({"SLURM_NTASKS": "4"}, "= 2 ranks, but the launcher started 4"),
])
def test_several_nodes_without_a_matching_launcher_is_one_line(monkeypatch, capsys, tmp_path,
                                                               env, message):
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "NODE_RANK", "MASTER_ADDR", "RANK", "LOCAL_RANK",
                "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # SLURM_PROCID etc. unset: this process is rank 0 and plans the run itself.
    code = run_cli(main, ["--num-nodes", "2", "--devices", "1", "--max-steps", "1",
                          "--out", str(tmp_path / "r")], prog="smt.train")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()                 # stopped before any work


def test_a_launcher_with_the_right_world_passes():
    check_launch(2, 2, environ={"WORLD_SIZE": "4"})
    check_launch(2, 1, environ={"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    check_launch(1, 1, environ={})
