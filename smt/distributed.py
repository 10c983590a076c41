"""Single-node DDP that meets through a file in the run folder instead of a TCP port.

Lightning's default `env://` rendezvous starts torch's TCPStore, which listens on every
interface (`::`) whatever MASTER_ADDR says: on a rented or shared machine a training run
would accept connections from the network. On one node every rank shares the disk, so a
`file://` store in the run folder does the same job and leaves only gloo/NCCL's own
loopback sockets. Multi-node runs keep `env://` (the launcher's address is the point there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def make_strategy(strategy: str, devices: int, num_nodes: int, run_dir: str | Path) -> Any:
    """The Trainer's `strategy`: plain DDP on one node becomes the file-rendezvous kind."""
    if strategy == "ddp" and num_nodes == 1 and devices > 1:
        return LocalDDPStrategy(store_dir=run_dir)
    return strategy
