"""Tests for medssl.eval: splits, metrics (vs hand-computed values), probes, kNN, fine-tuning, results."""

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

from medssl.errors import CheckpointError
from medssl.eval.finetune import finetune, init_output_bias_to_prior, load_pretrained, predict
from medssl.eval.knn import knn_predict
from medssl.eval.linear_probe import LinearProbe, extract_features, linear_probe
from medssl.eval.metrics import choose_threshold, cldice, dice, hd95, macro_auroc, nmse, psnr, ssim
from medssl.eval.results import append_result, load_results, render_results_table, summarise
from medssl.eval.splits import label_fraction_split, load_split, save_split
from medssl.ssl.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- splits


def _dataset(n_patients: int = 40, frames: int = 3):
    ids, labels, groups = [], [], []
    for p in range(n_patients):
        lab = p % 4 if p % 10 else 4  # class 4 is rare (4 patients)
        for f in range(frames):
            ids.append(f"p{p:03d}_f{f}")
            labels.append(lab)
            groups.append(f"p{p:03d}")
    return ids, labels, groups


def test_split_deterministic_and_seeded():
    ids, labels, groups = _dataset()
    test_ids = [i for i in ids if i.startswith("p00")]  # patients 0..9 fixed test set
    a = label_fraction_split(ids, labels, fraction=0.25, seed=1, test_ids=test_ids, groups=groups)
    b = label_fraction_split(ids, labels, fraction=0.25, seed=1, test_ids=test_ids, groups=groups)
    c = label_fraction_split(ids, labels, fraction=0.25, seed=2, test_ids=test_ids, groups=groups)
    assert a == b
    assert a.train != c.train
    assert a.test == c.test == test_ids


def test_split_groups_test_set_and_fractions():
    ids, labels, groups = _dataset()
    group_of = dict(zip(ids, groups, strict=True))
    label_of = dict(zip(ids, labels, strict=True))
    test_ids = [i for i in ids if i.startswith("p00")]
    pool = [i for i in ids if i not in test_ids]
    s = label_fraction_split(ids, labels, fraction=0.25, seed=0, test_ids=test_ids, groups=groups, val_fraction=0.2)
    # never touches the test set; train / val / unlabelled partition the pool
    assert not set(s.train) & set(test_ids) and not set(s.val) & set(test_ids)
    assert sorted(s.train + s.val + s.unlabelled) == sorted(pool)
    assert not set(s.train) & set(s.val)
    # whole groups only: every frame of a chosen patient, and 25 % of the 30 pool patients
    train_groups = {group_of[i] for i in s.train}
    assert len(s.train) == 3 * len(train_groups)
    assert len(train_groups) == s.n_groups["train"] == round(0.25 * 30)
    assert s.n_groups["val"] == 6
    assert not train_groups & {group_of[i] for i in s.val}
    # stratified: each of the 4 common classes (7 or 8 pool patients each) gets about a quarter
    counts = np.bincount([label_of[i] for i in s.train if group_of[i] in train_groups], minlength=5) // 3
    assert all(1 <= counts[c] <= 3 for c in range(4)), counts
    # nested across fractions for one seed
    small = label_fraction_split(ids, labels, fraction=0.1, seed=0, test_ids=test_ids, groups=groups, val_fraction=0.2)
    assert set(small.train) < set(s.train) and small.val == s.val
    full = label_fraction_split(ids, labels, fraction=1.0, seed=0, test_ids=test_ids, groups=groups, val_fraction=0.2)
    assert sorted(full.train + full.val) == sorted(pool) and full.unlabelled == []
    by_count = label_fraction_split(ids, labels, count=5, seed=0, test_ids=test_ids, groups=groups)
    assert by_count.n_groups["train"] == 5


def test_split_multilabel_unlabelled_and_errors(tmp_path):
    ids = [f"r{i}" for i in range(60)]
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < [0.5, 0.3, 0.2, 0.05]).astype(int)
    s = label_fraction_split(ids, y, fraction=0.5, seed=3)
    assert len(s.train) == 30 and s.stratified
    assert y[[ids.index(i) for i in s.train]].sum(0)[0] > 0
    plain = label_fraction_split(ids, None, count=7, seed=3)
    assert len(plain.train) == 7 and not plain.stratified
    path = save_split(tmp_path / "split.json", s)
    assert load_split(path) == s
    assert json.loads(path.read_text())["seed"] == 3
    with pytest.raises(ValueError, match="exactly one"):
        label_fraction_split(ids, fraction=0.5, count=3)
    with pytest.raises(ValueError, match="fraction"):
        label_fraction_split(ids, fraction=0.0)
    with pytest.raises(ValueError, match="in and outside the test set"):
        label_fraction_split(["a1", "a2", "b1"], fraction=0.5, test_ids=["a1"], groups=["a", "a", "b"])


