"""Multi-process helpers: ``torchrun`` environment, ranks, and the main-process test.

Under ``torchrun`` (``python -m torch.distributed.run``) the environment holds ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and
starts the process group: NCCL on CUDA, gloo on CPU. Without them everything here answers for a single
process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_mean",
    "unwrap_model",
    "env_world_size",
]


def env_world_size() -> int:
    """The world size that the environment (``torchrun``) asks for; 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """Whether a process group is running with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """The global rank of this process (0 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0


def get_world_size() -> int:
    """The number of processes: the process group's, else ``WORLD_SIZE`` from ``torchrun``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_world_size()


def get_local_rank() -> int:
    """The rank of this process on its machine (``LOCAL_RANK``; 0 without ``torchrun``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes logs and checkpoints."""
    return get_rank() == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Start the default process group from the ``torchrun`` environment variables.

    Does nothing when the environment asks for a single process or the group already runs.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        timeout_s: the collective timeout in seconds.

    Returns:
        Whether this process now runs in a process group of more than one process.
    """
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    from datetime import timedelta

    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_world_size() > 1


def cleanup_distributed() -> None:
    """Destroy the default process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a copy; the input itself for one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``model``."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model
