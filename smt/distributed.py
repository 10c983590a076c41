"""Where DDP's sockets go: loopback only on one node, the named interface across nodes.

Two kinds of socket:
- The rendezvous store. Lightning's default `env://` starts torch's TCPStore, which listens on
  every interface (`::`) whatever MASTER_ADDR says: on a rented or shared machine a training
  run would accept connections from the network. On one node every rank shares the disk, so a
  `file://` store in the run folder does the same job. Multi-node runs keep `env://` (other
  nodes must reach it; torchrun and SLURM set it up).
- The collectives' pair sockets. Gloo binds them to whatever the hostname resolves to, and
  with the usual container setup (hostname -> the container's IP) that is the LAN address.
  On one node they are pinned to the loopback interface (gloo, tensorpipe and NCCL variables)
  unless the user set them; across nodes to the interface the user names.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autotune.errors import UserError
from smt.say import is_local_zero, say

# gloo, tensorpipe (torch RPC) and NCCL read one variable each; one name sets all three.
SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
# The interface for a multi-node run, for launchers where a flag is awkward (e.g. sbatch).
ENV_IFNAME = "SMT_DDP_INTERFACE"

from lightning.fabric.utilities.distributed import _init_dist_connection
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy


class LocalDDPStrategy(DDPStrategy):
    """`strategy="ddp"` for one node, rendezvous through `store_dir/ddp-<port>.store`."""

    def __init__(self, store_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._store_dir = Path(store_dir)

    def store_path(self) -> Path:
        # The launcher hands MASTER_PORT (fresh per launch) to every rank, so the name is the
        # same on all ranks and never that of a stale store from an earlier run in this folder.
        assert self.cluster_environment is not None
        return self._store_dir / f"ddp-{self.cluster_environment.main_port}.store"

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        assert self.cluster_environment is not None
        self._store_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"timeout": self._timeout,
                                  "init_method": self.store_path().resolve().as_uri()}
        if self.root_device.type != "cpu":
            kwargs["device_id"] = self.root_device
        _init_dist_connection(self.cluster_environment, self._process_group_backend, **kwargs)


def _interfaces() -> dict[str, list[str]]:
    """Interface name -> its IPv4/IPv6 addresses."""
    import psutil
    return {name: [a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
            for name, addrs in psutil.net_if_addrs().items()}


def loopback_interface() -> str:
    """The loopback interface's name (`lo` on Linux, `lo0` on macOS)."""
    for name, addrs in _interfaces().items():
        if "127.0.0.1" in addrs or "::1" in addrs:
            return name
    return "lo"


def check_interface(interface: str) -> dict[str, list[str]]:
    """The named interfaces (comma-separated, as gloo accepts) -> their addresses, or one line."""
    known = _interfaces()
    missing = [name for name in interface.split(",") if name not in known]
    if missing:
        raise UserError(f"--ddp-interface {interface}: no interface {', '.join(missing)} on "
                        f"{socket.gethostname()} (it has {', '.join(sorted(known))})")
    return {name: known[name] for name in interface.split(",")}


def _hostname_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        return f"unresolvable ({exc})"


def pin_sockets(num_nodes: int, interface: str | None = None,
                environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set the collectives' socket interface for this process and the ranks it starts.

    One node: loopback, unless the user set one of SOCKET_IFNAME_VARS. Several: `interface`
    (or SMT_DDP_INTERFACE), else the user's variables, else gloo's own choice (the address
    the hostname resolves to). Returns the line to print at start, None when there is nothing
    to say (one node on loopback).
    """
    interface = interface or environ.get(ENV_IFNAME) or None
    if interface:
        addrs = ", ".join(a for found in check_interface(interface).values() for a in found)
        for var in SOCKET_IFNAME_VARS:
            environ[var] = interface
        return f"DDP sockets bind to interface {interface} ({addrs}) on {socket.gethostname()}"
    user = {var: environ[var] for var in SOCKET_IFNAME_VARS if environ.get(var)}
    if user:
        return "DDP sockets bind as set: " + ", ".join(f"{k}={v}" for k, v in user.items())
    if num_nodes == 1:
        lo = loopback_interface()
        for var in SOCKET_IFNAME_VARS:
            environ[var] = lo
        return None
    return (f"DDP sockets bind to the address {socket.gethostname()} resolves to "
            f"({_hostname_address()}); name the interface the nodes share with "
            f"--ddp-interface NAME (or {ENV_IFNAME})")


def check_launch(num_nodes: int, devices: int,
                 environ: MutableMapping[str, str] = os.environ) -> None:
    """A multi-node run needs a launcher whose world matches the flags, else one line.

    Without one, rank 0 would wait for ranks that never come (30 minutes, then a traceback);
    with a world of another size, Lightning stops deep in its set-up.
    """
    if num_nodes == 1:
        return
    ranks = num_nodes * devices
    world = environ.get("WORLD_SIZE") or environ.get("SLURM_NTASKS")   # torchrun / srun
    if world is None:
        if environ.get("NODE_RANK") is not None and environ.get("MASTER_ADDR"):
            return       # Lightning's own launch: MASTER_ADDR/PORT and NODE_RANK on each node
        raise UserError(f"--num-nodes {num_nodes}: start it on every node with torchrun "
                        f"--nnodes {num_nodes} --nproc-per-node {devices} or srun (README: "
                        "several machines); no launcher found in the environment")
    if world.isdigit() and int(world) != ranks:
        raise UserError(f"--num-nodes {num_nodes} x --devices {devices} = {ranks} ranks, but "
                        f"the launcher started {world}; make --devices the processes per node")


@contextmanager
def pinned_sockets(num_nodes: int, interface: str | None = None,
                   environ: MutableMapping[str, str] = os.environ) -> Iterator[None]:
    """`pin_sockets` for the block (the process group and the ranks Lightning starts inherit
    the variables); on exit the variables are as before, so a later run in the same process
    (a notebook, a test) does not take them for the user's. Once per node, says where the
    sockets bind."""
    saved = {var: environ.get(var) for var in SOCKET_IFNAME_VARS}
    note = pin_sockets(num_nodes, interface, environ)
    if note and is_local_zero():
        say(note, every_rank=True)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                environ.pop(var, None)
            else:
                environ[var] = value


def make_strategy(strategy: str, devices: int, num_nodes: int, run_dir: str | Path) -> Any:
    """The Trainer's `strategy`: plain DDP on one node becomes the file-rendezvous kind."""
    if strategy == "ddp" and num_nodes == 1 and devices > 1:
        return LocalDDPStrategy(store_dir=run_dir)
    return strategy
