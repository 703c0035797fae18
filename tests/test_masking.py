import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medssl.masking import MaskCollator, MultiBlockMask3D, RandomPatchMask


def _check_indices(ctx: torch.Tensor, tgt: torch.Tensor, n: int) -> None:
    assert ctx.dtype == torch.long and tgt.dtype == torch.long
    assert ctx.ndim == 2 and tgt.ndim == 2 and ctx.shape[0] == tgt.shape[0]
    for c, t in zip(ctx, tgt, strict=True):
        assert torch.all(c[1:] > c[:-1]) and torch.all(t[1:] > t[:-1])  # sorted, unique
        assert c.min() >= 0 and t.min() >= 0 and c.max() < n and t.max() < n
        assert not set(c.tolist()) & set(t.tolist())  # disjoint


# ---------------------------------------------------------------- random patch


@pytest.mark.parametrize("grid", [(50,), (4, 6), (2, 3, 4)])
def test_random_patch_exact_counts_partition(grid):
    n = math.prod(grid)
    m = RandomPatchMask(grid, mask_ratio=0.75)
    ctx, tgt = m(5, torch.Generator().manual_seed(1))
    n_tgt = round(0.75 * n)
    assert tgt.shape == (5, n_tgt) and ctx.shape == (5, n - n_tgt)
    _check_indices(ctx, tgt, n)
    full = torch.cat([ctx, tgt], 1).sort(1).values
    assert torch.equal(full, torch.arange(n).expand(5, n))  # context and target cover the grid


def test_random_patch_exact_ratio_and_uniform():
    m = RandomPatchMask((8, 8), mask_ratio=0.5)
    assert m.num_target == 32
    _, tgt = m(2000, torch.Generator().manual_seed(0))
    freq = torch.zeros(64).index_add_(0, tgt.flatten(), torch.ones(tgt.numel())) / 2000
    # each token is a target with probability 0.5; 2000 draws: std 0.011
    assert torch.all((freq - 0.5).abs() < 0.06)


def test_random_patch_deterministic():
    m = RandomPatchMask((14, 14), 0.75)
    a = m(3, torch.Generator().manual_seed(7))
    b = m(3, torch.Generator().manual_seed(7))
    c = m(3, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grid_size": (4, 4), "mask_ratio": 0.0},
        {"grid_size": (4, 4), "mask_ratio": 1.0},
        {"grid_size": (4, 0), "mask_ratio": 0.5},
        {"grid_size": (2,), "mask_ratio": 0.1},  # rounds to 0 targets
    ],
)
def test_random_patch_invalid(kwargs):
    with pytest.raises(ValueError):
        RandomPatchMask(**kwargs)


# ---------------------------------------------------------------- multi-block


def test_multiblock_default_ratio_about_090():
    m = MultiBlockMask3D((8, 14, 14))
    g = torch.Generator().manual_seed(0)
    ratios = torch.stack([m.sample_mask(g).float().mean() for _ in range(400)])
    assert 0.85 < ratios.mean().item() < 0.93
    assert ratios.min() > 0.5


def test_multiblock_blocks_are_rectangles_spanning_time():
    t, h, w = 4, 14, 12
    m = MultiBlockMask3D((t, h, w))
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        blocks = m.sample_blocks(g)
        assert len(blocks) == 10
        for i, (top, left, bh, bw) in enumerate(blocks):
            assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
            scale = 0.15 if i < 8 else 0.70
            # area is scale * h * w up to the rounding of each side; aspect ratio in [0.75, 1.5] likewise
            target = scale * h * w
            assert 0.8 * target <= bh * bw <= 1.2 * target
            assert 0.75 * (bh - 0.5) / (bh + 0.5) <= bh / bw <= 1.5 * (bw + 0.5) / (bw - 0.5)
        mask = m.blocks_to_mask(blocks)
        # reference union computed cell by cell
        ref = torch.zeros(h, w, dtype=torch.bool)
        for y in range(h):
            for x in range(w):
                ref[y, x] = any(tp <= y < tp + bh and lf <= x < lf + bw for tp, lf, bh, bw in blocks)
        assert mask.shape == (t, h, w)
        for k in range(t):
            assert torch.equal(mask[k], ref)


