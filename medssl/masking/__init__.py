"""Token masks for masked-modelling SSL, drawn in the DataLoader collate (CPU, worker-safe)."""

from medssl.masking.collator import MaskCollator
from medssl.masking.multiblock import MultiBlockMask3D
from medssl.masking.random_patch import RandomPatchMask

__all__ = ["MaskCollator", "MultiBlockMask3D", "RandomPatchMask"]
