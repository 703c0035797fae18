"""Self-supervised losses: typed ``_Loss`` modules plus pure functions, each from its paper's formula."""

from .contrastive import BYOLLoss, InfoNCELoss, byol_loss, info_nce
from .dispersive import DispersiveLoss, dispersive_loss
from .jepa import JEPALoss, gather_tokens, jepa_loss, layer_norm_targets
from .localisation import LocalisationHead, LocalisationLoss, localisation_loss, token_coordinates
from .reconstruction import MaskedReconstructionLoss, masked_reconstruction_loss, normalize_patches
from .sdsc import SDSCLoss, sdsc, soft_sdsc
from .spectral import (
    SpectralReconstructionLoss,
    TimeFrequencyTargets,
    coarse_reconstruction_loss,
    patch_magnitude_spectrum,
    spectral_reconstruction_loss,
)

__all__ = [
    "BYOLLoss",
    "DispersiveLoss",
    "InfoNCELoss",
    "JEPALoss",
    "LocalisationHead",
    "LocalisationLoss",
    "MaskedReconstructionLoss",
    "SDSCLoss",
    "SpectralReconstructionLoss",
    "TimeFrequencyTargets",
    "byol_loss",
    "coarse_reconstruction_loss",
    "dispersive_loss",
    "gather_tokens",
    "info_nce",
    "jepa_loss",
    "layer_norm_targets",
    "localisation_loss",
    "masked_reconstruction_loss",
    "normalize_patches",
    "patch_magnitude_spectrum",
    "sdsc",
    "soft_sdsc",
    "spectral_reconstruction_loss",
    "token_coordinates",
]
