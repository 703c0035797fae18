"""Frozen-feature evaluation: feature extraction and a linear probe (torch or scikit-learn).

The torch probe is a full-batch L-BFGS logistic regression on standardised features, with zero-initialised
weights and the output bias at the class prior, so it starts from the prior and is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl.eval.finetune import init_output_bias_to_prior
from medssl.ssl.trainer import move_to_device, resolve_device

__all__ = ["extract_features", "LinearProbe", "linear_probe"]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "auto",
    input_key: str = "image",
    label_key: str | None = "label",
    pool: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a frozen encoder over a loader and pool its tokens.

    Args:
        encoder: maps ``batch[input_key]`` to ``[B, N, D]`` tokens or ``[B, D]`` features.
        loader: yields dict batches.
        device: where to run (``"auto"``: CUDA if available).
        input_key: the batch key of the input.
        label_key: the batch key of the labels, or ``None``.
        pool: ``"mean"`` over tokens, ``"cls"`` (first token) or ``"none"`` (flatten tokens).

    Returns:
        ``(features [N, D], labels or None)`` on the CPU, in float32.
    """
    dev = resolve_device(device)
    was_training = encoder.training
    encoder.eval().to(dev)
    feats, labels = [], []
    try:
        for batch in loader:
            x = move_to_device(batch[input_key], dev)
            with torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null():
                out = encoder(x)
            if isinstance(out, tuple | list):
                out = out[0]
            out = out.float()
            if out.ndim == 3:
                if pool == "mean":
                    out = out.mean(1)
                elif pool == "cls":
                    out = out[:, 0]
                elif pool == "none":
                    out = out.flatten(1)
                else:
                    raise ValueError(f"pool must be 'mean', 'cls' or 'none', got {pool!r}")
            feats.append(out.cpu())
            if label_key is not None:
                labels.append(torch.as_tensor(batch[label_key]).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(feats), (torch.cat(labels) if labels else None)


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


class LinearProbe:
    """Logistic regression on frozen features (softmax for single-label, sigmoid per class for multi-label).

    Args:
        num_classes: number of classes; default inferred from the labels.
        multilabel: labels are ``[N, C]`` binary vectors.
        weight_decay: L2 penalty on the weights (not the bias), scaled by the mean loss.
        max_iter: L-BFGS iterations.
        standardize: z-score the features with the training mean and std.
        device: where to fit.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        multilabel: bool = False,
        weight_decay: float = 1e-4,
        max_iter: int = 200,
        standardize: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.standardize = standardize
        self.device = resolve_device(device)
        self.head: nn.Linear | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _prep(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        if self.standardize and self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def fit(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> LinearProbe:
        """Fit on features ``x [N, D]`` and labels ``y`` (``[N]`` int or ``[N, C]`` binary)."""
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        yt = torch.as_tensor(y, device=self.device)
        if self.standardize:
            self.mean = xt.mean(0)
            self.std = xt.std(0, unbiased=False).clamp_min(1e-6)
        xt = self._prep(xt)
        if self.multilabel:
            yt = yt.float()
            c = yt.shape[1]
            prior = yt.mean(0)
        else:
            yt = yt.long()
            c = self.num_classes or int(yt.max().item()) + 1
            prior = torch.bincount(yt, minlength=c).float() / len(yt)
        self.num_classes = c
        head = nn.Linear(xt.shape[1], c).to(self.device)
        nn.init.zeros_(head.weight)
        init_output_bias_to_prior(head, prior, activation="sigmoid" if self.multilabel else "softmax")
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe")
        loss_fn: nn.Module = nn.BCEWithLogitsLoss() if self.multilabel else nn.CrossEntropyLoss()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(head(xt), yt) + 0.5 * self.weight_decay * head.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.head = head.eval()
        return self

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities ``[N, C]`` (softmax or per-class sigmoid), on the CPU."""
        if self.head is None:
            raise RuntimeError("call fit() first")
        logits = self.head(self._prep(x))
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        return probs.cpu()


def linear_probe(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    eval_x: torch.Tensor | np.ndarray,
    multilabel: bool = False,
    backend: str = "torch",
    **kwargs: Any,
) -> torch.Tensor:
    """Fit a linear probe on training features and return probabilities for ``eval_x``.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N]`` integer labels or ``[N, C]`` binary multi-label targets.
        eval_x: ``[M, D]`` features to predict.
        multilabel: per-class sigmoid instead of softmax.
        backend: ``"torch"`` (:class:`LinearProbe`) or ``"sklearn"`` (``LogisticRegression``, one-vs-rest for
            multi-label, on standardised features; ``C`` in ``kwargs``).
        **kwargs: passed to :class:`LinearProbe` or ``LogisticRegression``.

    Returns:
        ``[M, C]`` probabilities.
    """
    if backend == "torch":
        return LinearProbe(multilabel=multilabel, **kwargs).fit(train_x, train_y).predict_proba(eval_x)
    if backend != "sklearn":
        raise ValueError(f"backend must be 'torch' or 'sklearn', got {backend!r}")
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xev = (np.asarray(_to_np(a)) for a in (train_x, train_y, eval_x))
    params: Mapping[str, Any] = {"max_iter": 1000, **kwargs}
    clf = LogisticRegression(**params)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(clf) if multilabel else clf)
    model.fit(xtr, ytr)
    return torch.as_tensor(model.predict_proba(xev), dtype=torch.float32)


def _to_np(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
