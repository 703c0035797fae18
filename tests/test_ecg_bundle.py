"""The ecg_mae_classification bundle: metadata, configs (MONAI ConfigParser), pretraining, inference outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from medssl.samples import cinc_records, ecg_dicom

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ecg_mae_classification"
SCHEMA = REPO / "medssl" / "bundle_schema" / "meta_schema_20240725.json"

torch.set_num_threads(1)


def _parser(workflow: str, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> ConfigParser:
    monkeypatch.chdir(REPO)
    p = ConfigParser()
    p.read_config(str(BUNDLE / "configs" / f"{workflow}.json"))
    for k, v in overrides.items():
        p[k] = v
    p.parse()
    return p


def test_metadata_validates() -> None:
    verify_metadata(str(BUNDLE / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 12


def test_network_shapes_match_the_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(BUNDLE / "configs" / "inference.json"),
        device="cpu",
    )
    p = _parser("inference", monkeypatch)
    with torch.no_grad():
        out = p.get_parsed_content("delineation_def").eval()(torch.zeros(1, 12, 2250))
    assert out.shape == (1, 12, 4, 2250)


def test_network_def_loads_the_shipped_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MONAI user's path: inference.json's network_def / delineation_def take models/ strictly."""
    models = BUNDLE / "models"
    if not (models / "classifier.pt").is_file():
        pytest.skip("no committed models/ in this checkout")
    p = _parser("inference", monkeypatch)
    assert p["tokens"] == json.loads((models / "model_config.json").read_text()).get("tokens", "lead")
    for net_id, name in (("network_def", "classifier.pt"), ("delineation_def", "delineation.pt")):
        net = p.get_parsed_content(net_id)
        sd = torch.load(models / name, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


@pytest.mark.parametrize("workflow", ["pretrain", "finetune", "inference"])
def test_configs_define_the_contract_ids(workflow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _parser(workflow, monkeypatch)
    for key in ("bundle_root", "output_dir", "device", "max_steps", "resume", "data", "run"):
        assert key in p.config, key
    assert Path(p.get_parsed_content("bundle_root")) == BUNDLE
    if workflow == "finetune":
        assert {"label_fraction", "seed", "init"} <= set(p.config)
    if workflow == "inference":
        assert {"inputs", "threshold"} <= set(p.config)


@pytest.mark.parametrize("tokens", ["mixed", "lead"])
def test_pretraining_20_steps_lowers_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokens: str) -> None:
    """Runs pretrain.json through ConfigParser on the shipped CinC samples, in both token layouts."""
    from medssl.bundles import _use_bundle_scripts

    p = _parser(
        "pretrain",
        monkeypatch,
        data=str(cinc_records()[0].parent),
        output_dir=str(tmp_path / "pre"),
        max_steps=20,
        batch_size=4,
        device="cpu",
        tokens=tokens,
    )
    with pytest.warns(UserWarning, match="JS20008"):  # a CinC sample with flat V2/V4/V6 is skipped by name
        (hist,) = p.get_parsed_content("run")
    loss = np.asarray(hist["loss"])
    assert len(loss) == 20 and np.isfinite(loss).all()
    assert loss[-5:].mean() < loss[:5].mean()
    assert {"loss_rec", "loss_freq", "loss_coarse"} <= set(hist)
    assert (tmp_path / "pre" / "encoder.pt").is_file()
    _use_bundle_scripts(str(BUNDLE))
    from scripts import ecg_bundle as eb

    assert eb.encoder_tokens(tmp_path / "pre" / "encoder.pt") == tokens


def test_pretraining_with_per_lead_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``norm_pix: false`` reaches the MAE loss and every extra target; the trivial loss is then not 1."""
    p = _parser(
        "pretrain", monkeypatch, data=str(cinc_records()[0].parent), output_dir=str(tmp_path / "pre"),
        max_steps=2, batch_size=4, device="cpu", norm_pix=False,
    )
    with pytest.warns(UserWarning, match="JS20008"):
        (hist,) = p.get_parsed_content("run")
    method = hist["method"]
    assert method.norm_pix is False and method.extra_targets.norm_pix is False
    # per-lead targets of a lead-standardised signal: a masked patch's own mean is no longer 0
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts import ecg_bundle as eb

    x = [np.sin(np.linspace(0, 60, eb.WINDOW))[None].repeat(12, 0) * 3.0 + 1.0]
    q = eb.reconstruction_metrics(method, x)
    assert q["zero_mse"] > q["baseline_mse"] > 0


def test_pretraining_with_mixed_tokens(tmp_path: Path) -> None:
    """``channel_tokens=False``: one token per patch of all 12 leads, and the MAE's targets follow that layout."""
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts import ecg_bundle as eb

    with pytest.warns(UserWarning, match="JS20008"):
        hist = eb.pretrain(cinc_records()[0].parent, tmp_path / "pre", max_steps=2, batch_size=4, device="cpu",
                           channel_tokens=False)
    enc = hist["method"].encoder
    assert not enc.channel_tokens and enc.num_patches == eb.WINDOW // eb.PATCH and enc.patch_dim == 12 * eb.PATCH
    x = [np.random.default_rng(0).standard_normal((12, eb.WINDOW)).astype(np.float32)]
    assert np.isfinite(eb.reconstruction_metrics(hist["method"], x)["mse"])
    # the downstream heads take the mixed-token encoder; lead-wise weights and mixed weights do not mix
    net = eb.build_delineation(eb.build_encoder(channel_tokens=False))
    eb.load_encoder_weights(net.encoder, hist["encoder"])
    with torch.no_grad():
        assert net(torch.from_numpy(x[0])[None]).shape == (1, 12, len(eb.WAVE_CLASSES), eb.WINDOW)
    from medssl.errors import InputError

    with pytest.raises(InputError, match="encoder.pt.*--tokens"):
        eb.load_encoder_weights(eb.build_encoder(), hist["encoder"])
    # the layout is read from the weights, and a models/ folder records it so that inference rebuilds it
    lead_file = tmp_path / "lead.pt"
    torch.save(eb.build_encoder().state_dict(), lead_file)
    assert eb.encoder_tokens(hist["encoder"]) == "mixed" and eb.encoder_tokens(lead_file) == "lead"
    # the MAE decoder is recovered from the trainer checkpoint (what experiment.py ships for --reconstruction)
    dec = eb.mae_decoder_from_checkpoint(hist["checkpoint"], enc)
    for k, v in hist["method"].decoder.state_dict().items():
        torch.testing.assert_close(dec.state_dict()[k], v.cpu())
    assert eb.mae_decoder_from_checkpoint(hist["encoder"], enc) is None  # a plain encoder state dict
    clf = eb.build_classifier(eb.build_encoder(channel_tokens=False))
    eb.save_models(tmp_path / "models", clf, net, [0.5] * len(eb.DIAGNOSES), tokens="mixed")
    clf2, dl2, cfg = eb.load_models(tmp_path / "models")
    assert cfg["tokens"] == "mixed" and not clf2.encoder.channel_tokens and not dl2.encoder.channel_tokens
    sig = x[0][:, : eb.WINDOW]
    p_saved = eb.classify(clf.eval(), sig)
    np.testing.assert_allclose(eb.classify(clf2, sig), p_saved, atol=2e-3)  # float16 storage


@pytest.fixture(scope="module")
def untrained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder in the shipped format with untrained weights (the test does not rely on models/)."""
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts import ecg_bundle as eb

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    eb.save_models(d, eb.build_classifier(), eb.build_delineation(), [0.5] * len(eb.DIAGNOSES))
    return d


def test_inference_writes_well_formed_csvs(
    untrained_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a CSV input with shuffled lead columns at 500 Hz, next to DICOM and WFDB inputs and a bad one
    from medssl.io import load

    rec = load(cinc_records()[0])
    order = [5, 0, 11, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    csv_in = tmp_path / "mine.csv"
    with open(csv_in, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([rec.meta.lead_names[i] for i in order])
        w.writerows(rec.array[order].T.tolist())
    bad = tmp_path / "empty.hea"
    bad.write_text("")
    inputs = [str(ecg_dicom()), str(cinc_records()[0]), str(csv_in), str(bad)]
    p = _parser(
        "inference",
        monkeypatch,
        inputs=inputs,
        output_dir=str(tmp_path / "out"),
        model_dir=str(untrained_models),
        csv_fs=500.0,
    )
    with pytest.raises(SystemExit) as exc:
        p.get_parsed_content("run")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.hea" in err[0]
    out = tmp_path / "out"
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["record"] for r in rows] == ["waveform_ecg", cinc_records()[0].stem, "mine"]
    for r in rows:
        for c in ("sinus_rhythm", "left_axis_deviation"):
            assert 0.0 <= float(r[f"prob_{c}"]) <= 1.0
            assert r[f"label_{c}"] in ("0", "1")
    # the CSV (reordered columns) gives the same probabilities as the WFDB record it came from
    assert float(rows[2]["prob_sinus_rhythm"]) == pytest.approx(float(rows[1]["prob_sinus_rhythm"]), abs=1e-4)
    for name, n_samples in (("waveform_ecg", 10000), (cinc_records()[0].stem, 5000)):
        with open(out / f"{name}_waves.csv", newline="") as fh:
            reader = csv.reader(fh)
            assert next(reader) == ["lead", "wave", "onset", "peak", "offset"]
            for lead, wave, *pos in reader:
                assert lead in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
                assert wave in ("P", "QRS", "T")
                onset, peak, offset = map(int, pos)
                assert 0 <= onset <= peak <= offset < n_samples
        assert (out / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("tokens", ["mixed", "lead"])
def test_masked_reconstruction_picture(tmp_path: Path, tokens: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``reconstruction=True`` draws the MAE's fill-in; visible samples are the record's own, 75 % hidden."""
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts.infer import run_inference

    from scripts import ecg_bundle as eb

    torch.manual_seed(0)
    enc = eb.build_encoder(channel_tokens=tokens == "lead")
    dec = eb.build_mae_decoder(enc)
    clf = eb.build_classifier(eb.build_encoder(channel_tokens=tokens == "lead"))
    eb.save_models(tmp_path / "m", clf, None, [0.5, 0.5], enc, tokens=tokens, mae_decoder=dec)
    x = np.random.default_rng(0).standard_normal((12, 3000)).astype(np.float32)
    enc2, dec2 = eb.load_mae(tmp_path / "m")
    rec, hidden = eb.masked_reconstruction(enc2, dec2, x)
    assert rec.shape == hidden.shape == (12, eb.WINDOW)
    assert hidden.mean() == pytest.approx(round(0.75 * enc.num_patches) / enc.num_patches)
    np.testing.assert_array_equal(rec[~hidden], x[:, : eb.WINDOW][~hidden])
    assert np.abs(rec[hidden] - x[:, : eb.WINDOW][hidden]).mean() > 0.1  # an untrained decoder does not copy
    # hidden spans are whole 75-sample patches (of all leads for mixed tokens)
    spans = hidden.reshape(12, -1, eb.PATCH)
    assert (spans.all(-1) | ~spans.any(-1)).all()
    if tokens == "mixed":
        assert (hidden == hidden[:1]).all()
    out = run_inference([str(ecg_dicom())], tmp_path / "out", tmp_path / "m", delineation=False,
                        reconstruction=True)
    assert out["records"] == ["waveform_ecg"]
    assert (tmp_path / "out" / "waveform_ecg_reconstruction.png").stat().st_size > 1000
    # a corrupt decoder file is named in a one-line error (the CLI turns it into exit code 2)
    from medssl.errors import CheckpointError

    good = (tmp_path / "m" / "mae_decoder.pt").read_bytes()
    (tmp_path / "m" / "mae_decoder.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="mae_decoder.pt"):
        eb.load_mae(tmp_path / "m")
    # a models/ folder without the decoder says so and still writes the rest
    (tmp_path / "m" / "mae_decoder.pt").unlink()
    run_inference([str(ecg_dicom())], tmp_path / "out2", tmp_path / "m", delineation=False, reconstruction=True)
    assert "no mae_decoder.pt" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "waveform_ecg_reconstruction.png").exists()


def test_cli_draws_the_shipped_maes_reconstruction(tmp_path: Path) -> None:
    """``medssl infer ecg_mae_classification X --reconstruction`` with the committed models/."""
    from medssl.cli import main

    if not (BUNDLE / "models" / "mae_decoder.pt").is_file():
        pytest.skip("no committed models/mae_decoder.pt in this checkout")
    torch.set_num_threads(1)
    out = tmp_path / "out"
    assert main(["infer", "ecg_mae_classification", str(ecg_dicom()), "--out", str(out), "--device", "cpu",
                 "--reconstruction"]) == 0
    assert (out / "waveform_ecg_reconstruction.png").stat().st_size > 1000
    assert (out / "predictions.csv").is_file() and (out / "waveform_ecg_waves.csv").is_file()


def test_shipped_models_fit_the_size_budget() -> None:
    models = BUNDLE / "models"
    if not (models / "classifier.pt").is_file():
        pytest.skip("no trained models in bundles/ecg_mae_classification/models yet")
    assert sum(f.stat().st_size for f in models.iterdir() if f.is_file()) <= 25 * 1024 * 1024
    cfg = json.loads((models / "model_config.json").read_text())
    assert len(cfg["thresholds"]) == len(cfg["classes"]) == 2


def test_shipped_models_reproduce_their_figures(shared_data: Path) -> None:
    """models/ re-scored on the 40 LUDB test records gives the figures in docs/shipped_model.json."""
    models = BUNDLE / "models"
    if not (models / "classifier.pt").is_file():
        pytest.skip("no trained models in bundles/ecg_mae_classification/models yet")
    from medssl.bundles import _use_bundle_scripts
    from medssl.eval.metrics import macro_auroc

    _use_bundle_scripts(str(BUNDLE))
    from scripts import ecg_bundle as eb

    rows = json.loads((BUNDLE / "docs" / "shipped_model.json").read_text())
    want = {
        (r["task"], r["metric"]): r["value"]
        for r in rows
        if r["init"] == "pretrained" and r["seed"] == 0 and r["label_fraction"] == 1.0
    }
    clf, dl, _ = eb.load_models(models)
    test = eb.ludb_items(shared_data / "ecg", eb.LUDB_TEST_IDS)
    assert len(test) == 40
    got = eb.score_records(dl, test)
    assert got["mean_abs_error_ms"] == pytest.approx(want["ludb_delineation", "mean_abs_error_ms"], abs=0.05)
    assert got["mean_f1"] == pytest.approx(want["ludb_delineation", "mean_f1"], abs=1e-3)
    y = np.stack([r.diagnosis for r in test])
    auroc = macro_auroc(eb.diagnosis_scores(clf, test), y)
    assert auroc == pytest.approx(want["ludb_diagnosis_finetune", "macro_auroc"], abs=1e-3)
    # the external test on the CinC 2021 records (sinus rhythm, the one diagnosis with positives there)
    ext = ("cinc2021_external_sinus_rhythm", "auroc_sinus_rhythm")
    if ext in want:
        cinc = eb.cinc_items(shared_data / "ecg" / "cinc2021_12lead")
        si = eb.DIAGNOSES.index("sinus_rhythm")
        y_ext = np.array([[r.diagnosis[si]] for r in cinc])
        assert len(cinc) == want["cinc2021_external_sinus_rhythm", "n_records"] and y_ext.sum() > 0
        got_ext = macro_auroc(eb.diagnosis_scores(clf, cinc)[:, [si]], y_ext)
        assert got_ext == pytest.approx(want[ext], abs=1e-3)


def test_mitbih_beats_and_the_rr_baseline(shared_data: Path) -> None:
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts import mitbih

    header = shared_data / "ecg" / "mitbih_arrhythmia_100" / "100.hea"
    beats = mitbih.load_beats(header)
    # record 100's annotation file: 2239 normal and 33 atrial premature beats (SOURCE.md: N, A, V, +)
    assert len(beats.y) == 2239 + 33 and int(beats.y.sum()) == 33
    assert beats.x.shape[0] == 2 and abs(beats.x.shape[1] / 250.0 / 60.0 - 30.0) < 0.2
    # a premature beat comes early: its previous RR is shorter than the local mean
    assert np.median(beats.rr[beats.y == 1, 2]) < 0.9 < np.median(beats.rr[beats.y == 0, 2])
    # the split is by time and every part holds both classes
    counts = mitbih.describe(header)
    assert min(counts.values()) > 0 and sum(counts.values()) == len(beats.y)
    rows = mitbih.evaluate(header, {}, fractions=(1.0,), seeds=(0,))
    auroc = next(r["value"] for r in rows if r["init"] == "rr_only" and r["metric"] == "auroc")
    assert auroc > 0.95


def test_linear_reference_sees_only_the_visible_context() -> None:
    from medssl.bundles import _use_bundle_scripts

    _use_bundle_scripts(str(BUNDLE))
    from scripts import diagnose_plateau

    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 12, 30, 75))
    vis = (rng.random((2, 12, 30)) < 0.25).astype(float)
    f = diagnose_plateau._context_features(p, vis, lead=3)
    assert f.shape == (2, 30, 13 * 75)
    # the target itself (lead 3 at time t) is never a feature, even where it is visible
    vis_all = np.ones_like(vis)
    f_all = diagnose_plateau._context_features(p, vis_all, lead=3)
    for t in (0, 7, 29):
        assert not any(np.allclose(f_all[0, t, k * 75 : (k + 1) * 75], p[0, 3, t]) for k in range(13))
    # the same-time patch of lead 0 and the previous patch of lead 3, zeroed where masked
    assert np.allclose(f_all[1, 5, :75], p[1, 0, 5])
    assert np.allclose(f_all[1, 5, 11 * 75 : 12 * 75], p[1, 3, 4])
    assert np.allclose(f_all[1, 0, 11 * 75 : 12 * 75], 0.0) and np.allclose(f_all[1, 29, 12 * 75 :], 0.0)
    masked = vis[0, 0] == 0
    assert np.allclose(f[0][masked][:, :75], 0.0)
