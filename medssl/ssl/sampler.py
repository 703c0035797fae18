"""Resumable, seeded sampling and data loading.

Exact resume needs three things to be functions of the run's seed and position only:

1. the order of the samples: :class:`ResumableRandomSampler` draws a permutation from ``(seed, epoch)`` and
   can start mid-epoch from a position;
2. the randomness of the dataset's transforms and of the collate function (masking): :func:`make_loader`
   re-seeds the RNGs (torch, NumPy, ``random``, and MONAI ``Randomizable`` transforms) before each sample is
   loaded, from ``(seed, epoch, sample position)``, and before each batch is collated, from
   ``(seed, epoch, batch index, rank)``, in whichever process (main or worker) does the work; so DataLoader
   workers' own RNG streams (``base_seed``) no longer matter and the main process's RNG is left untouched;
3. no draw from the main process's RNG when an epoch's iterator starts: the loader gets its own
   ``torch.Generator``.

The :class:`~medssl.ssl.trainer.Trainer` recognises loaders built by :func:`make_loader` (and plain
``DataLoader`` objects whose sampler is a :class:`ResumableRandomSampler`) and positions them on resume.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from medssl.ssl.distributed import get_rank, get_world_size

__all__ = [
    "ResumableRandomSampler",
    "SeededBatchSampler",
    "make_loader",
    "loader_sampler",
    "derive_seed",
    "seeded_rng",
]


_M64 = 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed derived from integers by chained SplitMix64 mixing (fast, well mixed, deterministic).

    Examples::

        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    h = 0x6A09E667F3BCC908
    for e in entropy:
        h = _splitmix64(h ^ _splitmix64(int(e) & _M64))
    return h & 0x7FFFFFFFFFFFFFFF


class seeded_rng:  # noqa: N801 - used like a function, as a context manager
    """Context manager: run a block with torch (CPU), NumPy and ``random`` seeded from ``seed``.

    In the main process the previous states are restored on exit, so the training RNG is untouched. In a
    DataLoader worker (whose RNG streams nothing else depends on) the states are not saved, which is much
    cheaper.

    Args:
        seed: the seed for all three generators.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def __enter__(self) -> None:
        self._restore = get_worker_info() is None
        if self._restore:
            self._torch = torch.get_rng_state()
            self._np = np.random.get_state()
            self._py = random.getstate()
        torch.default_generator.manual_seed(self.seed)  # CPU only: collate and transforms run on the CPU
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self._restore:
            torch.set_rng_state(self._torch)
            np.random.set_state(self._np)
            random.setstate(self._py)


