"""xca_cmunet_segmentation: CM-UNet losses and EMA, a short pretraining, and the shipped model's Dice."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medssl.losses.contrastive import info_nce
from medssl.networks import CMUNet, UNetDecoder, UNetEncoder
from medssl.ssl.methods.cmunet import CMUNetViews, RandomShiftNoise, build_cmunet_pretraining
from medssl.ssl.methods.contrastive_masked import ContrastiveMasked

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "xca_cmunet_segmentation"
SHARED_XCA = REPO.parent / "shared" / "data" / "xca" / "fercer_coronary_xca80"
SMALL = (8, 16, 32)


class _Fixed(nn.Module):
    """A 'decoder' that outputs a fixed image, whatever the features."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = nn.Parameter(image.clone())

    def forward(self, feats):
        return self.image.expand(feats.shape[0], *self.image.shape[1:])


def test_reconstruction_loss_counts_only_masked_patches():
    x = torch.zeros(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1  # one 4x4 patch of four masked
    pred = torch.zeros(1, 1, 8, 8)
    pred[..., :4, :4] = 2.0  # error 2 on the masked patch -> MSE 4
    pred[..., 4:, 4:] = 100.0  # huge error on a visible patch must not count
    m = ContrastiveMasked(nn.Identity(), nn.Flatten(), nn.Identity(), _Fixed(pred), contrastive_weight=0.0,
                          patch_size=4)
    out = m({"image": x, "mask": mask})
    assert set(out) == {"loss", "loss_rec"}
    assert out["loss_rec"].item() == pytest.approx(4.0)
    assert out["loss"].item() == pytest.approx(4.0)


def test_contrastive_loss_equals_hand_computed_value():
    tau = 0.07
    q = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # l2-normalised inside: [1, 0], [1, 1]/sqrt(2)
    k = torch.tensor([[0.0, 2.0], [5.0, 5.0]])  # [0, 1], [1, 1]/sqrt(2)
    r = 1 / math.sqrt(2)
    sims = [[0.0, r], [r, 1.0]]  # cosine(q_i, k_j)
    by_hand = 0.0
    for i in range(2):
        logits = [sims[i][j] / tau for j in range(2)]
        by_hand += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    by_hand /= 2
    assert info_nce(q, k, tau).item() == pytest.approx(by_hand, rel=1e-5)
    method = build_cmunet_pretraining(channels=SMALL)
    assert method.temperature == tau and method.symmetric is False
    assert method.mask_ratio == 0.65 and method.patch_size == 16


def test_cmunet_ema_target_never_gets_grads_and_follows_online():
    torch.manual_seed(0)
    method = build_cmunet_pretraining(channels=SMALL)
    views = CMUNetViews(patch_size=16)
    batch = [views({"image": torch.randn(1, 32, 32)}) for _ in range(4)]
    stacked = {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
    assert stacked["mask"].mean().item() == pytest.approx(3 / 4)  # round(0.65 * 4) = 3 of 4 patches
    out = method(stacked)
    assert {"loss", "loss_nce", "loss_rec"} <= set(out)
    out["loss"].backward()
    for target in (method.target_encoder, method.target_projector):
        params = list(target.parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params)
    assert method.encoder.stem.conv_0.conv.weight.grad is not None
    assert method.projector.reduce.weight.grad is not None  # the channel reduction is trained, not redrawn
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = method.target_encoder.module.stem.conv_0.conv.weight.clone()
    method.on_step_end(1, 100)
    after = method.target_encoder.module.stem.conv_0.conv.weight
    online = method.encoder.stem.conv_0.conv.weight
    m = method.last_momentum
    torch.testing.assert_close(after, m * before + (1 - m) * online)


def test_frozen_reduction_stays_one_fixed_layer():
    method = build_cmunet_pretraining(channels=SMALL, trainable_reduction=False)
    before = method.projector.reduce.weight.clone()
    method({"image": torch.randn(2, 1, 32, 32)})["loss"].backward()
    assert method.projector.reduce.weight.grad is None
    method.on_step_end(1, 10)
    torch.testing.assert_close(method.projector.reduce.weight, before)
    torch.testing.assert_close(method.target_projector.module.reduce.weight, before)


def test_mae_only_skips_the_contrastive_branch():
    method = build_cmunet_pretraining(channels=SMALL, contrastive_weight=0.0)
    out = method({"image": torch.randn(2, 1, 32, 32)})
    assert set(out) == {"loss", "loss_rec"}
    assert method.find_unused_parameters


def test_target_view_shift_is_bounded_and_noise_optional():
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 64, 64)
    torch.manual_seed(1)
    view = RandomShiftNoise(max_shift=31, noise_prob=0.0)
    for _ in range(20):
        y = view(x)
        assert y.shape == x.shape
        # a pure shift: some pixel of y equals x at an offset of at most 31 px
        pos = (x == y[0, 32, 32]).nonzero()[0]
        assert abs(int(pos[1]) - 32) <= 31 and abs(int(pos[2]) - 32) <= 31
    noisy = RandomShiftNoise(max_shift=0, noise_prob=1.0, noise_std=0.5)(x)
    assert not torch.equal(noisy, x)
    with pytest.raises(ValueError):
        RandomShiftNoise(max_shift=-1)


def test_unet_parts_check_their_input():
    enc = UNetEncoder(channels=SMALL)
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError):
        UNetEncoder(channels=(8,))
    with pytest.raises(ValueError):
        UNetDecoder(channels=SMALL)(enc(torch.zeros(1, 1, 32, 32))[:2])
    net = CMUNet(channels=SMALL)
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_twenty_pretraining_steps_lower_the_loss(xca, tmp_path):
    torch.set_num_threads(1)
    path = xca.pretrain("samples", tmp_path / "pre", method="cmunet", max_steps=20, batch_size=4, crop=64,
                        lr=1e-3, device="cpu", log_every=1)
    history = json.loads((tmp_path / "pre" / "history.json").read_text())
    loss = history["loss"]
    assert len(loss) == 20 and all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-5:]) < np.mean(loss[:5])
    state = torch.load(path, weights_only=True)
    net = CMUNet()
    net.encoder.load_state_dict(state)  # the exported encoder fits the fine-tuning U-Net


