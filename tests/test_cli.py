"""The `medssl` command contract: verbs, exit codes, one-line errors, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medssl import samples
from medssl.cli import main

VERBS = ("info", "pretrain", "finetune", "infer", "demo", "bundle")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medssl", *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_lists_every_verb_of_the_contract():
    res = run("--help")
    assert res.returncode == 0
    for verb in VERBS:
        assert verb in res.stdout


def test_console_script_and_module_agree(tmp_path):
    from pathlib import Path

    exe = Path(sys.executable).parent / "medssl"
    if not exe.exists():
        pytest.skip(f"no medssl console script beside {sys.executable} (package not pip-installed)")
    a = subprocess.run([exe, "--help"], capture_output=True, text=True)
    b = run("--help")
    assert a.stdout.replace("medssl", "") == b.stdout.replace("medssl", "")


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "no_such_bundle"],
        ["finetune", "no_such_bundle", "--label-fraction", "0.1"],
        ["infer", "no_such_bundle", "x.png", "--out", "o"],
    ],
)
def test_unknown_bundle_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_bundle" in err
    assert "Traceback" not in err


def test_info_reports_good_inputs_and_fails_on_bad(tmp_path):
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    missing = tmp_path / "missing.nii.gz"
    good = samples.mr_small()
    res = run("info", str(good), str(bad), str(missing))
    assert res.returncode == 2
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["modality"] == "MR"
    err = res.stderr.strip().splitlines()
    assert len(err) == 2
    assert str(bad) in err[0] and str(missing) in err[1]
    assert "Traceback" not in res.stderr


def test_info_imports_neither_torch_nor_monai():
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "medssl", "info", str(samples.mr_small())],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "pydicom" in imported  # the check can see imports at all
    assert "torch" not in imported
    assert "monai" not in imported


def test_info_never_prints_patient_identifiers(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(samples.mr_small())
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-4711"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.AccessionNumber = "ACC998877"
    path = tmp_path / "phi.dcm"
    ds.save_as(path)
    res = run("info", str(path))
    assert res.returncode == 0, res.stderr
    for secret in ("Doe", "Jane", "SECRET-ID-4711", "19700101", "Elsewhere", "ACC998877"):
        assert secret not in res.stdout
