"""ultrasound_vjepa_segmentation: sector crop, localisation targets, a short pretraining, inference, metadata."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl import samples
from medssl.losses.localisation import token_coordinates
from medssl.transforms.sector import (
    SectorCrop,
    SectorCropd,
    crop_to_bbox,
    estimate_sector_bbox,
    paste_bbox,
    sector_bbox,
    sector_bbox_from_dicom,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ultrasound_vjepa_segmentation"
NAME = "ultrasound_vjepa_segmentation"
TINY = {"img_size": 32, "num_frames": 4, "depth": 1, "hidden_size": 48}


def _fake_scan(t: int = 6, seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Frames 100x120 with speckle changing over time in a box, static bright text outside it."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, 100, 120), np.float32)
    box = (20, 90, 30, 110)
    frames[:, box[0] : box[1], box[2] : box[3]] = rng.uniform(40, 200, (t, box[1] - box[0], box[3] - box[2]))
    frames[:, 3:8, 2:25] = 255.0  # a static label in the corner
    return frames, box


# ----------------------------------------------------------------------------------------------- sector crop


def test_sector_estimate_finds_changing_area_and_ignores_static_text():
    frames, (y0, y1, x0, x1) = _fake_scan()
    by0, by1, bx0, bx1 = estimate_sector_bbox(frames, margin=0.0)
    assert abs(by0 - y0) <= 3 and abs(by1 - y1) <= 3 and abs(bx0 - x0) <= 3 and abs(bx1 - x1) <= 3
    assert by0 > 8  # the static text at rows 3-8 is out


def test_sector_estimate_on_a_still_uses_intensity():
    frames, (y0, y1, x0, x1) = _fake_scan(t=1)
    frames[0, 3:8, 2:25] = 0.0
    by0, by1, bx0, bx1 = estimate_sector_bbox(frames[0], margin=0.0)
    assert abs(by0 - y0) <= 3 and abs(by1 - y1) <= 3 and abs(bx0 - x0) <= 3 and abs(bx1 - x1) <= 3


def test_sector_from_dicom_regions_of_the_echo_cine():
    import pydicom

    ds = pydicom.dcmread(samples.echo_cine(), stop_before_pixels=True)
    region = ds.SequenceOfUltrasoundRegions[0]
    box = sector_bbox_from_dicom(ds)
    assert box == (region.RegionLocationMinY0, region.RegionLocationMaxY1 + 1, region.RegionLocationMinX0,
                   region.RegionLocationMaxX1 + 1)
    assert sector_bbox(np.zeros((2, ds.Rows, ds.Columns)), dicom=samples.echo_cine()) == (box, "dicom")
    del ds.SequenceOfUltrasoundRegions
    assert sector_bbox_from_dicom(ds) is None


def test_sector_crop_transforms_and_paste_round_trip():
    frames, _ = _fake_scan()
    box = estimate_sector_bbox(frames)
    crop = SectorCrop()(torch.from_numpy(frames))
    assert isinstance(crop, torch.Tensor) and tuple(crop.shape) == (6, box[1] - box[0], box[3] - box[2])
    d = SectorCropd(["image", "label"])({"image": frames, "label": frames > 100})
    assert d["sector_bbox"] == box and d["label"].shape == d["image"].shape
    back = paste_bbox(crop_to_bbox(frames, box), box, frames.shape)
    inside = np.zeros(frames.shape, bool)
    inside[:, box[0] : box[1], box[2] : box[3]] = True
    assert np.array_equal(back[inside], frames[inside]) and not back[~inside].any()
    with pytest.raises(ValueError):
        crop_to_bbox(frames, (50, 50, 0, 10))


# ----------------------------------------------------------------------------------------------- pretraining


def test_localisation_targets_for_a_known_clip(us):
    enc = us.build_video_encoder(**TINY)  # 4 frames / tubelet 2, 32 px / patch 16 -> grid (2, 2, 2)
    assert enc.grid_size == (2, 2, 2)
    idx = torch.tensor([[0, 3, 5, 7]])  # (t, y, x) = (0,0,0), (0,1,1), (1,0,1), (1,1,1)
    want = torch.tensor([[[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]]], dtype=torch.float32)
    assert torch.equal(token_coordinates(enc.grid_size, idx), want)
    # the JEPA method scores its head against exactly these targets
    method = us.build_jepa(loc_weight=1.0, predictor_dim=24, predictor_depth=1, **TINY)
    x = torch.randn(1, 1, 4, 32, 32)
    ctx, tgt = torch.tensor([[0, 3, 5, 7]]), torch.tensor([[1, 2, 4, 6]])
    out = method({"image": x, "context_idx": ctx, "target_idx": tgt})
    head = method.loc_head(method.encoder(x, context_idx=ctx))
    expected = torch.nn.functional.smooth_l1_loss(head, want, beta=0.1)
    assert out["loss_loc"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_clip_dataset_streams_sector_cropped_clips(us):
    entries = us.pretraining_entries("samples")
    kinds = [type(e["image"]).__name__ for e in entries]
    assert "list" in kinds and "str" in kinds  # carotid recordings as frame lists, DICOM / stills as files
    ds = us.USClipDataset(entries, num_frames=4, stride=2, size=32, cache_mb=1)
    clip = ds[len(ds) - 1]["image"]  # an HC18 still: one frame repeated
    assert tuple(clip.shape) == (1, 4, 32, 32) and torch.allclose(clip[:, 0], clip[:, 3])
    assert abs(float(clip[0, 0].mean())) < 1e-4  # z-scored per frame
    first = ds[0]["image"]
    assert tuple(first.shape) == (1, 4, 32, 32) and torch.isfinite(first).all()
    assert len(ds._lru) >= 1


def test_short_pretraining_lowers_the_loss(us, tmp_path):
    torch.manual_seed(0)
    hist = us.pretrain("samples", tmp_path / "pre", loc_weight=0.1, max_steps=20, batch_size=2, img_size=32,
                       num_frames=4, lr=1e-3, device="cpu", num_workers=0, depth=1, hidden_size=48, log_every=1)
    loss = [float(v) for v in hist["loss"]]
    assert len(loss) == 20 and np.isfinite(loss).all()
    assert np.mean(loss[-5:]) < np.mean(loss[:5])
    assert "loss_loc" in hist and np.mean(hist["loss_loc"][-5:]) < np.mean(hist["loss_loc"][:5])
    state = torch.load(tmp_path / "pre" / "encoder.pt", weights_only=True)
    seg = us.build_segmenter(state, **TINY)  # the video encoder's weights fit the frame segmenter
    assert seg(torch.zeros(2, 1, 50, 60)).shape == (2, 1, 50, 60)


# ----------------------------------------------------------------------------------------------- downstream


def test_recording_choice_rotates_with_seed(us):
    pool = [f"r{i}" for i in range(9)]
    singles = [us.choose_recordings(pool, 1, s)[0] for s in range(3)]
    assert len(set(singles)) == 3
    assert sorted(us.choose_recordings(pool, 9, 0)) == pool
    recs = samples.carotid_recordings()
    assert us.carotid_split(list(recs))[1] == [sorted(recs)[-1]]


def test_frozen_finetune_on_samples_beats_chance(us):
    recs = samples.carotid_recordings()
    pool, test = us.carotid_split(list(recs))
    frames = {r: us.prepare_frames(recs[r], 32, keep_full=r in test) for r in recs}
    feats = us.add_features(frames, None, img_size=32, num_frames=4, depth=1, hidden_size=48)
    res = us.finetune_and_test(frames, test, pool, "random_frozen", 0, None, feats, max_steps=30, batch_size=4,
                               eval_every=10, encoder_cfg=TINY)
    assert res["n_val"] > 0 and 0 < res["threshold"] < 1 and res["n_test"] == len(recs[test[0]])
    assert 0.0 <= res["dice"] <= 1.0 and res["val_dice"] > 0.05


# ----------------------------------------------------------------------------------------------- bundle


def test_metadata_validates():
    from medssl.bundles import verify_metadata

    verify_metadata(BUNDLE / "configs" / "metadata.json")
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "US"


def test_bundle_has_its_files():
    for rel in ("configs/pretrain.json", "configs/finetune.json", "configs/inference.json",
                "configs/multi_gpu_pretrain.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel


@pytest.fixture(scope="module")
def inference_out(tmp_path_factory):
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("models/model.pt not trained yet (run scripts/experiment.py)")
    from medssl.bundles import run_workflow

    out = tmp_path_factory.mktemp("us_infer")
    png = samples.carotid_recordings()[sorted(samples.carotid_recordings())[-1]][0][0]
    (summary,) = run_workflow(NAME, "inference", {"inputs": [str(samples.echo_cine()), str(png)],
                                                  "output_dir": str(out), "device": "cpu"})
    return out, summary, png


def test_inference_on_a_dicom_cine_writes_a_seg_that_highdicom_reads(inference_out):
    import highdicom as hd
    import pydicom

    out, summary, _ = inference_out
    assert not summary["failed"]
    seg = hd.seg.segread(out / "echo_cine_40f_seg.dcm")
    src = pydicom.dcmread(samples.echo_cine(), stop_before_pixels=True)
    assert int(seg.NumberOfFrames) == int(src.NumberOfFrames) == 40
    import nibabel as nib

    assert nib.load(out / "echo_cine_40f_seg.nii.gz").shape == (640, 480, 40)


def test_png_output_and_overlay_not_blank(inference_out):
    from PIL import Image

    out, _, png = inference_out
    seg = np.asarray(Image.open(out / f"{png.stem}_seg.png"))
    src = np.asarray(Image.open(png))
    assert seg.shape == src.shape[:2] and set(np.unique(seg)) <= {0, 255}
    assert 0 < (seg > 0).mean() < 0.2  # a lumen is found, and it is not the whole frame
    ov = np.asarray(Image.open(out / f"{png.stem}_overlay.png").convert("RGB")).astype(int)
    assert ov.std() > 10 and (np.abs(ov[..., 0] - ov[..., 1]) > 30).any()  # an image with red on it


def test_cli_infer_png_and_bad_input_in_one_line(inference_out, tmp_path, capsys):
    from medssl.cli import main

    _, _, png = inference_out
    missing = tmp_path / "missing.dcm"
    code = main(["infer", NAME, str(png), str(missing), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and str(missing) in captured.err
    line = json.loads(captured.out.strip().splitlines()[0])
    assert Path(line["seg_png"]).is_file() and Path(line["overlay"]).is_file()


def test_shipped_models_fit_the_limit_and_load_weights_only():
    models = BUNDLE / "models"
    if not (models / "model.pt").is_file():
        pytest.skip("models/ not trained yet (run scripts/experiment.py)")
    size = sum(p.stat().st_size for p in models.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    enc = torch.load(models / "pretrained_encoder.pt", weights_only=True)
    info = json.loads((models / "pretrained_encoder.json").read_text())
    assert info["loc_weight"] > 0 and any(k.startswith("blocks.") for k in enc)
    assert 0 < json.loads((models / "model.json").read_text())["threshold"] < 1


def test_shipped_model_reproduces_the_docs_dice_on_the_test_recordings(shared_data, tmp_path):
    """``medssl infer`` on every frame of the 3 test recordings gives the Dice that docs/shipped_model.json states."""
    import subprocess
    import sys

    from medssl.eval.metrics import dice
    from medssl.io import load

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("models/model.pt is absent: the bundle's study has not been run yet")
    expected = json.loads((BUNDLE / "docs" / "shipped_model.json").read_text())
    base = shared_data / "ultrasound" / "ccaui_carotid"
    recordings = sorted(p for p in base.iterdir() if (p / "images").is_dir())
    assert len(recordings) == 12
    scores = []
    for rec in recordings[-3:]:  # the fixed test recordings: the last 3 in sorted order
        frames = sorted((rec / "images").glob("*.png"))
        res = subprocess.run([sys.executable, "-m", "medssl", "infer", NAME, *map(str, frames), "--out",
                              str(tmp_path / rec.name), "--device", "cpu"], capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
        for f in frames:
            pred = load(tmp_path / rec.name / f"{f.stem}_seg.png").array > 0
            scores.append(dice(pred, load(rec / "masks" / f.name).array > 0))
    assert len(scores) == expected["n_test_frames"]
    assert float(np.mean(scores)) == pytest.approx(expected["dice_test"], abs=0.005)


# ----------------------------------------------------------------------------------------------- HC18 split


def _hc18_split() -> dict:
    return json.loads((BUNDLE / "docs" / "splits" / "hc18_split.json").read_text())


def test_hc18_split_is_disjoint_by_subject_with_nested_fractions():
    split = _hc18_split()
    test, val, pool = set(split["test"]), set(split["val"]), set(split["pool"])
    assert len(test) >= 15 and len(val) >= 1 and len(pool) >= 8
    assert len(test) == len(split["test"]) and len(val) == len(split["val"]) and len(pool) == len(split["pool"])
    assert not (test & val) and not (test & pool) and not (val & pool)
    subject = {name: name.split("_", 1)[0] for name in test | val | pool}
    parts = [{subject[n] for n in part} for part in (test, val, pool)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])  # no subject leak
    assert set(split["labelled"]) >= {"0", "1", "2"}
    for sets in split["labelled"].values():
        sizes = sorted(int(n) for n in sets)
        assert sizes[:3] == [2, 4, 8] and sizes[-1] == len(pool)
        for small, big in zip(sizes, sizes[1:], strict=False):
            assert set(sets[str(small)]) <= set(sets[str(big)])  # nested: 2 in 4 in 8 in all
            assert sets[str(big)][:small] == sets[str(small)]
        assert set(sets[str(len(pool))]) == pool and all(len(sets[str(n)]) == n for n in sizes)


def test_hc18_split_is_fixed_and_matches_the_data(us, shared_data):
    hc = shared_data / "ultrasound" / "hc18_fetal_head_subset"
    if not (hc / "images").is_dir():
        pytest.skip(f"HC18 subset absent: {hc / 'images'} not found")
    experiment = importlib.import_module("scripts.experiment")
    names = sorted(experiment.hc18_pairs(str(shared_data / "ultrasound")))
    split = _hc18_split()
    assert {k: split[k] for k in ("test", "val", "pool", "labelled")} == {
        k: v for k, v in experiment.make_hc18_split(names).items() if k in ("test", "val", "pool", "labelled")}
    assert set(split["test"]) | set(split["val"]) | set(split["pool"]) == set(names)
    assert all((hc / "masks" / f"{n}_mask.png").is_file() for n in names)
    assert us.hc18_test_images() == set(split["test"])
    assert us._is_hc18_image(str(hc / "images" / f"{split['test'][0]}.png"), us.hc18_test_images())
