"""Small helpers shared by the transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = ["as_float_tensor", "like_input"]


def as_float_tensor(x: NdarrayOrTensor) -> torch.Tensor:
    """Input as a plain float32 torch tensor (MetaTensors lose their meta: clips carry none we need)."""
    t = convert_to_tensor(x, track_meta=False)
    return t.float() if t.dtype != torch.float32 else t


def like_input(out: torch.Tensor, x: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` as numpy (float32) when ``x`` was numpy, else as a tensor."""
    if isinstance(x, np.ndarray):
        return out.detach().cpu().numpy().astype(np.float32, copy=False)
    return out


class ApplyToKeys(MapTransform):
    """Dictionary transform that applies its array transform ``self.t`` to every key (MONAI ``Foo`` -> ``Food``)."""

    t: Any

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply ``self.t`` to every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d