# ---------------------------------------------------------------- metrics


def test_dice_hand_computed():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    a[0, :3] = 1  # 3 px
    b[0, 1:] = 1  # 3 px, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(torch.ones(2, 2, 2), torch.zeros(2, 2, 2)) == 0.0


def test_cldice_hand_computed():
    pred = np.zeros((7, 7), bool)
    target = np.zeros((7, 7), bool)
    pred[3, 1:6] = True  # a 5-pixel line: its own skeleton
    target[3, 1:4] = True  # 3 pixels
    # Tprec = |S(pred) ∩ target| / |S(pred)| = 3/5, Tsens = |S(target) ∩ pred| / |S(target)| = 3/3
    assert cldice(pred, target) == pytest.approx(2 * 0.6 * 1.0 / 1.6)
    assert cldice(pred, pred) == pytest.approx(1.0)
    assert cldice(pred, np.zeros_like(pred)) == 0.0
    vol = np.zeros((5, 5, 5), bool)
    vol[2, 2, :] = True
    assert cldice(vol, vol) == pytest.approx(1.0)


def test_hd95_hand_computed():
    pred = np.zeros((7, 7), bool)
    target = np.zeros((7, 7), bool)
    pred[3, 1:6] = True
    target[3, 1:4] = True
    # pred→target distances 0,0,0,1,2 (95th pct, linear: 1.8); target→pred all 0; symmetric = max
    assert hd95(pred, target) == pytest.approx(1.8, abs=1e-5)
    assert hd95(pred, target, spacing=(1.0, 2.0)) == pytest.approx(3.6, abs=1e-5)
    assert hd95(pred, pred) == 0.0
    assert hd95(pred, np.zeros_like(pred)) == math.inf


def test_macro_auroc_hand_computed():
    # class 0: positives {0.9, 0.6}, negatives {0.1, 0.7}: pairs won 3 of 4 → 0.75
    # class 1: perfectly ranked → 1.0
    scores = np.array([[0.9, 0.2], [0.6, 0.1], [0.1, 0.8], [0.7, 0.9]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert macro_auroc(scores, labels) == pytest.approx((0.75 + 1.0) / 2)
    # integer labels for multi-class: one-vs-rest per class
    assert macro_auroc(scores, np.array([0, 0, 1, 1])) == pytest.approx((0.75 + 1.0) / 2)
    assert macro_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    with pytest.warns(UserWarning, match="left out"):
        assert macro_auroc(scores, np.array([[1, 0], [1, 0], [0, 0], [0, 0]])) == pytest.approx(0.75)


def test_psnr_ssim_nmse_hand_computed():
    y = np.zeros((8, 8))
    y[2:6, 2:6] = 1.0
    x = y.copy()
    x[0, 0] = 0.5  # one pixel off by 0.5: MSE = 0.25/64
    assert psnr(x, y, data_range=1.0) == pytest.approx(10 * math.log10(1 / (0.25 / 64)))
    assert nmse(x, y) == pytest.approx(0.25 / 16)
    assert nmse(y, y) == 0.0
    assert ssim(y, y) == pytest.approx(1.0)
    assert ssim(x, y, data_range=1.0) < 1.0
    # SSIM of a constant offset on a constant image: luminance term only,
    # (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with C1 = (0.01 L)^2
    a, b = np.full((7, 7), 0.5), np.full((7, 7), 0.6)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b, data_range=1.0) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1), rel=1e-6)
    with pytest.raises(ValueError):
        nmse(x, np.zeros_like(y))


def test_choose_threshold():
    probs = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # F1: t=0.225 → tp 2, fp 1 → 0.8 (best); youden: t=0.225 gives sens 1, spec 0.5 → 0.5,
    # t=0.6 gives sens 0.5, spec 1 → 0.5; tie → the one closer to 0.5
    assert choose_threshold(probs, labels, "f1") == pytest.approx(0.225)
    assert choose_threshold(probs, labels, "youden") == pytest.approx(0.6)
    per_class = choose_threshold(np.stack([probs, 1 - probs], 1), np.stack([labels, 1 - labels], 1))
    assert per_class.shape == (2,)