def test_multiblock_single_block_is_contiguous_in_flat_mask():
    t, h, w = 3, 10, 10
    m = MultiBlockMask3D((t, h, w), short=(1, 0.2), long=(0, 0.5), aspect_ratio=(1.0, 1.0))
    flat = m.sample_mask(torch.Generator().manual_seed(5))
    cube = flat.reshape(t, h, w)
    ys, xs = cube[0].nonzero(as_tuple=True)
    # one 4x4 or 5x4 rectangle: sqrt(20) = 4.47 -> 4 per side, 16 cells, filled bounding box
    assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == cube[0].sum() == 16
    assert all(torch.equal(cube[k], cube[0]) for k in range(t))


def test_multiblock_batch_counts_disjoint_and_within_masks():
    m = MultiBlockMask3D((4, 8, 8))
    masks = [m.sample_mask(g) for g in [torch.Generator().manual_seed(11)] for _ in range(6)]
    ctx, tgt = m(6, torch.Generator().manual_seed(11))  # same draws, then subsampled
    _check_indices(ctx, tgt, 256)
    assert tgt.shape[1] == min(int(mk.sum()) for mk in masks)
    assert ctx.shape[1] == min(int((~mk).sum()) for mk in masks)
    for b, mk in enumerate(masks):
        assert mk[tgt[b]].all() and not mk[ctx[b]].any()


def test_multiblock_deterministic_with_generator():
    m = MultiBlockMask3D((8, 14, 14))
    a = m(2, torch.Generator().manual_seed(0))
    b = m(2, torch.Generator().manual_seed(0))
    c = m(2, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[1].shape == c[1].shape and torch.equal(a[1], c[1]))


def test_multiblock_keeps_min_context():
    m = MultiBlockMask3D((2, 4, 4), short=(4, 1.0), long=(0, 0.5), min_context=4)
    ctx, tgt = m(3, torch.Generator().manual_seed(0))
    assert ctx.shape[1] >= 4
    _check_indices(ctx, tgt, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grid_size": (14, 14)},
        {"grid_size": (2, 0, 4)},
        {"grid_size": (2, 4, 4), "short": (2, 1.5)},
        {"grid_size": (2, 4, 4), "short": (0, 0.1), "long": (0, 0.5)},
        {"grid_size": (2, 4, 4), "aspect_ratio": (2.0, 1.0)},
    ],
)
def test_multiblock_invalid(kwargs):
    with pytest.raises(ValueError):
        MultiBlockMask3D(**kwargs)


# ---------------------------------------------------------------- collator


class _Toy(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 4, 8, 8), float(i)), "label": i}


def test_collator_in_dataloader_two_workers():
    gen = MultiBlockMask3D((2, 4, 4), short=(2, 0.2), long=(1, 0.5))
    collate = MaskCollator(gen)

    def run():
        loader = DataLoader(
            _Toy(),
            batch_size=4,
            num_workers=2,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        return list(loader)

    batches = run()
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].shape == (4, 1, 4, 8, 8)
        assert batch["label"].tolist() == batch["image"][:, 0, 0, 0, 0].long().tolist()
        _check_indices(batch["context_idx"], batch["target_idx"], 32)
    again = run()  # DataLoader seeds workers from its generator: reproducible
    for a, b in zip(batches, again, strict=True):
        assert torch.equal(a["target_idx"], b["target_idx"])
    assert len({tuple(b["target_idx"][0].tolist()) for b in batches}) > 1  # workers do not repeat masks


def test_collator_seeded_and_checks_keys():
    collate = MaskCollator(RandomPatchMask((4, 4), 0.5), seed=3)
    samples = [{"image": torch.zeros(1, 8, 8)} for _ in range(3)]
    out = collate(samples)
    assert out["image"].shape == (3, 1, 8, 8)
    assert out["context_idx"].shape == (3, 8) and out["target_idx"].shape == (3, 8)
    ref = RandomPatchMask((4, 4), 0.5)(3, torch.Generator().manual_seed(3 - 1 + 1))
    assert torch.equal(out["target_idx"], ref[1])
    with pytest.raises(ValueError):
        collate([{"img": torch.zeros(1)}])
    with pytest.raises(ValueError):
        MaskCollator("not a generator")  # type: ignore[arg-type]
