"""CM-UNet (U-Net) parts, ViT encoders, JEPA predictor, MAE decoder, evaluation heads and token-grid helpers."""

from medssl.networks.cmunet import (
    ChannelReductionProjector,
    CMUNet,
    MLPPredictor,
    UNetDecoder,
    UNetEncoder,
    cmunet_small,
)
from medssl.networks.delineation import DelineationNet, SignalUNetDecoder
from medssl.networks.heads import AttentivePoolingHead, LinearHead, SegmentationDecoder
from medssl.networks.mae_decoder import MAEDecoder
from medssl.networks.patching import build_sincos_pos_embed, gather_tokens, patchify, unpatchify
from medssl.networks.predictor import JEPAPredictor, MaskedTokenPredictor
from medssl.networks.registry import create_encoder, list_encoders, register_encoder
from medssl.networks.vit import ViTEncoder

__all__ = [
    "CMUNet",
    "ChannelReductionProjector",
    "MLPPredictor",
    "UNetDecoder",
    "UNetEncoder",
    "cmunet_small",
    "AttentivePoolingHead",
    "DelineationNet",
    "JEPAPredictor",
    "LinearHead",
    "MAEDecoder",
    "MaskedTokenPredictor",
    "SegmentationDecoder",
    "SignalUNetDecoder",
    "ViTEncoder",
    "build_sincos_pos_embed",
    "create_encoder",
    "gather_tokens",
    "list_encoders",
    "patchify",
    "register_encoder",
    "unpatchify",
]
