"""Named encoder sizes (ViT-tiny/small/base, arXiv:2012.12877 / arXiv:2010.11929) behind one factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from medssl.networks.vit import ViTEncoder

__all__ = ["create_encoder", "list_encoders", "register_encoder"]

_F = TypeVar("_F", bound=Callable[..., ViTEncoder])
_REGISTRY: dict[str, Callable[..., ViTEncoder]] = {}


@overload
def register_encoder(name_or_fn: str) -> Callable[[_F], _F]: ...
@overload
def register_encoder(name_or_fn: _F) -> _F: ...
def register_encoder(name_or_fn: str | _F) -> Callable[[_F], _F] | _F:
    """Register an encoder factory under a name, as ``@register_encoder`` or ``@register_encoder("name")``.

    The factory takes keyword overrides and returns a :class:`ViTEncoder`.

    Raises:
        ValueError: if the name is already registered.
    """

    def deco(fn: _F, name: str) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered.")
        _REGISTRY[name] = fn
        return fn

    if isinstance(name_or_fn, str):
        return lambda fn: deco(fn, name_or_fn)
    return deco(name_or_fn, name_or_fn.__name__)


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder`, sorted."""
    return sorted(_REGISTRY)


def create_encoder(name: str, **overrides: Any) -> ViTEncoder:
    """Build a registered encoder; ``overrides`` replace any :class:`ViTEncoder` argument.

    Defaults are a 2-D, 1-channel, 224x224 input with 16x16 patches; e.g.
    ``create_encoder("vit_tiny", num_frames=16, tubelet_size=2, in_channels=3)`` is V-JEPA's video layout.

    Raises:
        ValueError: unknown name or invalid argument combination.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}.")
    return _REGISTRY[name](**overrides)


def _vit(hidden_size: int, depth: int, num_heads: int, overrides: dict[str, Any]) -> ViTEncoder:
    kwargs: dict[str, Any] = {
        "spatial_dims": 2,
        "in_channels": 1,
        "img_size": 224,
        "patch_size": 16,
        "hidden_size": hidden_size,
        "depth": depth,
        "num_heads": num_heads,
    }
    kwargs.update(overrides)
    return ViTEncoder(**kwargs)


@register_encoder
def vit_tiny(**overrides: Any) -> ViTEncoder:
    """ViT-Ti: width 192, depth 12, 3 heads (DeiT, arXiv:2012.12877)."""
    return _vit(192, 12, 3, overrides)


@register_encoder
def vit_small(**overrides: Any) -> ViTEncoder:
    """ViT-S: width 384, depth 12, 6 heads (DeiT, arXiv:2012.12877)."""
    return _vit(384, 12, 6, overrides)


@register_encoder
def vit_base(**overrides: Any) -> ViTEncoder:
    """ViT-B: width 768, depth 12, 12 heads (arXiv:2010.11929)."""
    return _vit(768, 12, 12, overrides)
