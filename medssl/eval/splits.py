"""Label-fraction splits: seeded, stratified where labels allow, group-aware, saved next to the results.

A split takes the labelled pool (every id not in the fixed test set), and draws from it a validation set
(``val_fraction`` of the pool's groups) and a labelled training set (``fraction`` of the pool's groups, or
``count`` groups). Whole groups (patient, recording) are drawn, never single frames: ``groups`` maps each id
to its group; without it every id is its own group. Fractions and counts therefore refer to groups.

Stratification: each group gets a stratum, its majority label (single-label) or its rarest positive label
over the pool (multi-label, "per-primary-label" stratification; groups without a positive label form their
own stratum). The groups are put in one seeded order in which the strata are interleaved in proportion
(systematic sampling within shuffled strata); training takes a prefix of that order and validation a suffix.
So for one seed the training sets of increasing fractions are nested (1 % ⊂ 10 % ⊂ 100 %), every one is
close to stratified, and none meets the validation or test sets.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.ssl.checkpoint import atomic_write_json

__all__ = ["LabelSplit", "label_fraction_split", "save_split", "load_split"]


@dataclass
class LabelSplit:
    """The result of :func:`label_fraction_split` (all id lists in the input order).

    Attributes:
        train: labelled training ids.
        val: validation ids (for thresholds, early stopping).
        test: the fixed test ids, as given.
        unlabelled: pool ids in neither train nor val (available for self-supervised pre-training).
        seed: the seed used.
        fraction: the requested fraction of groups, or ``None`` when ``count`` was given.
        count: the requested number of groups, or ``None``.
        stratified: whether labels were used for stratification.
        n_groups: groups in train / val / unlabelled.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    unlabelled: list[str]
    seed: int
    fraction: float | None
    count: int | None
    stratified: bool
    n_groups: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _stratum_of_groups(
    pool_ids: list[Any],
    group_of: Mapping[Any, Hashable],
    labels: Mapping[Any, Any] | None,
) -> dict[Hashable, Hashable]:
    groups = list(dict.fromkeys(group_of[i] for i in pool_ids))
    if labels is None:
        return dict.fromkeys(groups, "all")
    members: dict[Hashable, list[Any]] = defaultdict(list)
    for i in pool_ids:
        members[group_of[i]].append(i)
    first = np.asarray(labels[pool_ids[0]])
    if first.ndim == 0:  # single-label: the group's majority label (ties: smallest label)
        out = {}
        for g in groups:
            counts = Counter(_scalar(labels[i]) for i in members[g])
            top = max(counts.values())
            out[g] = min((lab for lab, c in counts.items() if c == top), key=repr)
        return out
    # multi-label: rarest positive label (over the pool) present in the group
    matrix = np.stack([np.asarray(labels[i], dtype=float) for i in pool_ids]) > 0
    freq = matrix.sum(0)
    row = {i: k for k, i in enumerate(pool_ids)}
    out = {}
    for g in groups:
        positives = np.flatnonzero(matrix[[row[i] for i in members[g]]].any(0))
        out[g] = int(positives[np.argmin(freq[positives])]) if len(positives) else "none"
    return out


def _scalar(v: Any) -> Hashable:
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else tuple(a.tolist())


def _stratified_order(strata: Mapping[Hashable, Hashable], seed: int) -> list[Hashable]:
    """All groups in one seeded order whose every prefix (and suffix) is close to stratified.

    Systematic sampling: stratum ``s`` of size ``n_s`` is shuffled and its ``k``-th group gets the key
    ``(k + u_s) / n_s`` with a random offset ``u_s``; sorting by key interleaves the strata in proportion.
    """
    rng = np.random.default_rng(seed)
    by_stratum: dict[Hashable, list[Hashable]] = defaultdict(list)
    for g, s in strata.items():
        by_stratum[s].append(g)
    keyed: list[tuple[float, float, Hashable]] = []
    for s in sorted(by_stratum, key=repr):
        gs = sorted(by_stratum[s], key=repr)
        perm = rng.permutation(len(gs))
        offset = rng.random()
        ties = rng.random(len(gs))
        for k, j in enumerate(perm):
            keyed.append(((k + offset) / len(gs), float(ties[k]), gs[j]))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [g for _, _, g in keyed]


