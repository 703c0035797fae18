"""Supervised fine-tuning (or training from scratch) through the same :class:`~medssl.ssl.trainer.Trainer`.

Baselines get the same care as pre-trained models: the same loop, schedule, clipping, checkpoints and
logging; the output bias starts at the class prior (:func:`init_output_bias_to_prior`); and the decision
threshold is chosen on validation data (:func:`medssl.eval.metrics.choose_threshold`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl.errors import CheckpointError
from medssl.ssl.checkpoint import load_checkpoint
from medssl.ssl.trainer import Trainer, move_to_device, resolve_device

__all__ = [
    "SupervisedAdapter",
    "init_output_bias_to_prior",
    "load_pretrained",
    "predict",
    "finetune",
    "FinetuneResult",
]


class SupervisedAdapter(nn.Module):
    """Turns a supervised model and a loss into an ``SSLMethod``: ``forward(batch) -> {"loss": ...}``.

    Args:
        model: maps ``batch[input_key]`` to outputs (logits).
        loss: called as ``loss(outputs, batch[label_key])``.
        input_key: the batch key of the input.
        label_key: the batch key of the target.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        input_key: str = "image",
        label_key: str = "label",
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.input_key = input_key
        self.label_key = label_key

    @property
    def encoder(self) -> nn.Module:
        """The model's ``encoder`` attribute if it has one, else the model."""
        return getattr(self.model, "encoder", self.model)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Compute the supervised loss of one batch."""
        out = self.model(batch[self.input_key])
        target = batch[self.label_key]
        if isinstance(self.loss, nn.BCEWithLogitsLoss | nn.MSELoss | nn.L1Loss):
            target = target.to(out.dtype)
        return {"loss": self.loss(out.float(), target)}


@torch.no_grad()
def init_output_bias_to_prior(
    layer: nn.Linear | nn.Module,
    prior: float | Sequence[float] | torch.Tensor | np.ndarray,
    activation: str = "sigmoid",
    eps: float = 1e-6,
) -> None:
    """Set an output layer's bias so that its initial predictions equal the class prior.

    Args:
        layer: a module with a ``bias`` parameter (``nn.Linear``, a 1x1 conv...).
        prior: positive rate(s) per output unit.
        activation: ``"sigmoid"`` (bias = ``log(p / (1 - p))``, multi-label / binary) or ``"softmax"``
            (bias = ``log p``, single-label).
        eps: clamp for probabilities of 0 or 1.

    Examples::

        >>> lin = nn.Linear(4, 1)
        >>> init_output_bias_to_prior(lin, 0.1)
        >>> round(torch.sigmoid(lin.bias).item(), 6)
        0.1
    """
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, torch.Tensor):
        raise ValueError(f"{type(layer).__name__} has no bias to initialise")
    p = torch.as_tensor(np.asarray(prior, dtype=np.float64) if not isinstance(prior, torch.Tensor) else prior)
    p = p.double().clamp(eps, 1 - eps).reshape(-1)
    if p.numel() == 1:
        p = p.expand(bias.numel())
    if p.numel() != bias.numel():
        raise ValueError(f"prior has {p.numel()} values for a bias of {bias.numel()}")
    if activation == "sigmoid":
        value = torch.log(p / (1 - p))
    elif activation == "softmax":
        value = torch.log(p)
    else:
        raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
    bias.copy_(value.to(bias.dtype).reshape(bias.shape))


def load_pretrained(
    module: nn.Module,
    checkpoint: str | os.PathLike[str],
    prefix: str = "encoder.",
    strict: bool = False,
) -> tuple[list[str], list[str]]:
    """Load the ``prefix`` part of a medssl checkpoint's method state into ``module`` (e.g. an encoder).

    Args:
        module: the module to load into.
        checkpoint: a medssl training checkpoint (``checkpoints/last.pt``).
        prefix: the key prefix of the sub-module to take (``"encoder."`` = the online encoder); ``""`` takes
            the whole method state.
        strict: require an exact key match.

    Returns:
        ``(missing_keys, unexpected_keys)`` of ``module.load_state_dict``.

    Raises:
        CheckpointError: unreadable checkpoint, no key with the prefix, or shapes that do not match.
    """
    ckpt = load_checkpoint(checkpoint)
    state = {k[len(prefix) :]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(checkpoint, f"no weights under {prefix!r} in the checkpoint")
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(checkpoint, f"weights do not fit the model: {str(exc).splitlines()[0]}") from exc
    return list(result.missing_keys), list(result.unexpected_keys)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "auto",
    input_key: str = "image",
    label_key: str | None = "label",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model outputs and labels over a loader, concatenated on the CPU (model in eval mode)."""
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    outs, labels = [], []
    try:
        for batch in loader:
            outs.append(model(move_to_device(batch[input_key], dev)).float().cpu())
            if label_key is not None:
                labels.append(torch.as_tensor(batch[label_key]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs), (torch.cat(labels) if labels else None)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        model: the trained model.
        history: the trainer's history.
        val_outputs: model outputs on the validation loader (``None`` without one).
        val_labels: the validation labels.
        output_dir: where checkpoints and logs went.
    """

    model: nn.Module
    history: dict[str, list[Any]]
    val_outputs: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    output_dir: Path = field(default_factory=Path)


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_steps: int,
    lr: float,
    output_dir: str | os.PathLike[str],
    weight_decay: float = 0.05,
    pretrained: str | os.PathLike[str] | None = None,
    pretrained_prefix: str = "encoder.",
    encoder_lr_scale: float = 1.0,
    freeze_encoder: bool = False,
    warmup_steps: int | None = None,
    grad_clip: float | None = 1.0,
    device: str | torch.device = "auto",
    seed: int = 0,
    input_key: str = "image",
    label_key: str = "label",
    ckpt_every: int = 0,
    log_every: int = 10,
    resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model`` (from a pre-trained checkpoint or from scratch) with the shared Trainer.

    The recipe is the same with and without ``pretrained``: AdamW, warm-up + cosine schedule, gradient
    clipping, the same steps. Parameters of ``model.encoder`` (if it exists) get ``lr * encoder_lr_scale``.

    Args:
        model: the supervised model, e.g. an encoder plus a head; ideally with its output bias set by
            :func:`init_output_bias_to_prior`.
        train_loader: labelled training batches (dicts).
        val_loader: validation batches, predicted after training; ``None`` to skip.
        loss: ``loss(outputs, labels)``.
        max_steps: optimiser steps.
        lr: peak learning rate.
        output_dir: checkpoints and logs.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        pretrained: a medssl checkpoint whose ``pretrained_prefix`` weights go into ``model.encoder``.
        pretrained_prefix: the checkpoint key prefix of the encoder.
        encoder_lr_scale: learning-rate factor for the encoder.
        freeze_encoder: keep the encoder frozen (train the head only).
        warmup_steps: warm-up steps (default 5 % of ``max_steps``).
        grad_clip: gradient-norm clip.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        seed: the training seed.
        input_key: batch key of the inputs.
        label_key: batch key of the labels.
        ckpt_every: checkpoint period (0: only at the end).
        log_every: logging period.
        resume: continue from ``output_dir/checkpoints/last.pt`` if present.
        progress: show a progress bar.

    Returns:
        A :class:`FinetuneResult`.
    """
    encoder = getattr(model, "encoder", None)
    if pretrained is not None:
        if encoder is None:
            raise ValueError("pretrained weights need a model with an 'encoder' attribute")
        load_pretrained(encoder, pretrained, prefix=pretrained_prefix)
    enc_params = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    if freeze_encoder and encoder is not None:
        encoder.requires_grad_(False)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        groups.setdefault((id(p) in enc_params, no_decay), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": lr * (encoder_lr_scale if is_enc else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (is_enc, no_decay), ps in groups.items()
    ]
    if not param_groups:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(param_groups, lr=lr)
    method = SupervisedAdapter(model, loss, input_key=input_key, label_key=label_key)
    trainer = Trainer(
        method,
        train_loader,
        optimizer,
        max_steps=max_steps,
        output_dir=output_dir,
        ckpt_every=ckpt_every,
        log_every=log_every,
        device=device,
        grad_clip=grad_clip,
        seed=seed,
        warmup_steps=warmup_steps,
        progress=progress,
    )
    history = trainer.fit(resume=resume)
    val_outputs = val_labels = None
    if val_loader is not None:
        val_outputs, val_labels = predict(
            model, val_loader, device=trainer.device, input_key=input_key, label_key=label_key
        )
        if not torch.isfinite(val_outputs).all():
            raise FloatingPointError("non-finite validation outputs")
    trainer.close()
    return FinetuneResult(model, history, val_outputs, val_labels, Path(output_dir))