def test_finetune_protocol_holds_out_validation_and_scratch_gets_the_prior(xca, tmp_path):
    torch.set_num_threads(1)
    res = xca.finetune_and_test("samples", tmp_path / "ft", n_labels=4, seed=0, encoder=None, max_steps=4,
                                batch_size=2, crop=64, eval_every=2, device="cpu", test_limit=1)
    split = json.loads((tmp_path / "ft" / "split.json").read_text())
    assert res["n_train"] == 3 and res["n_val"] == 1 and not set(split["train"]) & set(split["val"])
    assert 0 < res["prior"] < 0.5 and 0 < res["threshold"] < 1 and 0 <= res["dice"] <= 1
    one = xca.finetune_and_test("samples", tmp_path / "ft1", n_labels=1, seed=0, encoder=None, max_steps=2,
                                batch_size=2, crop=64, device="cpu", test_limit=1)
    assert one["n_val"] == 0 and one["threshold"] == 0.5


def test_finetune_at_a_magnification_scores_at_the_native_size_and_records_it(xca, tmp_path):
    torch.set_num_threads(1)
    res = xca.finetune_and_test("samples", tmp_path / "ft", n_labels=4, seed=0, encoder=None, max_steps=2,
                                batch_size=2, crop=64, eval_every=2, device="cpu", test_limit=1, scale=1.5,
                                save_model=tmp_path / "ft" / "model.pt")
    assert res["scale"] == 1.5 and 0 <= res["dice"] <= 1 and 0 < res["threshold"] < 1
    info = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert info["scale"] == 1.5 and info["roi"] == [64, 64]  # medssl infer magnifies by the recorded scale
    rows = xca.result_rows(res, "scratch", 0, 40, "cmd", task=xca.TASK + "_x1.5")
    assert {r["task"] for r in rows} == {"coronary_vessel_segmentation_x1.5"} and rows[0]["scale"] == 1.5


def test_study_scheduler_runs_random_init_beside_pretraining_and_hands_on_the_encoder(monkeypatch):
    from tests.conftest import _bundle_module

    gen = _bundle_module("xca_cmunet_segmentation", "experiment")
    experiment = next(gen)
    try:
        order = []

        def fake_run_job(job):
            order.append(job.get("name") or f"{job['init']}:{job['kwargs']['encoder']}")
            return {**job, "encoder": f"enc_{job['name']}.pt", "seconds": 0.0} if job["kind"] == "pretrain" else {
                **job, "result": {"n_labels": 1, "dice": 0.5, "cldice": 0.5, "threshold": 0.5, "best_step": 1,
                                  "seconds": 0.0}}

        monkeypatch.setattr(experiment.xca, "run_job", fake_run_job)
        jobs = [
            {"kind": "finetune", "init": "cmunet", "needs": "cmunet", "seed": 0, "kwargs": {"encoder": None}},
            {"kind": "pretrain", "name": "cmunet", "kwargs": {}},
            {"kind": "finetune", "init": "scratch", "seed": 0, "kwargs": {"encoder": None}},
            {"kind": "finetune", "init": "mae", "needs": "mae", "seed": 0, "kwargs": {"encoder": None}},
        ]
        finished = []
        done, skipped = experiment.run_jobs(jobs, 1, None, finished.append)
        # the dependent job waits for its pretraining and gets its encoder; the one whose pretraining never
        # ran is reported as skipped, not silently dropped
        assert order == ["cmunet", "cmunet:enc_cmunet.pt", "scratch:None"]
        assert [d.get("init", d.get("name")) for d in finished] == ["cmunet", "cmunet", "scratch"]
        assert [j["init"] for j in skipped] == ["mae"]
    finally:
        gen.close()


def _docs_dice() -> float | None:
    results = BUNDLE / "docs" / "results.json"
    if not results.is_file():
        return None
    rows = [r for r in json.loads(results.read_text()) if r["init"] == "cmunet" and r["label_fraction"] == 1.0
            and r["seed"] == 0 and r["metric"] == "dice"]
    return rows[0]["value"] if rows else None


@pytest.mark.shared
def test_shipped_model_reproduces_the_docs_dice_on_the_40_test_images(tmp_path):
    if not SHARED_XCA.is_dir():
        pytest.skip(f"../shared/data is absent: {SHARED_XCA} not found")
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("models/model.pt is absent: the bundle's study has not been run yet")
    expected = _docs_dice()
    if expected is None:
        pytest.skip("docs/results.json has no 40-label CM-UNet seed-0 Dice yet")
    from medssl.eval.metrics import dice
    from medssl.io import load

    images = sorted((SHARED_XCA / "test" / "images").glob("*.png"))
    assert len(images) == 40
    res = subprocess.run([sys.executable, "-m", "medssl", "infer", "xca_cmunet_segmentation", *map(str, images),
                          "--out", str(tmp_path), "--device", "cpu"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    scores = []
    for img in images:
        pred = load(tmp_path / f"{img.stem}_seg.png").array > 0
        truth = load(SHARED_XCA / "test" / "masks" / f"{img.stem}_gt.png").array > 0
        scores.append(dice(pred, truth))
    assert float(np.mean(scores)) == pytest.approx(expected, abs=0.005)
