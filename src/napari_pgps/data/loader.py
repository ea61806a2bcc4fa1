"""Cutting and augmenting crops ahead of the training step, in background processes.

The training loop plans an epoch's batches up front (:meth:`PatchSampler.plan`,
with the run's random state) and hands the plans to a :class:`BatchLoader`,
which cuts them in worker processes a few batches ahead and gives them back
in order. A batch depends on its plan alone (its seed and its augmentation
strength, which an augmentation curriculum changes as the run goes on), so the
number of workers changes the speed, never the batches. With no worker,
batches are cut in the training process when they are asked for.
"""

from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterable, Iterator, Optional

from .sampler import BatchPlan, PatchBatch, PatchSampler

PREFETCH_PER_WORKER = 2
"""Batches each worker keeps ready."""

_worker_sampler: Optional[PatchSampler] = None


def _start_worker(sampler: PatchSampler) -> None:
    global _worker_sampler
    import torch

    torch.set_num_threads(1)  # the training process keeps the cores' threads
    _worker_sampler = sampler


def _cut(plan: BatchPlan) -> PatchBatch:
    return _worker_sampler.cut(plan)


class BatchLoader:
    """Cuts planned batches with ``workers`` background processes (0: in this process).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, sampler: PatchSampler, workers: int = 0) -> None:
        self.sampler = sampler
        self.workers = max(0, int(workers))
        self._pool: Optional[ProcessPoolExecutor] = None

    def batches(self, plans: Iterable[BatchPlan]) -> Iterator[PatchBatch]:
        """The batches of ``plans``, in order. Leaving the loop early cancels the batches not yet started."""
        if self.workers == 0:
            for plan in plans:
                yield self.sampler.cut(plan)
            return
        pool = self._start()
        pending: collections.deque[Future] = collections.deque()
        plans = iter(plans)
        try:
            for plan in plans:
                pending.append(pool.submit(_cut, plan))
                if len(pending) >= self.workers * PREFETCH_PER_WORKER:
                    break
            while pending:
                batch = pending.popleft().result()
                for plan in plans:
                    pending.append(pool.submit(_cut, plan))
                    break
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: a forked child of a process running torch's thread pools can deadlock
            self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.sampler,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
