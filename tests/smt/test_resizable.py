"""smt.data.resizable: changing a running loader's workers keeps the epoch's samples, each
once and in order, and leaves no worker process behind."""
from __future__ import annotations

import time

import psutil
import pytest
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from smt.data.resizable import ResizableLoader


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _workers() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _wait_gone(pids: set[int], timeout_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = {p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if not alive:
            return alive
        time.sleep(0.05)
    return alive


# (workers at the start, {batch index: workers from that batch on})
SWITCHES = [
    (0, {3: 2}),
    (2, {2: 0}),
    (1, {1: 2, 5: 1, 6: 0, 9: 2}),
    (2, {0: 1}),                   # before the first batch: never starts the old workers
]


@pytest.mark.parametrize("start, switch_at", SWITCHES)
def test_each_sample_once_in_order_across_worker_changes(start: int, switch_at: dict[int, int]
                                                         ) -> None:
    before = _workers()
    torch.manual_seed(0)
    loader = ResizableLoader(_Indices(45), batch_size=4, shuffle=True, num_workers=start,
                             persistent_workers=start > 0)
    order = torch.Generator().manual_seed(0)
    expected = [b for b in torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(range(45), generator=order), 4, False)]
    got: list[list[int]] = []
    if 0 in switch_at:
        loader.request_workers(switch_at[0])
    for epoch in range(2):
        loader.sampler.generator = torch.Generator().manual_seed(0)
        for i, batch in enumerate(loader):
            got.append(batch.tolist())
            # exactly the workers asked for are alive: the old ones were joined at the change
            assert len(_workers() - before) == loader.num_workers
            if epoch == 0 and i + 1 in switch_at:
                loader.request_workers(switch_at[i + 1])
    assert got == [list(b) for b in expected] * 2      # nothing repeated, lost or reordered
    assert loader.num_workers == list(switch_at.values())[-1]
    loader.close()
    assert not _wait_gone(_workers() - before)


def test_old_workers_are_gone_after_a_change() -> None:
    before = _workers()
    loader = ResizableLoader(_Indices(40), batch_size=2, num_workers=2, persistent_workers=True)
    it = iter(loader)
    next(it)
    old = _workers() - before
    assert len(old) == 2
    loader.request_workers(1)
    next(it)
    assert not _wait_gone(old)                          # joined, not left to the GC
    assert len(_workers() - before) == 1
    rest = list(it)
    assert len(rest) == 18
    loader.close()
    assert not _wait_gone(_workers() - before)


def test_distributed_sampler_shards_survive_a_change() -> None:
    """Lightning swaps in a DistributedSampler under DDP; each rank keeps its own shard."""
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(_Indices(20), num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(3)
        loader = ResizableLoader(_Indices(20), batch_size=3, sampler=sampler, num_workers=0)
        got = []
        for i, batch in enumerate(loader):
            got += batch.tolist()
            if i == 1:
                loader.request_workers(1)
        loader.close()
        sampler.set_epoch(3)
        assert got == list(sampler)
        shards.append(set(got))
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 20


def test_lightning_rebuilds_it_with_a_distributed_sampler() -> None:
    """What Lightning does under DDP with use_distributed_sampler=True: re-instantiate the
    loader with a DistributedSampler; the copy must still be a ResizableLoader."""
    from lightning.fabric.utilities.data import _update_dataloader
    loader = ResizableLoader(_Indices(10), batch_size=2, shuffle=True, num_workers=1)
    copy = _update_dataloader(loader, DistributedSampler(_Indices(10), num_replicas=2, rank=1))
    assert type(copy) is ResizableLoader and isinstance(copy.sampler, DistributedSampler)
    assert copy.num_workers == 1 and copy.batch_size == 2
    assert sum(len(b) for b in copy) == 5
    copy.close()


@pytest.mark.parametrize("n", [-1])
def test_negative_workers_refused(n: int) -> None:
    with pytest.raises(ValueError, match="n must be"):
        ResizableLoader(_Indices(4), batch_size=2).request_workers(n)
