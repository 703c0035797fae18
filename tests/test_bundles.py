"""The bundle runtime (medssl.bundles) and the CLI verbs wired to it, on the xca_cmunet_segmentation bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl import samples
from medssl.bundles import (
    available_bundles,
    load_bundle_config,
    run_workflow,
    verify_metadata,
)
from medssl.cli import main
from medssl.errors import InputError

REPO = Path(__file__).resolve().parents[1]
NAME = "xca_cmunet_segmentation"
BUNDLE = REPO / "bundles" / NAME


def test_bundle_is_listed(capsys):
    assert NAME in available_bundles()
    assert main(["bundle", "list"]) == 0
    assert NAME in capsys.readouterr().out.split()


def test_metadata_validates_against_the_shipped_monai_schema(tmp_path):
    verify_metadata(BUNDLE / "configs" / "metadata.json")
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="network_data_format") as err:
        verify_metadata(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("workflow", "ids"),
    [
        ("pretrain", ()),
        ("multi_gpu_pretrain", ()),
        ("finetune", ("label_fraction", "seed", "init")),
        ("inference", ("inputs", "threshold")),
    ],
)
def test_every_workflow_defines_the_contract_ids(workflow, ids):
    parser = load_bundle_config(NAME, workflow, {"max_steps": 7})
    for key in ("bundle_root", "output_dir", "device", "max_steps", "resume", "data", "run", *ids):
        assert key in parser, f"{workflow}.json lacks {key!r}"
    assert parser["bundle_root"] == os.fspath(BUNDLE.resolve())
    assert parser["max_steps"] == 7


@pytest.fixture()
def bundle_copy(tmp_path, monkeypatch):
    """The bundle copied under tmp/bundles with a random-init model in models/ (the shipped one may not exist)."""
    from medssl.networks import CMUNet

    root = tmp_path / "bundles"
    dst = root / NAME
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("models", "__pycache__"))
    (dst / "models").mkdir()
    torch.manual_seed(0)
    torch.save(CMUNet().state_dict(), dst / "models" / "model.pt")
    monkeypatch.setenv("MEDSSL_BUNDLES", os.fspath(root))
    return dst


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, **kw)


def test_cli_infer_good_and_bad_inputs(bundle_copy, tmp_path):
    png, _ = samples.xca_pairs("test")[0]
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    res = _run(["-m", "medssl", "infer", NAME, str(png), str(missing), "--out", str(out), "--device", "cpu",
                "--threshold", "0.4"], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in res.stderr
    line = json.loads(res.stdout.strip().splitlines()[0])
    assert line["input"] == str(png) and Path(line["seg_png"]).is_file() and Path(line["overlay"]).is_file()


def test_infer_follows_the_models_flip_tta_unless_told_not_to(bundle_copy, tmp_path):
    torch.set_num_threads(1)
    png, _ = samples.xca_pairs("test")[0]
    (bundle_copy / "models" / "model.json").write_text('{"threshold": 0.5, "flip_tta": true}')
    masks = {}
    for name, extra in (("tta", {}), ("plain", {"flip_tta": False})):
        (result,) = run_workflow(NAME, "inference", {"inputs": [os.fspath(png)], "device": "cpu",
                                                     "output_dir": os.fspath(tmp_path / name), **extra})
        assert result["flip_tta"] is (name == "tta") and not result["failed"]
        masks[name] = np.asarray(Image.open(tmp_path / name / f"{png.stem}_seg.png"))
    assert masks["tta"].shape == masks["plain"].shape and (masks["tta"] != masks["plain"]).any()
    assert main(["infer", NAME, os.fspath(png), "--out", os.fspath(tmp_path / "cli"), "--device", "cpu",
                 "--no-flip-tta"]) == 0
    assert (np.asarray(Image.open(tmp_path / "cli" / f"{png.stem}_seg.png")) == masks["plain"]).all()


def test_cli_bundle_verify(bundle_copy):
    res = _run(["-m", "medssl", "bundle", "verify", NAME], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["metadata"] == "valid" and report["shapes"]["output"] == {"pred": [1, 1, 256, 256]}
    assert report["models_mb"] < 25 and len(report["inference"]) == len(samples.xca_pairs("test"))


def test_cli_verify_fails_in_one_line_without_weights(bundle_copy, capsys):
    (bundle_copy / "models" / "model.pt").unlink()
    assert main(["bundle", "verify", NAME]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.pt" in err


def test_monai_bundle_cli_runs_the_inference_config_from_the_repo_root(bundle_copy, tmp_path):
    out = tmp_path / "monai_out"
    res = _run(["-m", "monai.bundle", "run", "--config_file", f"bundles/{NAME}/configs/inference.json",
                "--output_dir", str(out), "--device", "cpu"], cwd=bundle_copy.parents[1],
               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    for png, _ in samples.xca_pairs("test"):
        assert (out / f"{png.stem}_seg.png").is_file()


def test_finetune_and_pretrain_workflows_run_on_the_samples(bundle_copy, tmp_path):
    torch.set_num_threads(1)
    runs = tmp_path / "runs"
    run_workflow(NAME, "pretrain", {"data": "samples", "max_steps": 2, "batch_size": 2, "crop": 64,
                                    "device": "cpu", "runs_root": os.fspath(runs)})
    assert (runs / "pretrain" / "encoder.pt").is_file()
    (result,) = run_workflow(NAME, "finetune", {"data": "samples", "max_steps": 2, "batch_size": 2, "crop": 64,
                                                "device": "cpu", "runs_root": os.fspath(runs), "init": "cmunet",
                                                "label_fraction": 0.5, "seed": 1})
    assert result["n_labels"] == 3 and result["init"] == "cmunet"
    rows = json.loads(Path(result["results_json"]).read_text())
    assert {r["metric"] for r in rows} == {"dice", "cldice", "dice_no_tta", "cldice_no_tta"}
    assert not Path(result["results_json"]).is_relative_to(bundle_copy)  # sample runs never touch docs/


def test_cli_finetune_rejects_a_bad_fraction(capsys):
    assert main(["finetune", NAME, "--label-fraction", "1.5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_bundle_scripts_are_not_shadowed_by_another_bundle_on_sys_path() -> None:
    """Regression: another bundle's folder left first on sys.path made `scripts.us` unimportable in CI."""
    import importlib

    from medssl.bundles import _use_bundle_scripts

    bundles = Path(__file__).resolve().parents[1] / "bundles"
    ecg, us = str(bundles / "ecg_mae_classification"), str(bundles / "ultrasound_vjepa_segmentation")
    saved_path, saved_modules = list(sys.path), {k: v for k, v in sys.modules.items() if k.split(".")[0] == "scripts"}
    try:
        _use_bundle_scripts(ecg)
        importlib.import_module("scripts.ecg_bundle")
        sys.path.insert(0, ecg)  # a test that put the folder on sys.path and left it there
        _use_bundle_scripts(us)
        assert ecg not in sys.path and sys.path[0] == us
        module = importlib.import_module("scripts.us")
        assert Path(module.__file__).resolve().parent.parent == Path(us)
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if k.split(".")[0] == "scripts"]:
            del sys.modules[key]
        sys.modules.update(saved_modules)
