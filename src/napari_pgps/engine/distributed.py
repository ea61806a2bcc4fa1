"""Distributed data-parallel training under ``torchrun``.

``torchrun --nproc_per_node=N -m napari_pgps train ...`` starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; the
trainer then joins one process group (NCCL on CUDA GPUs, Gloo on CPUs), wraps
the network in :class:`~torch.nn.parallel.DistributedDataParallel` and splits
every step's global batch over the ranks (also with N = 1, which checks the
backend on one GPU). Without torchrun every helper here is a no-op and
training is exactly the single-process one.

Rules the trainer keeps so that all ranks stay in step:

* each rank samples its own crops (its sampler generator is seeded from
  ``(seed, rank)``; which of them are forced onto foreground is decided on
  the global batch, :func:`batch_share`), while the draw of a random
  schedule's patch (RPSS, augment) uses a generator seeded identically on
  every rank;
* a stop request on any rank is all-reduced before every step, so every rank
  stops after the same step;
* every collective has the timeout of :func:`timeout` (10 minutes unless
  ``NAPARI_PGPS_DDP_TIMEOUT`` gives seconds), so no rank waits forever for a
  rank that died; torchrun also ends the other ranks when one exits with an
  error.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError

T = TypeVar("T")
TIMEOUT_VARIABLE = "NAPARI_PGPS_DDP_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the ranks torchrun started."""

    rank: int = 0
    """Global rank, 0..world_size-1."""
    world_size: int = 1
    local_rank: int = 0
    """Rank on this node: picks the GPU ``cuda:local_rank``."""
    local_world_size: int = 1
    """Processes on this node."""
    launched: bool = False
    """Started by torchrun (``WORLD_SIZE`` is set), possibly as its only process."""

    @property
    def enabled(self) -> bool:
        """Training goes through a process group: started by torchrun, or several ranks."""
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files and prints."""
        return self.rank == 0


SINGLE = DistributedContext()


def context_from_env(environ: Mapping[str, str] = os.environ) -> DistributedContext:
    """The context from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``.

    A single process, not launched, when ``WORLD_SIZE`` is unset.

    Raises:
        InputError: the variables are not integers or are inconsistent.
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    values = ", ".join(f"{n}={environ.get(n)!r}" for n in names)
    try:
        rank = int(environ.get("RANK", 0))
        world_size = int(environ.get("WORLD_SIZE", 1))
        local_rank = int(environ.get("LOCAL_RANK", 0))
        local_world_size = int(environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    except ValueError:
        raise InputError(f"torchrun environment is not understood ({values}); start with torchrun or unset them.") from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise InputError(f"torchrun environment is inconsistent ({values}).")
    return DistributedContext(rank, world_size, local_rank, local_world_size, launched="WORLD_SIZE" in environ)


def timeout() -> timedelta:
    """How long a collective may wait for the other ranks before the run fails."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise InputError(f"{TIMEOUT_VARIABLE}={raw!r} is not a number of seconds.") from None
    return timedelta(seconds=seconds)


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistributedContext, torch.device]]:
    """Join the process group of a torchrun launch for the duration of a training run.

    Yields ``(context, device)``: under torchrun on CUDA the device becomes
    ``cuda:LOCAL_RANK``; without torchrun both pass through unchanged. A group that already exists (set up by the caller) is
    used and left alone; one created here is destroyed when the run ends
    normally. After an error the group is left as it is: a peer may be gone
    and a teardown could block, and the process is about to end anyway.

    Raises:
        InputError: torchrun on MPS (no backend), or more processes on a node than it has GPUs.
    """
    context = context_from_env()
    if not context.enabled:
        yield context, device
        return
    if device.type == "mps":
        raise InputError("distributed training needs CUDA GPUs (NCCL) or CPUs (Gloo); MPS has no backend. Use --device cpu.")
    if device.type == "cuda":
        if context.local_world_size > torch.cuda.device_count():
            raise InputError(
                f"{context.local_world_size} processes on a node with {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (--nproc_per_node)."
            )
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            dist.init_process_group("nccl", timeout=timeout(), device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout())
    failed = False
    try:
        yield context, device
    except Exception:
        failed = True
        raise
    finally:
        if owned and not failed:
            dist.barrier()  # no rank tears its group down while another still talks to it
            dist.destroy_process_group()


def wrap(network: torch.nn.Module, device: torch.device, context: DistributedContext) -> torch.nn.Module:
    """The module to run training steps through: DDP around ``network`` when distributed, else ``network`` itself.

    Checkpoints and validation keep using ``network`` (no ``module.`` prefix).
    """
    if not context.enabled:
        return network
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def check_batch(smallest_batch: int, context: DistributedContext) -> None:
    """Refuse a schedule whose smallest global batch cannot give every rank at least one crop.

    Raises:
        InputError: ``smallest_batch < world_size``.
    """
    if smallest_batch < context.world_size:
        raise InputError(
            f"the schedule's smallest global batch ({smallest_batch}) is smaller than the number of processes "
            f"({context.world_size}); every process needs at least one crop: use --batch-size {context.world_size} "
            "or more, or fewer processes."
        )


def split_batch(global_batch: int, context: DistributedContext) -> int:
    """This rank's share of a step's global batch: ``B // W``, plus one for the first ``B % W`` ranks."""
    share, extra = divmod(global_batch, context.world_size)
    return share + (1 if context.rank < extra else 0)


def batch_share(global_batch: int, context: DistributedContext) -> range:
    """The indices, into a step's global batch of B, of this rank's crops: rank r takes the :func:`split_batch`
    crops after those of ranks 0..r-1 (B = 5 on two ranks: ``range(0, 3)`` and ``range(3, 5)``)."""
    share, extra = divmod(global_batch, context.world_size)
    first = context.rank * share + min(context.rank, extra)
    return range(first, first + split_batch(global_batch, context))


def generators(seed: int, context: DistributedContext) -> tuple[np.random.Generator, np.random.Generator]:
    """``(sampler, schedule)`` random generators.

    Without torchrun: one generator seeded with ``seed`` serves both (the
    streams of single-process runs). Under torchrun: the sampler's is seeded from
    ``(seed, rank)``, so ranks cut different crops; the schedule's (RPSS and
    augment draws) from ``seed`` on every rank, so all draw the same patch.
    """
    if not context.enabled:
        shared = np.random.default_rng(seed)
        return shared, shared
    return np.random.default_rng([seed, context.rank]), np.random.default_rng(seed)


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; Gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop request); collective."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: torch.Tensor, context: DistributedContext) -> float:
    """The mean of a scalar over the ranks (identical on every rank); collective."""
    if not context.enabled:
        return float(value)
    total = value.detach().reshape(1).float().to(_collective_device())
    dist.all_reduce(total)
    return float(total.item()) / context.world_size


def gather_objects(value: T, context: DistributedContext) -> list[T]:
    """Every rank's ``value`` in rank order, on every rank (picklable objects); collective."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def shard(items: Sequence[T], context: DistributedContext) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th, starting at ``rank``."""
    return list(items[context.rank :: context.world_size])


def unshard(local: list[T], context: DistributedContext) -> list[T]:
    """The results of :func:`shard`'s items from every rank, back in the items' order; collective."""
    parts = gather_objects(local, context)
    return [parts[i % context.world_size][i // context.world_size] for i in range(sum(len(p) for p in parts))]


class _AllGather(torch.autograd.Function):
    """All-gather whose backward sums the gradient over the ranks and keeps this rank's slice (as nnU-Net v2)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Stack every rank's ``tensor`` (same shape on all) into ``(world_size, *shape)``, differentiably; collective.

    Every rank computes the same function of the gathered stack; the backward
    all-reduce (a sum) then gives each rank ``world_size`` times the gradient of
    its own slice, which DDP's averaging turns into the exact gradient.
    """
    return _AllGather.apply(tensor)
