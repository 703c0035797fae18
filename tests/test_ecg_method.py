"""ECG pieces of the library: lead standardisation, spectral/coarse targets, delineation decoder and scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from medssl.eval.delineation import (
    DelineationScore,
    Wave,
    ludb_waves,
    match_boundaries,
    score_delineation,
    waves_from_labels,
    waves_to_labels,
)
from medssl.io import load
from medssl.losses import normalize_patches, sdsc
from medssl.losses.spectral import (
    TimeFrequencyTargets,
    coarse_patches,
    coarse_reconstruction_loss,
    patch_magnitude_spectrum,
    reconstruction_quality,
    spectral_reconstruction_loss,
)
from medssl.networks import DelineationNet, ViTEncoder, patchify, unpatchify
from medssl.networks.delineation import factorize_upsampling
from medssl.samples import cinc_records, ecg_dicom
from medssl.transforms.ecg import (
    STANDARD_LEADS,
    ReorderLeads,
    UnusableRecordError,
    canonical_lead_name,
    check_usable,
    prepare_ecg,
    standard_lead_order,
)

torch.set_num_threads(1)


def _ecg_encoder(length: int = 2250, patch: int = 75, **kw: int) -> ViTEncoder:
    args = {"hidden_size": 48, "depth": 1, "num_heads": 3, **kw}
    return ViTEncoder(1, 12, length, patch, channel_tokens=True, **args)


# ---------------------------------------------------------------------------------------------- patching
def test_lead_wise_patching_round_trips_exactly() -> None:
    enc = _ecg_encoder()
    x = torch.randn(2, 12, 2250)
    tokens = patchify(x, enc)
    assert tokens.shape == (2, 12 * 30, 75)
    # lead-major: token 31 is lead 1, samples 75..149
    assert torch.equal(tokens[0, 31], x[0, 1, 75:150])
    assert torch.equal(unpatchify(tokens, enc), x)


# ---------------------------------------------------------------------------------------------- targets
def test_magnitude_spectrum_equals_numpy_fft() -> None:
    p = 75
    t = np.arange(p)
    sig = 2.0 * np.cos(2 * np.pi * 5 * t / p) + 0.5 * np.sin(2 * np.pi * 11 * t / p) + 0.3
    got = patch_magnitude_spectrum(torch.tensor(sig)[None, None], norm="backward")[0, 0].numpy()
    assert_allclose(got, np.abs(np.fft.rfft(sig)), atol=1e-4)
    # hand values: a cosine of amplitude A at bin k gives A * P / 2; the mean gives mean * P at bin 0
    assert got[5] == pytest.approx(2.0 * p / 2, rel=1e-5)
    assert got[11] == pytest.approx(0.5 * p / 2, rel=1e-5)
    assert got[0] == pytest.approx(0.3 * p, rel=1e-5)
    ortho = patch_magnitude_spectrum(torch.tensor(sig)[None, None])[0, 0].numpy()
    assert_allclose(ortho, got / np.sqrt(p), rtol=1e-5)


def test_coarse_target_is_block_mean() -> None:
    x = torch.arange(10.0).reshape(1, 1, 10)
    assert torch.equal(coarse_patches(x, 5), torch.tensor([[[2.0, 7.0]]]))
    with pytest.raises(ValueError):
        coarse_patches(x, 3)


def test_spectral_and_coarse_losses_vanish_only_for_the_true_patches() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 75, generator=g) * 3 + 1
    perfect = normalize_patches(target)
    assert spectral_reconstruction_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert coarse_reconstruction_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # a time shift keeps the magnitude spectrum of a circular signal but not the coarse target
    shifted = torch.roll(perfect, 7, dims=-1)
    assert spectral_reconstruction_loss(shifted, target).item() == pytest.approx(0.0, abs=1e-5)
    assert coarse_reconstruction_loss(shifted, target).item() > 0.1
    assert spectral_reconstruction_loss(torch.zeros_like(target), target).item() > 0.1


def test_time_frequency_targets_weights() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 75, generator=g), torch.randn(2, 3, 75, generator=g)
    one = TimeFrequencyTargets(1.0, 1.0)({}, pred, target, torch.zeros(2, 3, dtype=torch.long))
    two = TimeFrequencyTargets(2.0, 0.0)({}, pred, target, torch.zeros(2, 3, dtype=torch.long))
    assert set(one) == {"freq", "coarse"} and set(two) == {"freq"}
    assert two["freq"].item() == pytest.approx(2 * one["freq"].item(), rel=1e-6)
    with pytest.raises(ValueError):
        TimeFrequencyTargets(-1.0)


def test_sdsc_reconstruction_metric_on_a_real_ecg() -> None:
    rec = load(cinc_records()[0])
    x = torch.from_numpy(prepare_ecg(rec.array, rec.meta.lead_names, rec.meta.sampling_rate)[:, :2250])
    target = patchify(x[None], _ecg_encoder())
    target = target - target.mean(dim=-1, keepdim=True)  # zero-mean patches: inverted prediction scores 0
    perfect = reconstruction_quality(normalize_patches(target), target)
    assert perfect["sdsc"] == pytest.approx(1.0, abs=1e-4) and perfect["mse"] < 1e-6
    assert reconstruction_quality(-normalize_patches(target), target)["sdsc"] == pytest.approx(0.0, abs=1e-6)
    assert sdsc(0.5 * x[None], x[None]).item() == pytest.approx(2 / 3, rel=1e-5)


# ---------------------------------------------------------------------------------------------- leads
def test_canonical_lead_names() -> None:
    assert [canonical_lead_name(n) for n in ("avr", "Lead aVL (x)", " v1 ", "II", "MLII")] == [
        "aVR",
        "aVL",
        "V1",
        "II",
        "MLII",
    ]
    assert standard_lead_order(["v6", *STANDARD_LEADS[:11], "vx"]) == [*range(1, 12), 0]


def test_dicom_and_wfdb_give_the_same_lead_order() -> None:
    """After ReorderLeads both readers' rows are the standard leads, and Einthoven's II = I + III holds."""
    for path in (ecg_dicom(), cinc_records()[0]):
        rec = load(path)
        x = ReorderLeads(rec.meta.lead_names)(rec.array.astype(np.float64))
        names = [canonical_lead_name(rec.meta.lead_names[i]) for i in standard_lead_order(rec.meta.lead_names)]
        assert names == list(STANDARD_LEADS)
        i, ii, iii = x[0], x[1], x[2]
        assert np.abs(ii - (i + iii)).mean() < 0.05 * np.abs(ii).mean() + 1e-3, path
        # aVR = -(I + II) / 2
        assert np.abs(x[3] + (i + ii) / 2).mean() < 0.05 * np.abs(x[3]).mean() + 1e-3, path


def test_unusable_records_are_named() -> None:
    x = np.random.default_rng(0).standard_normal((12, 3000))
    flat = x.copy()
    flat[7] = 0.0
    with pytest.raises(UnusableRecordError, match="V2"):
        prepare_ecg(flat, STANDARD_LEADS, 500.0, name="rec9")
    nan = x.copy()
    nan[0, 5] = np.nan
    with pytest.raises(UnusableRecordError, match=r"rec9: non-finite .* I"):
        prepare_ecg(nan, STANDARD_LEADS, 500.0, name="rec9")
    with pytest.raises(UnusableRecordError, match="missing lead"):
        prepare_ecg(x[:2], ["MLII", "V5"], 360.0, name="100")
    with pytest.raises(ValueError):
        check_usable(x, STANDARD_LEADS[:3])


def test_prepare_ecg_resamples_filters_and_standardises() -> None:
    rec = load(ecg_dicom())  # 1000 Hz, uV
    y = prepare_ecg(rec.array, rec.meta.lead_names, rec.meta.sampling_rate, units=rec.meta.units)
    assert y.shape == (12, 2500) and y.dtype == np.float32
    assert_allclose(y.mean(axis=1), 0.0, atol=1e-4)
    assert_allclose(y.std(axis=1), 1.0, atol=1e-3)


# ---------------------------------------------------------------------------------------------- delineation
def test_factorize_upsampling() -> None:
    assert factorize_upsampling(75) == [5, 5, 3]
    assert factorize_upsampling(16) == [4, 4] or factorize_upsampling(16) == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        factorize_upsampling(77)


def test_delineation_net_reaches_sample_resolution() -> None:
    enc = _ecg_encoder(length=450)
    net = DelineationNet(enc).eval()
    x = torch.randn(1, 12, 450, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 12, 4, 450)
    # two neighbouring output samples inside one patch depend differently on the input: sample precision
    out[0, 0, 1, 100].backward(retain_graph=True)
    g1 = x.grad.clone()
    x.grad = None
    out[0, 0, 1, 101].backward()
    assert not torch.allclose(g1, x.grad)
    with pytest.raises(ValueError):
        DelineationNet(ViTEncoder(2, 1, 32, 8, hidden_size=48, depth=1, num_heads=3))


def test_delineation_net_decodes_plain_tokens_once_per_lead() -> None:
    torch.manual_seed(0)
    net = DelineationNet(ViTEncoder(1, 12, 450, 75, hidden_size=48, depth=1, num_heads=3)).eval()
    x = torch.randn(2, 12, 450)
    x[:, 5] = x[:, 2]  # two leads with the same signal share the tokens and the skip: the same output
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 12, 4, 450)
    torch.testing.assert_close(out[:, 5], out[:, 2])
    assert not torch.allclose(out[:, 0], out[:, 2])  # each lead is decoded with its own signal


def test_ludb_marks_and_labels_round_trip() -> None:
    waves = ludb_waves([10, 12, 20, 30, 35, 40, 50], ["(", "p", ")", "(", "N", ")", "("])
    assert waves == [Wave("P", 10, 12, 20), Wave("QRS", 30, 35, 40)]
    lab = waves_to_labels(waves, 60)
    assert lab[10] == 1 and lab[20] == 1 and lab[21] == 0 and lab[30:41].tolist() == [2] * 11
    sig = np.zeros(60)
    sig[33] = -5.0
    back = waves_from_labels(lab, sig)
    assert back == [Wave("P", 10, 10, 20), Wave("QRS", 30, 33, 40)]
    assert waves_from_labels(lab, min_samples={"P": 12}) == [Wave("QRS", 30, 35, 40)]


def test_boundary_matching_hand_values() -> None:
    tp, fp, fn, err = match_boundaries([100, 205, 400], [98, 200, 300], tolerance=10)
    assert (tp, fp, fn) == (2, 1, 1)
    assert sorted(err.tolist()) == [2.0, 5.0]
    true = [Wave("QRS", 100, 110, 120), Wave("QRS", 600, 610, 620)]
    pred = [Wave("QRS", 105, 110, 118), Wave("QRS", 350, 355, 360), Wave("QRS", 5000, 5001, 5002)]
    s = score_delineation(pred, true, fs=500.0, tolerance_ms=150.0)
    # onset: 105 matches 100 (10 ms); 350 is > 75 samples from every mark -> FP; 5000 lies outside the marks
    assert (s.tp["QRS_onset"], s.fp["QRS_onset"], s.fn["QRS_onset"]) == (1, 1, 1)
    assert s.errors_ms["QRS_onset"] == [pytest.approx(10.0)]
    assert s.errors_ms["QRS_offset"] == [pytest.approx(-4.0)]
    assert s.f1("QRS_onset") == pytest.approx(0.5)
    assert s.f1("P_onset") == 1.0  # nothing to find, nothing found
    # the unmarked P wave just before the first marked QRS (its offset 90 is within 75 samples of the mark 100)
    # is not scored; an unmatched T wave between the marked QRS complexes is a false positive
    s = score_delineation(pred + [Wave("P", 50, 70, 90), Wave("T", 200, 230, 260)], true, fs=500.0)
    assert (s.fp["P_onset"], s.fp["P_offset"]) == (0, 0)
    assert (s.fp["T_onset"], s.fp["T_offset"]) == (1, 1)
    assert (s.tp["QRS_onset"], s.fp["QRS_onset"], s.fn["QRS_onset"]) == (1, 1, 1)


def test_ludb_marks_score_perfectly_against_themselves(shared_data: Path) -> None:
    rec = load(shared_data / "ecg" / "ludb" / "data" / "1.hea")
    total = DelineationScore.empty()
    for lead in rec.meta.lead_names:
        ann = rec.meta.annotations[lead]
        w = ludb_waves(ann.sample, ann.symbol)
        assert w and {x.wave for x in w} == {"P", "QRS", "T"}
        total.add(score_delineation(w, w, fs=rec.meta.sampling_rate))
    s = total.summary()
    assert s["mean_f1"] == 1.0 and s["mean_abs_error_ms"] == 0.0


def test_mixed_token_targets_are_taken_per_lead() -> None:
    """A token of 12 leads (samples ordered (time, lead) by patchify): spectrum and pooling per lead."""
    from medssl.losses.spectral import coarse_reconstruction_loss, spectral_reconstruction_loss, split_channels
    from medssl.networks import ViTEncoder
    from medssl.networks.patching import patchify

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 150, generator=g)
    y = torch.randn(2, 12, 150, generator=g)
    enc = ViTEncoder(1, 12, 150, 75, hidden_size=24, depth=1, num_heads=2)
    px, py = patchify(x, enc), patchify(y, enc)  # [2, 2, 900]
    # split_channels recovers each lead's 75 samples from the interleaved token
    np.testing.assert_array_equal(split_channels(px, 12).numpy(), x.reshape(2, 12, 2, 75).permute(0, 2, 1, 3).numpy())
    # the loss equals numpy's per-lead spectra of the raw patches (no normalisation, no log)
    fx = np.abs(np.fft.rfft(x.reshape(2, 12, 2, 75).numpy(), axis=-1, norm="ortho"))
    fy = np.abs(np.fft.rfft(y.reshape(2, 12, 2, 75).numpy(), axis=-1, norm="ortho"))
    got = spectral_reconstruction_loss(py, px, norm_pix=False, log=False, channels=12)
    np.testing.assert_allclose(float(got), np.mean((fy - fx) ** 2), rtol=1e-5)
    cx = x.reshape(2, 12, 2, 15, 5).mean(-1)
    cy = y.reshape(2, 12, 2, 15, 5).mean(-1)
    got = coarse_reconstruction_loss(py, px, factor=5, norm_pix=False, channels=12)
    np.testing.assert_allclose(float(got), float(((cy - cx) ** 2).mean()), rtol=1e-5)
    # over the interleaved vector the spectrum is a different quantity
    assert abs(float(spectral_reconstruction_loss(py, px, False, False)) - np.mean((fy - fx) ** 2)) > 1e-3
