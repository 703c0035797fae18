"""DataLoader collate function that adds context/target token indices to every batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.utils import list_data_collate

__all__ = ["MaskCollator"]

MaskGenerator = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class MaskCollator:
    """Collate samples (MONAI ``list_data_collate``) and add ``context_idx`` / ``target_idx`` masks.

    Masks are drawn on the CPU in the DataLoader workers (as in I-JEPA / V-JEPA, arXiv:2404.08471), so the
    training step only gathers tokens. The collator holds no mutable state: randomness comes from torch's
    RNG, which the DataLoader seeds per worker, or from ``seed`` (a fresh generator per collator copy).

    Args:
        mask_generator: e.g. :class:`MultiBlockMask3D` or :class:`RandomPatchMask`;
            called as ``mask_generator(batch_size, generator)``.
        keys: keys that must be present in every sample; the first one gives the batch size.
        seed: if given, masks come from a private ``torch.Generator`` seeded with ``seed`` (plus the worker
            id inside a DataLoader worker) instead of torch's global RNG.
    """

    def __init__(
        self, mask_generator: MaskGenerator, keys: Sequence[str] = ("image",), seed: int | None = None
    ) -> None:
        if not callable(mask_generator):
            raise ValueError(f"mask_generator must be callable, got {type(mask_generator).__name__}.")
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if not keys:
            raise ValueError("keys must name at least one sample key.")
        self.mask_generator = mask_generator
        self.keys = keys
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_worker: int | None = None

    def _get_generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        if self._generator is None or self._generator_worker != worker:
            self._generator = torch.Generator().manual_seed(self.seed + worker + 1)
            self._generator_worker = worker
        return self._generator

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate ``samples`` and add ``context_idx [B, Nc]`` and ``target_idx [B, Nt]``."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples.")
        for key in self.keys:
            if any(not isinstance(s, dict) or key not in s for s in samples):
                raise ValueError(f"every sample must be a dict with key {key!r}.")
        batch = list_data_collate(samples)
        context_idx, target_idx = self.mask_generator(len(samples), self._get_generator())
        batch["context_idx"] = context_idx
        batch["target_idx"] = target_idx
        return batch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = None  # generators are re-created per process
        state["_generator_worker"] = None
        return state
