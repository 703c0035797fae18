"""Self-supervised methods implementing :class:`SSLMethod` (see docs/dev/core_contract.md)."""

from .base import SSLMethod, pool_tokens, preview_image
from .byol import BYOL
from .cla import CLA
from .contrastive_masked import ContrastiveMasked, random_patch_pixel_mask
from .jepa import JEPA, PosNoiseSchedule
from .mae import MAE

__all__ = [
    "BYOL",
    "CLA",
    "JEPA",
    "MAE",
    "ContrastiveMasked",
    "PosNoiseSchedule",
    "SSLMethod",
    "pool_tokens",
    "preview_image",
    "random_patch_pixel_mask",
]