def label_fraction_split(
    ids: Sequence[str],
    labels: Sequence[Any] | Mapping[str, Any] | None = None,
    fraction: float | None = None,
    count: int | None = None,
    seed: int = 0,
    test_ids: Sequence[str] = (),
    groups: Sequence[Hashable] | Mapping[str, Hashable] | None = None,
    val_fraction: float = 0.0,
) -> LabelSplit:
    """Draw a labelled training subset (and a validation set) from the ids outside the fixed test set.

    Args:
        ids: every id (the test ids may be among them).
        labels: per-id labels (aligned with ``ids`` or a mapping id → label): an integer/string class
            (single-label) or a binary vector (multi-label). ``None``: no stratification.
        fraction: fraction of the pool's groups to label, in ``(0, 1]``. Exactly one of ``fraction`` and
            ``count``.
        count: number of the pool's groups to label.
        seed: the seed; same seed and inputs give the same split.
        test_ids: the fixed test set, never drawn from.
        groups: per-id group (patient / recording), aligned with ``ids`` or a mapping; default: each id
            its own group.
        val_fraction: fraction of the pool's groups held out for validation first.

    Returns:
        A :class:`LabelSplit`.

    Raises:
        ValueError: bad fraction/count, duplicate ids, or more groups requested than the pool holds.
    """
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction and count")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    test = [str(i) for i in test_ids]
    test_set = set(test)
    pool = [i for i in ids if i not in test_set]
    if not pool:
        raise ValueError("no ids outside the test set")

    def as_map(values: Sequence[Any] | Mapping[str, Any], name: str) -> dict[str, Any]:
        if isinstance(values, Mapping):
            return {str(k): v for k, v in values.items()}
        if len(values) != len(ids):
            raise ValueError(f"{name} has {len(values)} entries for {len(ids)} ids")
        return dict(zip(ids, values, strict=True))

    group_of = as_map(groups, "groups") if groups is not None else {i: i for i in ids}
    missing = [i for i in pool if i not in group_of]
    if missing:
        raise ValueError(f"no group for {len(missing)} id(s), e.g. {missing[0]!r}")
    test_groups = {group_of[i] for i in test if i in group_of}
    leaked = sorted({group_of[i] for i in pool} & test_groups, key=repr)
    if leaked:
        raise ValueError(f"{len(leaked)} group(s) have ids in and outside the test set, e.g. {leaked[0]!r}")
    label_of = as_map(labels, "labels") if labels is not None else None

    strata = _stratum_of_groups(pool, group_of, label_of)
    order = _stratified_order(strata, seed)
    n_groups = len(order)
    n_val = round(val_fraction * n_groups)
    n_left = n_groups - n_val
    if fraction is not None:
        n_train = n_left if fraction == 1 else min(n_left, max(1, round(fraction * n_groups)))
    else:
        assert count is not None
        if not 0 < count <= n_left:
            raise ValueError(f"count must be in [1, {n_left}] (pool groups less validation), got {count}")
        n_train = count
    train_groups = set(order[:n_train])
    val_groups = set(order[n_groups - n_val :]) if n_val else set()
    train = [i for i in pool if group_of[i] in train_groups]
    val = [i for i in pool if group_of[i] in val_groups]
    unlabelled = [i for i in pool if group_of[i] not in train_groups and group_of[i] not in val_groups]
    return LabelSplit(
        train=train,
        val=val,
        test=test,
        unlabelled=unlabelled,
        seed=int(seed),
        fraction=None if fraction is None else float(fraction),
        count=None if count is None else int(count),
        stratified=label_of is not None,
        n_groups={
            "train": len(train_groups),
            "val": len(val_groups),
            "unlabelled": n_groups - len(train_groups) - len(val_groups),
        },
    )


def save_split(path: str | os.PathLike[str], split: LabelSplit | Mapping[str, Any]) -> Path:
    """Write a split as JSON, atomically (keep it next to the results it produced)."""
    data = split.to_dict() if isinstance(split, LabelSplit) else dict(split)
    return atomic_write_json(path, data)


def load_split(path: str | os.PathLike[str]) -> LabelSplit:
    """Read a split written by :func:`save_split`."""
    data = json.loads(Path(path).read_text())
    return LabelSplit(**data)
