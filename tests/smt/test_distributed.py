"""Where DDP's sockets bind (smt.distributed.pin_sockets); the real runs are in
tests/test_bad_input.py (loopback on one node) and tests/smt/test_multinode.py."""
from __future__ import annotations

import pytest

from autotune.errors import UserError
from smt.distributed import SOCKET_IFNAME_VARS, loopback_interface, pin_sockets


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