class ResumableRandomSampler(Sampler[int]):
    """A random (or sequential) sampler seeded per epoch that can start mid-epoch; optionally sharded.

    Each epoch's order is a permutation drawn from ``(seed, epoch)``. With ``world_size > 1`` the
    permutation is padded (or truncated with ``drop_last``) to a multiple of ``world_size`` and rank ``r``
    takes every ``world_size``-th index from ``r``, like ``DistributedSampler``.

    Args:
        data_source: the dataset (only its length is used).
        seed: the base seed.
        shuffle: draw a permutation per epoch (else the natural order).
        rank: this process's rank; default from the process group.
        world_size: the number of processes; default from the process group.
        drop_last: drop the tail instead of padding when the length is not divisible by ``world_size``.

    Examples::

        >>> s = ResumableRandomSampler(range(10), seed=1)
        >>> full = list(s)
        >>> s.set_epoch(0, start=4)
        >>> list(s) == full[4:]
        True
    """

    def __init__(
        self,
        data_source: Sized,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.shuffle = shuffle
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.rank = get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    @property
    def num_samples(self) -> int:
        """The number of indices this rank yields per full epoch."""
        n = len(self.data_source)
        if self.drop_last:
            return n // self.world_size
        return -(-n // self.world_size)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (and so the permutation) and the position to start from within it."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = int(epoch)
        self.start = int(start)

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full index list for ``epoch`` (default the current one)."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.data_source)
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = self.num_samples * self.world_size
        if total > n:
            reps = -(-total // max(n, 1))
            order = (order * reps)[:total]
        else:
            order = order[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch and start position (samples of this rank already consumed in the epoch)."""
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start, "shuffle": self.shuffle}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.seed = int(state["seed"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self.set_epoch(int(state["epoch"]), int(state.get("start", 0)))


class SeededBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches a :class:`ResumableRandomSampler`, tagging each index with the seeds to load and collate it.

    Yields lists of ``(index, sample_seed, batch_seed)``; :func:`make_loader`'s dataset and collate wrappers
    unpack them. Seeds are derived from ``(seed, epoch, position, rank)`` so they do not depend on which
    worker handles the batch or on where the run was resumed.

    Args:
        sampler: the index sampler; its ``start`` must be a multiple of ``batch_size``.
        batch_size: samples per batch.
        drop_last: drop a last, smaller batch.
    """

    def __init__(self, sampler: ResumableRandomSampler, batch_size: int, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the batch to start from."""
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        epoch, start, rank = s.epoch, s.start, s.rank
        if start % self.batch_size:
            raise ValueError(f"sampler start {start} is not a multiple of batch_size {self.batch_size}")
        batch: list[tuple[int, int, int]] = []
        batch_idx = start // self.batch_size
        batch_seed = derive_seed(s.seed, epoch, batch_idx, rank, 2)
        for pos, idx in enumerate(s, start=start):
            batch.append((int(idx), derive_seed(s.seed, epoch, pos, rank, 1), batch_seed))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
                batch_idx += 1
                batch_seed = derive_seed(s.seed, epoch, batch_idx, rank, 2)
        if batch and not self.drop_last:
            yield batch


class _SeededDataset(Dataset):
    """Loads ``dataset[index]`` with the RNGs (and MONAI random transforms) seeded per sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[Any, int]:
        index, sample_seed, batch_seed = item
        transform = getattr(self.dataset, "transform", None)
        try:
            from monai.transforms import Randomizable

            if isinstance(transform, Randomizable):
                transform.set_random_state(seed=sample_seed % 2**32)
        except ImportError:  # pragma: no cover - monai is a dependency
            pass
        with seeded_rng(sample_seed):
            sample = self.dataset[index]
        return sample, batch_seed


class _SeededCollate:
    """Runs ``collate_fn`` with the RNGs seeded from the batch's seed (restored afterwards)."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[tuple[Any, int]]) -> Any:
        samples = [s for s, _ in items]
        with seeded_rng(items[0][1]):
            return self.collate_fn(samples)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    pin_memory: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` whose iteration the :class:`~medssl.ssl.trainer.Trainer` can resume exactly.

    Sample order, dataset transforms and collate randomness (e.g. masks drawn by a ``MaskCollator`` with the
    global torch RNG) are functions of ``(seed, epoch, position, rank)`` only; see the module docstring.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch (per process).
        collate_fn: builds a batch from a list of samples; default ``monai.data.list_data_collate``.
        num_workers: DataLoader worker processes.
        seed: the data seed.
        shuffle: shuffle every epoch.
        drop_last: drop a last, smaller batch (default True, as SSL batches need equal shapes).
        pin_memory: pin batches for faster host-to-GPU copies.
        rank: shard for this rank; default from the process group.
        world_size: number of shards; default from the process group.
        persistent_workers: keep workers between epochs.
        prefetch_factor: batches prefetched per worker (workers only).

    Returns:
        A ``DataLoader`` with a :class:`SeededBatchSampler` as its ``batch_sampler``.
    """
    if collate_fn is None:
        from monai.data import list_data_collate

        collate_fn = list_data_collate
    sampler = ResumableRandomSampler(
        dataset, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size, drop_last=False
    )
    batch_sampler = SeededBatchSampler(sampler, batch_size, drop_last=drop_last)
    if len(batch_sampler) == 0:
        raise ValueError(
            f"the loader yields no batch: {len(sampler)} samples per process, batch_size {batch_size}, "
            f"drop_last={drop_last}"
        )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        _SeededDataset(dataset),
        batch_sampler=batch_sampler,
        collate_fn=_SeededCollate(collate_fn),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(derive_seed(seed, 3)),
        **kwargs,
    )


def loader_sampler(loader: Any) -> SeededBatchSampler | ResumableRandomSampler | None:
    """The resumable (batch) sampler behind ``loader``, if it has one."""
    bs = getattr(loader, "batch_sampler", None)
    if isinstance(bs, SeededBatchSampler):
        return bs
    s = getattr(loader, "sampler", None)
    if isinstance(s, ResumableRandomSampler):
        return s
    return None
