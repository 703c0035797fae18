"""EMA arithmetic, each SSL method's forward/backward, and a short JEPA pretraining run on the echo cine."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from medssl.masking import MaskCollator, MultiBlockMask3D, RandomPatchMask
from medssl.networks import JEPAPredictor, MAEDecoder, create_encoder
from medssl.ssl import BYOL, CLA, EMA, JEPA, MAE, ContrastiveMasked, PosNoiseSchedule, momentum_schedule
from medssl.ssl.methods import random_patch_pixel_mask

REPO = Path(__file__).resolve().parents[1]
ECHO_SAMPLE = REPO / "medssl" / "samples" / "ultrasound" / "echo_cine_40f.dcm"
ECHO_SHARED = REPO.parent / "shared" / "data" / "ultrasound" / "dicom" / "color3d_jpeg_baseline.dcm"


def tiny_encoder(img_size: int = 32, patch: int = 8, **kw):
    kw.setdefault("hidden_size", 32)
    kw.setdefault("num_heads", 2)
    kw.setdefault("depth", 1)
    return create_encoder(
        "vit_tiny", spatial_dims=2, in_channels=1, img_size=img_size, patch_size=patch, **kw
    )


def token_batch(enc, b: int = 2, ratio: float = 0.75, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ctx, tgt = RandomPatchMask(enc.grid_size, ratio)(b, g)
    return {"image": torch.rand(b, 1, 32, 32, generator=g), "context_idx": ctx, "target_idx": tgt}


def assert_target_frozen(target: nn.Module) -> None:
    params = list(target.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(p.grad is None for p in params)


# ---------------------------------------------------------------- EMA
def test_momentum_schedule_by_hand():
    # linear: 0.996 + 0.004 * 5/10 = 0.998
    assert momentum_schedule(5, 10) == pytest.approx(0.998)
    assert momentum_schedule(0, 10) == pytest.approx(0.996)
    assert momentum_schedule(10, 10) == pytest.approx(1.0)
    assert momentum_schedule(99, 10) == pytest.approx(1.0)  # clamped
    # cosine (BYOL): 1 - 0.004 * (cos(pi * 5/10) + 1)/2 = 1 - 0.002 = 0.998;
    # at 2.5/10: 1 - 0.004 * (cos(pi/4) + 1)/2 = 1 - 0.004 * 0.8535534 = 0.9965858
    assert momentum_schedule(5, 10, kind="cosine") == pytest.approx(0.998)
    assert momentum_schedule(0, 10, kind="cosine") == pytest.approx(0.996)
    assert momentum_schedule(1, 4, start=0.996, end=1.0, kind="cosine") == pytest.approx(0.9965858, abs=1e-7)
    with pytest.raises(ValueError):
        momentum_schedule(1, 10, kind="step")


def test_ema_update_arithmetic_and_buffers():
    online = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    ema = EMA(online)
    with torch.no_grad():
        online[0].weight.fill_(1.0)
        online[0].bias.fill_(3.0)
        ema.module[0].weight.fill_(0.0)
        ema.module[0].bias.fill_(-1.0)
        online[1].running_mean.fill_(7.0)
    ema.update(online, momentum=0.9)
    # weight: 0.9 * 0 + 0.1 * 1 = 0.1; bias: 0.9 * -1 + 0.1 * 3 = -0.6
    assert torch.allclose(ema.module[0].weight, torch.full((1, 2), 0.1))
    assert ema.module[0].bias.item() == pytest.approx(-0.6)
    assert ema.module[1].running_mean.item() == 7.0  # buffers copied
    ema.update(online, momentum=1.0)  # m = 1 keeps the target
    assert ema.module[0].bias.item() == pytest.approx(-0.6)
    assert_target_frozen(ema)
    with pytest.raises(ValueError):
        ema.update(online, momentum=1.5)


def test_pos_noise_schedule():
    s = PosNoiseSchedule(0.2, kind="linear")
    assert s(0, 10) == pytest.approx(0.2) and s(5, 10) == pytest.approx(0.1) and s(10, 10) == 0.0
    c = PosNoiseSchedule(0.2, kind="cosine")  # 0.2 * (1 + cos(pi/2))/2 = 0.1
    assert c(5, 10) == pytest.approx(0.1)


# ---------------------------------------------------------------- methods
def test_jepa_forward_backward_ema_and_aux_losses():
    torch.manual_seed(0)
    enc = tiny_encoder()
    pred = JEPAPredictor(enc.num_patches, 32, predictor_dim=16, depth=1, num_heads=2, grid_size=enc.grid_size)
    m = JEPA(enc, pred, loss_weights={"dispersive": 0.1}, loc_weight=0.5, pos_noise=PosNoiseSchedule(0.2))
    out = m(token_batch(enc))
    assert {"loss", "loss_pred", "loss_loc", "loss_disp", "pos_noise_std", "encoder_rank"} <= set(out)
    assert 1.0 <= float(out["encoder_rank"]) <= 32.0  # the collapse monitor: within [1, encoder width]
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and not out["loss_pred"].requires_grad
    expected = out["loss_pred"] + 0.5 * out["loss_loc"] + 0.1 * out["loss_disp"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    assert_target_frozen(m.target_encoder)
    assert m.loc_head is not None and m.loc_head.mlp[0].weight.grad is not None
    # every predictor weight learns (MONAI TransformerBlock's unused norm_cross_attn aside)
    assert all(p.grad is not None for n, p in pred.named_parameters() if p.requires_grad and "cross" not in n)
    assert any(p.grad is not None for p in enc.parameters())
    # EMA step: change the online weights, then the target moves by (1 - m) of the difference
    before = [p.detach().clone() for p in m.target_encoder.parameters()]
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(1.0)
    m.on_step_end(0, 10)  # momentum 0.996
    after = list(m.target_encoder.parameters())
    for b, a in zip(before, after, strict=True):
        assert torch.allclose(a - b, torch.full_like(a, 0.004), atol=1e-5)
    m.on_step_end(5, 10)
    assert m.pos_noise_std == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown loss weight"):
        JEPA(enc, pred, loss_weights={"foo": 1.0})
    with pytest.raises(ValueError, match="context_idx"):
        m({"image": torch.rand(2, 1, 32, 32)})


def test_jepa_logs_the_encoder_rank_every_rank_every_steps():
    torch.manual_seed(0)
    enc = tiny_encoder()
    pred = JEPAPredictor(enc.num_patches, 32, predictor_dim=16, depth=1, num_heads=2, grid_size=enc.grid_size)
    m = JEPA(enc, pred, rank_every=3)
    batch = token_batch(enc)
    seen = []
    for step in range(1, 8):
        seen.append("encoder_rank" in m(batch))
        m.on_step_end(step, 10)
    assert seen == [True, False, False, True, False, False, True]  # the first step, then steps 4 and 7
    assert "encoder_rank" not in JEPA(enc, pred, rank_every=0)(batch)


def test_jepa_token_level_dispersive_term():
    torch.manual_seed(0)
    enc = tiny_encoder()
    pred = JEPAPredictor(enc.num_patches, 32, predictor_dim=16, depth=1, num_heads=2, grid_size=enc.grid_size)
    batch = token_batch(enc)
    z = enc(batch["image"], context_idx=batch["context_idx"]).detach()
    m = JEPA(enc, pred, loss_weights={"dispersive": 0.5}, dispersive_on="tokens", dispersive_max_tokens=10_000)
    out = m(batch)
    # every context token of every sample is one point (not one point per sample)
    from medssl.losses.dispersive import dispersive_loss

    assert out["loss_disp"].item() == pytest.approx(dispersive_loss(z.reshape(-1, 32)).item(), rel=1e-5)
    assert out["loss_disp"].item() != pytest.approx(dispersive_loss(z).item(), rel=1e-3)
    out["loss"].backward()
    assert any(p.grad is not None for p in enc.parameters())
    with pytest.raises(ValueError, match="dispersive_on"):
        JEPA(enc, pred, dispersive_on="pixels")


def test_mae_forward_backward_and_hook():
    torch.manual_seed(0)
    enc = tiny_encoder()
    dec = MAEDecoder(
        enc.num_patches, 32, patch_dim=64, decoder_dim=16, depth=1, num_heads=2, grid_size=enc.grid_size
    )
    calls = []

    def extra(batch, pred, target, target_idx):
        calls.append(pred.shape)
        return {"freq": (pred - target).abs().mean() * 0.0 + 1.0}

    m = MAE(enc, dec, norm_pix=True, extra_targets=extra)
    out = m(token_batch(enc))
    assert calls == [torch.Size([2, 12, 64])]
    assert out["loss"].item() == pytest.approx(out["loss_rec"].item() + 1.0, rel=1e-6)
    out["loss"].backward()
    assert any(p.grad is not None for p in dec.parameters())
    assert any(p.grad is not None for p in enc.parameters())
    imgs = m.images(token_batch(enc))
    assert set(imgs) == {"input", "masked", "reconstruction"}
    assert all(
        v.shape == (1, 32, 32) and 0.0 <= float(v.min()) and float(v.max()) <= 1.0 for v in imgs.values()
    )
    assert float((imgs["masked"] == 0).float().mean()) >= 0.7  # 12 of 16 patches blanked (minimum is 0)


class _ConvEnc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_contrastive_masked_target_never_gets_grads():
    torch.manual_seed(0)
    enc = _ConvEnc()
    projector = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16))
    predictor = nn.Linear(16, 16)
    decoder = nn.Conv2d(8, 1, 1)
    m = ContrastiveMasked(enc, projector, predictor, decoder, mask_ratio=0.5, patch_size=8, temperature=0.2)
    out = m({"image": torch.rand(4, 1, 16, 16)})
    assert {"loss", "loss_nce", "loss_rec"} <= set(out)
    out["loss"].backward()
    assert_target_frozen(m.target_encoder)
    assert_target_frozen(m.target_projector)
    assert enc.conv.weight.grad is not None and predictor.weight.grad is not None
    assert decoder.weight.grad is not None


def test_random_patch_pixel_mask_counts():
    m = random_patch_pixel_mask((3, 1, 16, 24), 8, 0.5, torch.Generator().manual_seed(0))
    # grid 2 x 3 = 6 patches, round(0.5 * 6) = 3 masked per sample, each 8 x 8 = 64 pixels -> 192
    assert m.shape == (3, 1, 16, 24)
    assert m.sum(dim=(1, 2, 3)).tolist() == [192.0, 192.0, 192.0]


def test_byol_forward_backward():
    torch.manual_seed(0)
    enc = tiny_encoder()
    m = BYOL(enc, projection_dim=16, hidden_dim=32)
    x = torch.rand(4, 1, 32, 32)
    out = m({"view1": x, "view2": x.flip(-1)})
    assert 0.0 <= out["loss"].item() <= 8.0
    out["loss"].backward()
    assert_target_frozen(m.target)
    assert m.encoder is enc and any(p.grad is not None for p in enc.parameters())
    m.on_step_end(1, 10)
    assert m.last_momentum == pytest.approx(momentum_schedule(1, 10, kind="cosine"))
    with pytest.raises(ValueError, match="view2"):
        m({"view1": x})


def test_cla_alignment_zero_at_snapshot_then_positive():
    torch.manual_seed(0)
    enc = tiny_encoder()
    pred = JEPAPredictor(enc.num_patches, 32, predictor_dim=16, depth=1, num_heads=2, grid_size=enc.grid_size)
    m = CLA(JEPA(enc, pred), cla_weight=2.0)
    batch = token_batch(enc)
    out = m(batch)
    assert out["loss_cla"].item() == pytest.approx(0.0, abs=1e-5)  # past == current at start
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = m(batch)
    assert out["loss_cla"].item() > 1e-4
    assert out["loss"].item() == pytest.approx(
        out["loss_pred"].item() + 2.0 * out["loss_cla"].item(), rel=1e-5
    )
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in m.past_encoder.parameters())
    mse = CLA(m.method, distance="mse")
    assert mse(batch)["loss_cla"].item() == pytest.approx(
        0.0, abs=1e-10
    )  # fresh snapshot of the same encoder
    with pytest.raises(ValueError):
        CLA(m.method, distance="kl")
    m.snapshot()
    assert m(batch)["loss_cla"].item() == pytest.approx(0.0, abs=1e-5)
    assert m.encoder is enc


# ---------------------------------------------------------------- 30-step JEPA on the echo cine
@pytest.mark.slow
def test_jepa_30_steps_on_echo_cine_lowers_loss(tmp_path):
    path = ECHO_SAMPLE if ECHO_SAMPLE.is_file() else ECHO_SHARED
    if not path.is_file():
        pytest.skip(f"needs the shipped echo sample ({ECHO_SAMPLE}) or ../shared ({ECHO_SHARED})")
    from medssl.ssl.data import VideoClipDataset
    from medssl.ssl.trainer import Trainer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    ds = VideoClipDataset([path], num_frames=16, stride=2, size=64, clips_per_file=8)
    enc = create_encoder(
        "vit_tiny",
        spatial_dims=2,
        in_channels=1,
        img_size=64,
        patch_size=16,
        num_frames=16,
        tubelet_size=2,
        depth=2,
        hidden_size=96,
        num_heads=2,
    )
    assert enc.grid_size == (8, 4, 4)
    pred = JEPAPredictor(enc.num_patches, 96, predictor_dim=48, depth=1, num_heads=2, grid_size=enc.grid_size)
    method = JEPA(enc, pred)
    collate = MaskCollator(MultiBlockMask3D(enc.grid_size), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate, num_workers=0)
    trainer = Trainer(
        method,
        loader,
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.04),
        max_steps=30,
        output_dir=tmp_path,
        ckpt_every=0,
        log_every=10,
        device="cpu",
        seed=0,
        warmup_steps=3,
        progress=False,
    )
    history = trainer.fit()
    losses = [float(v) for v in history["loss"]]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(
        f"JEPA 30 steps on {path.name}: first-5 mean {first:.4f} -> last-5 mean {last:.4f} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    assert last < first