# ---------------------------------------------------------------- probes


def _blobs(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return centers[y] + 0.5 * torch.randn(n, 4, generator=g), y


def test_init_output_bias_to_prior():
    lin = nn.Linear(3, 2)
    init_output_bias_to_prior(lin, [0.2, 0.5])
    assert torch.allclose(lin.bias, torch.tensor([math.log(0.2 / 0.8), 0.0]))
    assert torch.allclose(torch.sigmoid(lin.bias), torch.tensor([0.2, 0.5]))
    init_output_bias_to_prior(lin, [0.25, 0.75], activation="softmax")
    assert torch.allclose(torch.softmax(lin.bias, 0), torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError):
        init_output_bias_to_prior(lin, [0.1, 0.2, 0.3])


def test_linear_probe_torch_and_sklearn():
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    probe = LinearProbe(max_iter=50)
    # before fitting: zero weights and bias at the prior → predicts the prior
    probs = probe.fit(x, y).predict_proba(xt)
    assert probs.shape == (60, 3) and torch.allclose(probs.sum(1), torch.ones(60), atol=1e-5)
    assert (probs.argmax(1) == yt).float().mean() > 0.9
    multi = torch.nn.functional.one_hot(y, 3)
    p_ml = linear_probe(x, multi, xt, multilabel=True, max_iter=50)
    assert macro_auroc(p_ml, torch.nn.functional.one_hot(yt, 3)) > 0.95
    # a probe with no signal stays at the prior
    flat = LinearProbe(multilabel=True).fit(torch.zeros(10, 2), torch.tensor([[1], [0], [0], [0], [0]] * 2))
    assert torch.allclose(flat.predict_proba(torch.zeros(1, 2)), torch.tensor([[0.2]]), atol=1e-4)


def test_linear_probe_sklearn_backend():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    probs_sk = linear_probe(x, y, xt, backend="sklearn")
    assert probs_sk.shape == (60, 3)
    assert (probs_sk.argmax(1) == yt).float().mean() > 0.9
    multi = torch.nn.functional.one_hot(y, 3)
    p_ml = linear_probe(x, multi, xt, multilabel=True, backend="sklearn")
    assert p_ml.shape == (60, 3)
    assert macro_auroc(p_ml, torch.nn.functional.one_hot(yt, 3)) > 0.95


def test_knn_hand_computed():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    maj = knn_predict(train, labels, test, k=3, weighting="majority")
    assert torch.allclose(maj, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))
    temp = knn_predict(train, labels, test, k=4, temperature=0.1)
    assert (temp.argmax(1) == torch.tensor([0, 1])).all()
    # hand-computed DINO weights for the first test point
    sims = torch.nn.functional.normalize(test[:1], dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    w = (sims / 0.1).exp()[0]
    assert temp[0, 0].item() == pytest.approx((w[0] + w[1]).item() / w.sum().item(), rel=1e-5)
    ml = knn_predict(train, torch.nn.functional.one_hot(labels, 2), test, k=3, weighting="majority")
    assert torch.allclose(ml, maj)


# ---------------------------------------------------------------- fine-tuning


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_extract_features_and_finetune(tmp_path):
    x, y = _blobs(n=48)
    batches = [{"image": x[i : i + 8], "label": y[i : i + 8]} for i in range(0, 48, 8)]
    torch.manual_seed(0)
    feats, labels = extract_features(TinyNet().encoder, batches, device="cpu")
    assert feats.shape == (48, 8) and torch.equal(labels, y)
    # a "pretrained" checkpoint in the medssl format whose encoder weights get loaded
    torch.manual_seed(1)
    donor = TinyNet()
    save_checkpoint(
        tmp_path / "pre.pt", {"step": 1, "method": {f"encoder.{k}": v for k, v in donor.encoder.state_dict().items()}}
    )
    torch.manual_seed(0)
    model = TinyNet()
    init_output_bias_to_prior(model.head, [1 / 3] * 3, activation="softmax")
    res = finetune(
        model,
        batches,
        batches,
        nn.CrossEntropyLoss(),
        max_steps=30,
        lr=0.05,
        output_dir=tmp_path / "ft",
        pretrained=tmp_path / "pre.pt",
        device="cpu",
        progress=False,
        warmup_steps=2,
    )
    assert res.history["step"][-1] == 30
    assert res.history["loss"][-1] < res.history["loss"][0]
    assert res.val_outputs.shape == (48, 3) and torch.equal(res.val_labels, y)
    assert (res.val_outputs.argmax(1) == y).float().mean() > 0.8
    assert (tmp_path / "ft" / "checkpoints" / "last.pt").is_file()
    out, _ = predict(model, batches, device="cpu")
    assert torch.allclose(out, res.val_outputs)
    with pytest.raises(CheckpointError, match="no weights"):
        load_pretrained(TinyNet().encoder, tmp_path / "pre.pt", prefix="target.")


# ---------------------------------------------------------------- results


def _row(seed, value, lf=0.1, init="jepa", metric="auroc"):
    return {
        "task": "ptbxl",
        "label_fraction": lf,
        "seed": seed,
        "init": init,
        "metric": metric,
        "value": value,
        "split_file": f"splits/s{seed}.json",
        "command": "medssl eval ...",
    }


def test_append_and_summarise(tmp_path):
    path = tmp_path / "results" / "results.json"
    append_result(path, _row(0, 0.80))
    append_result(path, _row(1, 0.84))
    append_result(path, _row(2, 0.82))
    append_result(path, _row(2, 0.86))  # a re-run of seed 2 replaces the old row
    append_result(path, _row(0, 0.70, init="scratch"))
    assert len(load_results(path)) == 4
    summ = {(s["init"]): s for s in summarise(load_results(path))}
    assert summ["jepa"]["n"] == 3
    assert summ["jepa"]["mean"] == pytest.approx(0.8333333333)
    assert summ["jepa"]["std"] == pytest.approx(np.std([0.80, 0.84, 0.86], ddof=1))
    assert summ["scratch"]["std"] == 0.0 and summ["scratch"]["n"] == 1
    with pytest.raises(ValueError, match="misses"):
        append_result(path, {k: v for k, v in _row(0, 1.0).items() if k != "command"})
    with pytest.raises(ValueError, match="label_fraction"):
        append_result(path, _row(0, 1.0, lf=1.5))
    with pytest.raises(ValueError, match="value"):
        append_result(path, _row(0, float("nan")))
    assert len(load_results(path)) == 4


def test_render_results_table_and_cli(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "docs").mkdir(parents=True)
    readme = bundle / "docs" / "README.md"
    readme.write_text("# Bundle\n\nIntro.\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\nMore.\n")
    results = bundle / "docs" / "results.json"  # the bundle contract's place
    for seed, v in enumerate([0.80, 0.84, 0.82]):
        append_result(results, _row(seed, v))
    append_result(results, _row(0, 0.5, lf=1.0, init="scratch", metric="dice"))
    proc = subprocess.run(
        [sys.executable, "-m", "medssl.eval.results", str(bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = readme.read_text()
    assert text.startswith("# Bundle\n\nIntro.\n\n<!-- results:start -->\n")
    assert text.endswith("<!-- results:end -->\n\nMore.\n")
    assert "old table" not in text
    assert "| ptbxl | 10% | jepa | auroc | 0.820 ± 0.020 | 3 |" in text
    assert "| ptbxl | 100% | scratch | dice | 0.500 ± 0.000 | 1 |" in text
    # idempotent
    render_results_table(results, readme)
    assert readme.read_text() == text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        render_results_table(results, readme)


def test_summary_keeps_the_headline_metric_first():
    from medssl.eval.results import summarise

    base = {"task": "t", "label_fraction": 1.0, "init": "scratch", "split_file": "s.json", "command": "c"}
    rows = [{**base, "seed": 0, "metric": "dice", "value": 0.7}, {**base, "seed": 0, "metric": "cldice", "value": 0.8}]
    assert [s["metric"] for s in summarise(rows)] == ["dice", "cldice"]


def test_plot_label_curve_writes_a_png_and_names_a_missing_metric(tmp_path):
    from medssl.eval.results import plot_label_curve

    results = tmp_path / "results.json"
    for seed, v in enumerate([0.80, 0.84, 0.82]):
        append_result(results, _row(seed, v))
    append_result(results, _row(0, 0.5, lf=1.0, init="scratch", metric="dice"))
    png = plot_label_curve(results, "auroc", tmp_path / "fig" / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert not list((tmp_path / "fig").glob("*.tmp*"))
    with pytest.raises(ValueError, match="cldice"):
        plot_label_curve(results, "cldice", tmp_path / "x.png")
