"""A DataLoader whose number of worker processes can change while an epoch runs.

Why: the resource monitor (autotune.monitor) sees mid-run that the step waits for data, or
that RAM nears its budget; the fix is more or fewer loader workers, and a run must not have
to restart for it.

How: Lightning sees an ordinary DataLoader (this subclass keeps DataLoader's constructor), so
it injects its DistributedSampler under DDP and calls `set_epoch` as for any loader. Iterating
it runs an inner, plain DataLoader over the same dataset whose batch sampler draws the epoch's
index batches from the outer batch sampler through a ledger: every index batch drawn stays in
the ledger until its batch is delivered (workers deliver in order). `request_workers(n)` takes
effect at the next batch drawn: the inner loader's workers are shut down and joined, and a new
inner loader with `n` workers first loads the drawn-but-undelivered index batches again, then
continues the same epoch iterator. So within an epoch no sample is repeated or lost and the
batches keep their composition and order (the effective batch is untouched). What a change
costs: the batches the old workers had prefetched (up to workers x prefetch_factor) are loaded
again, and the new workers start up (a fork each). Workers are kept between epochs
(persistent) whenever there are any, as `smt.builder.make_loader`'s default.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter


class _Ledger:
    """One epoch's index batches: `source` the outer batch sampler's iterator, `pending` the
    batches drawn from it whose data has not been delivered yet, oldest first."""

    def __init__(self, source: Iterator[list[int]]) -> None:
        self.source = source
        self.pending: deque[list[int]] = deque()


class _LedgerSampler:
    """The inner loader's batch sampler: the undelivered batches again, then the rest."""

    def __init__(self, ledger: _Ledger, length: int) -> None:
        self.ledger = ledger
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[int]]:
        ledger = self.ledger
        yield from list(ledger.pending)     # drawn by workers that are gone: load them again
        for batch in ledger.source:
            ledger.pending.append(batch)
            yield batch


def _shutdown(iterator: Any) -> None:
    """Stop and join the worker processes (and the pin-memory thread) of a loader iterator."""
    if isinstance(iterator, _MultiProcessingDataLoaderIter):
        iterator._shutdown_workers()


class ResizableLoader(DataLoader):
    """A map-style DataLoader (with a batch sampler) whose `num_workers` can change mid-epoch
    through `request_workers`; otherwise it behaves as the DataLoader built with the same
    arguments."""

    def request_workers(self, n: int) -> None:
        """Use `n` worker processes from the next batch drawn on (0: load in this process)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        self.__dict__["_want"] = int(n)

    # Lightning shuts a loader's workers down at the end of fit through `loader._iterator`
    # (lightning.pytorch.utilities.combined_loader); point it at the inner loader's.
    @property
    def _iterator(self) -> Any:
        inner = self.__dict__.get("_inner")
        return None if inner is None else inner._iterator

    @_iterator.setter
    def _iterator(self, value: Any) -> None:
        inner = self.__dict__.get("_inner")
        if inner is not None:
            inner._iterator = value

    def __iter__(self) -> Iterator[Any]:
        if self.batch_sampler is None:
            raise ValueError("ResizableLoader needs a batch_size (a batch sampler)")
        ledger = _Ledger(iter(self.batch_sampler))
        return self._epoch(ledger)

    def _epoch(self, ledger: _Ledger) -> Iterator[Any]:
        it: Iterator[Any] | None = None
        while True:
            want = self.__dict__.pop("_want", None)
            if it is None or (want is not None and want != self.num_workers):
                it = self._inner_iter(ledger, self.num_workers if want is None else want)
            try:
                batch = next(it)
            except StopIteration:
                return
            ledger.pending.popleft()
            yield batch

    def _inner_iter(self, ledger: _Ledger, n: int) -> Iterator[Any]:
        """An iterator over the rest of the epoch with `n` workers; the inner loader (and its
        persistent workers) is kept while `n` stays the same."""
        inner = self.__dict__.get("_inner")
        if inner is not None and inner.num_workers != n:
            self.close()
            inner = None
        if inner is None:
            inner = DataLoader(
                self.dataset, batch_sampler=_LedgerSampler(ledger, len(self.batch_sampler)),
                num_workers=n, collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                timeout=self.timeout if n else 0, worker_init_fn=self.worker_init_fn,
                multiprocessing_context=self.multiprocessing_context if n else None,
                generator=self.generator, prefetch_factor=self.prefetch_factor if n else None,
                persistent_workers=n > 0, pin_memory_device=self.pin_memory_device)
            self.__dict__["_inner"] = inner
            self.num_workers = n
        else:
            inner.batch_sampler.ledger = ledger
        it = iter(inner)
        self.__dict__["_live"] = it
        return it

    def close(self) -> None:
        """Stop and join the current worker processes (the next iteration starts new ones)."""
        inner = self.__dict__.pop("_inner", None)
        live = self.__dict__.pop("_live", None)
        if inner is not None:
            _shutdown(inner._iterator)
            inner._iterator = None
        _shutdown(live)
