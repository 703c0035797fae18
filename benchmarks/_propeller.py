"""The PROPELLER benchmarks' shared input: the bundle's study setting on the shipped MR_small sample."""

from __future__ import annotations

from typing import Any

import torch


def study_acquisition() -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(geometry, blades in use, coil maps, acquisition)``: 128², 8 birdcage coils, 16 blades x 12 x 256, SNR 20.

    The image is MR_small resized to 128² (the content does not change the cost); half the blades are in use.
    """
    from medssl import samples
    from medssl.io import load
    from medssl.mri import PropellerGeometry, birdcage_maps, simulate_acquisition

    torch.manual_seed(0)
    mag = torch.as_tensor(load(samples.mr_small()).array, dtype=torch.float32)
    mag = torch.nn.functional.interpolate(mag[None, None], size=(128, 128), mode="bilinear")[0, 0]
    mag = mag / mag.max()
    geo = PropellerGeometry(16, 12, 256, 128)
    sens = birdcage_maps(8, 128)
    acq = simulate_acquisition(mag, geo, sens, snr=20.0, generator=torch.Generator().manual_seed(0))
    return geo, geo.blades(0.5), sens, acq
