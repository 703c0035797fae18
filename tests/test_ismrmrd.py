"""ISMRMRD raw data: Cartesian (from the real twix GRE) and PROPELLER blades, through medssl.io and the bundle.

The files are written here with the ISMRMRD project's own Python library (``ismrmrd``), the way a converter such
as ``siemens_to_ismrmrd`` stores them: one acquisition per readout line, an XML header, noise scans first.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl import samples
from medssl.errors import InputError
from medssl.io import load
from medssl.mri import PropellerGeometry, birdcage_maps, cartesian_recon, simulate_acquisition
from medssl.transforms.kspace import normalise_magnitude

ismrmrd = pytest.importorskip("ismrmrd")
xsd = pytest.importorskip("ismrmrd.xsd")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "propeller_mri_reconstruction"
NOISE, REVERSE = 19, 22  # ISMRMRD acquisition flags


def _header(enc_x: int, rec_x: int, ny: int, trajectory: str, lines: int | None = None) -> str:
    space = xsd.encodingSpaceType
    enc = xsd.encodingType(
        encodedSpace=space(matrixSize=xsd.matrixSizeType(x=enc_x, y=ny, z=1),
                           fieldOfView_mm=xsd.fieldOfViewMm(x=2.0 * rec_x, y=2.0 * ny, z=5.0)),
        reconSpace=space(matrixSize=xsd.matrixSizeType(x=rec_x, y=ny, z=1),
                         fieldOfView_mm=xsd.fieldOfViewMm(x=float(rec_x), y=float(ny), z=5.0)),
        encodingLimits=xsd.encodingLimitsType(
            kspace_encoding_step_1=None if lines is None else xsd.limitType(minimum=0, maximum=lines - 1,
                                                                             center=lines // 2)),
        trajectory=xsd.trajectoryType(trajectory),
    )
    hdr = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=123_000_000),
        encoding=[enc],
        subjectInformation=xsd.subjectInformationType(patientName="Doe^Jane", patientID="ID-12345"),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(systemVendor="TestVendor",
                                                                           systemModel="Model X"),
    )
    return xsd.ToXML(hdr)


def _write(path: Path, header: str, acquisitions: list) -> Path:
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        ds.write_xml_header(header)
        for acq in acquisitions:
            ds.append_acquisition(acq)
    finally:
        ds.close()
    return path


def _acq(data: np.ndarray, traj: np.ndarray | None = None, flags: tuple[int, ...] = (), **idx: int):
    acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, np.complex64),
                                         None if traj is None else np.ascontiguousarray(traj, np.float32))
    for f in flags:
        acq.set_flag(f)
    for k, v in idx.items():
        setattr(acq.idx, k, v)
    return acq


def _twix_as_ismrmrd(tmp_path: Path) -> tuple[np.ndarray, float, Path]:
    """The shipped twix GRE written as ISMRMRD: a noise scan, reversed lines, two averages of one line."""
    rec = load(samples.twix_gre())
    axes = tuple(rec.meta.axes)
    kspace = np.moveaxis(np.asarray(rec.array), [axes.index(a) for a in ("coil", "line", "readout")], [0, 1, 2])
    n_coils, n_lines, n_ro = kspace.shape
    osf = float(rec.meta.extra.get("readout_oversampling") or 2.0)
    rng = np.random.default_rng(0)
    acqs = [_acq(rng.standard_normal((n_coils, n_ro)) + 0j, flags=(NOISE,))]
    for line in range(n_lines):
        data = kspace[:, line]
        if line == 10:  # two averages whose mean is the line
            wiggle = (0.1 * np.abs(data).max() * rng.standard_normal(data.shape)).astype(np.float32)
            acqs += [_acq(data + wiggle, kspace_encode_step_1=line, average=0),
                     _acq(data - wiggle, kspace_encode_step_1=line, average=1)]
        elif line % 3 == 0:  # stored in the order it was sampled, right to left
            acqs.append(_acq(data[:, ::-1], flags=(REVERSE,), kspace_encode_step_1=line))
        else:
            acqs.append(_acq(data, kspace_encode_step_1=line))
    path = _write(tmp_path / "gre_ismrmrd.h5", _header(n_ro, int(n_ro / osf), n_lines, "cartesian", n_lines), acqs)
    return kspace, osf, path


def test_cartesian_ismrmrd_reads_like_the_twix_it_came_from(tmp_path):
    kspace, osf, path = _twix_as_ismrmrd(tmp_path)
    rec = load(path)
    assert rec.meta.modality == "KSPACE" and rec.meta.source.format == "ismrmrd"
    assert tuple(rec.meta.axes) == ("coil", "line", "readout")
    assert rec.meta.extra["readout_oversampling"] == pytest.approx(osf)
    np.testing.assert_allclose(rec.array, kspace, rtol=0, atol=1e-5 * np.abs(kspace).max())
    np.testing.assert_allclose(cartesian_recon(rec.array, rec.meta.axes, osf),
                               cartesian_recon(kspace, ("coil", "line", "readout"), osf), rtol=1e-4, atol=1e-6)
    # the subject's identifiers in the header never reach the record
    assert "Doe" not in repr(rec.meta) and "12345" not in repr(rec.meta)
    assert rec.meta.source.manufacturer == "TestVendor"


def _blades_as_ismrmrd(tmp_path: Path, shuffle: bool = True) -> tuple[dict, PropellerGeometry, Path]:
    """A simulated 8-blade acquisition (2x readout oversampling) written with its trajectory, in k-space pixels."""
    mag = normalise_magnitude(load(samples.mr_small()).array, 64)
    geo = PropellerGeometry(8, 6, 128, 64)
    sens = birdcage_maps(4, 64)
    acq = simulate_acquisition(mag, geo, sens, snr=30.0, generator=torch.Generator().manual_seed(3))
    k = acq["kspace"].numpy()  # [C, blades, lines, readout]
    coords = geo.coordinates().numpy() * (64 / (2 * math.pi))  # (row, col) in cycles per field of view
    order = [(b, line) for b in range(8) for line in range(6)]
    if shuffle:
        order = [order[i] for i in np.random.default_rng(1).permutation(len(order))]
    acqs = [_acq(np.zeros((4, 128)) + 0j, np.zeros((128, 2)), flags=(NOISE,))]
    for i, (b, line) in enumerate(order):
        traj = coords[b, line][:, ::-1]  # (kx, ky) = (col, row)
        data = k[:, b, line]
        if i % 2:  # every other line runs the other way (its trajectory says so)
            traj, data = traj[::-1], data[:, ::-1]
        acqs.append(_acq(data, traj, kspace_encode_step_1=line, segment=b))
    path = _write(tmp_path / "propeller.h5", _header(128, 64, 64, "other"), acqs)
    return acq, geo, path


def test_propeller_ismrmrd_groups_lines_into_blades_with_their_angles(tmp_path):
    acq, geo, path = _blades_as_ismrmrd(tmp_path)
    rec = load(path)
    assert tuple(rec.meta.axes) == ("coil", "blade", "line", "readout")
    assert rec.meta.extra["image_size"] == 64
    np.testing.assert_allclose(rec.aux["angles"], geo.angles().numpy(), atol=1e-4)
    np.testing.assert_allclose(rec.aux["trajectory"], geo.coordinates().numpy(), atol=1e-4)
    np.testing.assert_allclose(rec.array, acq["kspace"].numpy(), atol=1e-6)


def test_infer_reconstructs_ismrmrd_blades_like_the_same_npz(tmp_path):
    from medssl.cli import main

    acq, geo, path = _blades_as_ismrmrd(tmp_path)
    npz = tmp_path / "propeller.npz"
    np.savez(npz, kspace=acq["kspace"].numpy(), angles=geo.angles().numpy(), image_size=64)
    sys.path.insert(0, str(BUNDLE))
    try:
        from scripts.propeller import Inference

        ckpt = BUNDLE / "models" / "model_snr20.pt"
        if not ckpt.is_file():
            pytest.skip("models/model_snr20.pt is not in this checkout")
        res = Inference([path, npz], tmp_path / "out", checkpoint=ckpt).run()
    finally:
        sys.modules.pop("scripts.propeller", None)
        sys.modules.pop("scripts", None)
        sys.path.remove(str(BUNDLE))
    assert not res["failed"], res["failed"]
    a = load(tmp_path / "out" / "propeller_recon.nii.gz").array
    b = np.asarray(load(res["outputs"][str(npz)]["recon_nifti"]).array)
    assert a.shape == (64, 64)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()
    # and through the command line: recon + panel, exit 0
    assert main(["infer", "propeller_mri_reconstruction", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "propeller_panel.png").is_file()


def test_infer_reconstructs_cartesian_ismrmrd_like_the_twix(tmp_path):
    from medssl.cli import main

    _, _, path = _twix_as_ismrmrd(tmp_path)
    assert main(["infer", "propeller_mri_reconstruction", str(path), str(samples.twix_gre()),
                 "--out", str(tmp_path / "out")]) == 0
    a = load(tmp_path / "out" / "gre_ismrmrd_recon.nii.gz").array
    b = load(tmp_path / "out" / "gre_recon.nii.gz").array
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()


def test_ismrmrd_files_it_cannot_use_name_the_file_and_the_reason(tmp_path):
    import h5py

    other = tmp_path / "not_ismrmrd.h5"
    with h5py.File(other, "w") as f:
        f["image"] = np.zeros((4, 4))
    with pytest.raises(InputError, match=r"not_ismrmrd\.h5: .*no ISMRMRD acquisitions"):
        load(other)
    # 3-D encoding
    hdr = _header(32, 32, 8, "cartesian")
    acqs = [_acq(np.ones((2, 32)) + 0j, kspace_encode_step_1=i % 4, kspace_encode_step_2=i // 4) for i in range(8)]
    with pytest.raises(InputError, match=r"three_d\.h5: 3-D encoding"):
        load(_write(tmp_path / "three_d.h5", hdr, acqs))
    # a spiral is not PROPELLER
    t = np.linspace(0, 4 * np.pi, 64)
    spiral = np.stack([t * np.cos(t), t * np.sin(t)], -1)
    with pytest.raises(InputError, match=r"spiral\.h5: .*not PROPELLER"):
        load(_write(tmp_path / "spiral.h5", _header(64, 64, 64, "spiral"), [_acq(np.ones((2, 64)) + 0j, spiral)]))
    # only noise scans
    with pytest.raises(InputError, match=r"noise\.h5: no imaging acquisitions"):
        load(_write(tmp_path / "noise.h5", hdr, [_acq(np.ones((2, 32)) + 0j, flags=(NOISE,))]))


REFERENCE_FILE = REPO / "tests" / "data" / "ismrmrd_shepp_logan_64.h5"


def test_reference_tool_file_reconstructs_like_the_reference_recon(tmp_path):
    """A file written by ISMRMRD's own C++ tools (tests/data/SOURCE.md), not by our writer or its library."""
    import h5py

    with ismrmrd.Dataset(str(REFERENCE_FILE), "dataset", create_if_needed=False) as ds:
        n_acq = ds.number_of_acquisitions()
        flags = [ds.read_acquisition(i).is_flag_set(NOISE) for i in range(n_acq)]
    assert n_acq == 65 and flags[0] and not any(flags[1:])  # one noise scan, then the 64 lines
    with h5py.File(REFERENCE_FILE, "r") as f:
        reference = np.asarray(f["dataset/cpp/data"][0, 0, 0], np.float64)  # the C++ tool's RSS image
        ph = f["dataset/phantom"][0]
        phantom = np.abs(ph["real"] + 1j * ph["imag"])

    rec = load(REFERENCE_FILE)
    assert rec.meta.source.format == "ismrmrd" and tuple(rec.meta.axes) == ("coil", "line", "readout")
    assert rec.array.shape == (4, 64, 128)  # the noise scan is not a line
    assert rec.meta.extra["readout_oversampling"] == pytest.approx(2.0)
    ours = cartesian_recon(rec.array, rec.meta.axes, rec.meta.extra["readout_oversampling"]).astype(np.float64)
    assert ours.shape == reference.shape == (64, 64)
    scale = float(ours.ravel() @ reference.ravel() / (ours.ravel() @ ours.ravel()))
    nmse = np.sum((scale * ours - reference) ** 2) / np.sum(reference**2)
    assert nmse < 1e-6  # the same image in the same orientation (the scale is the FFT's normalisation)
    assert np.corrcoef(ours.ravel(), phantom.ravel())[0, 1] > 0.95

    from medssl.cli import main

    assert main(["infer", "propeller_mri_reconstruction", str(REFERENCE_FILE), "--out", str(tmp_path),
                 "--no-self-ensemble"]) == 0
    recon = load(tmp_path / "ismrmrd_shepp_logan_64_recon.nii.gz").array.squeeze()
    assert recon.shape == (64, 64)
    # the PROPELLER path keeps the orientation: a flipped or transposed image correlates below 0.7
    def corr(img):
        return np.corrcoef(np.ascontiguousarray(img).ravel(), reference.ravel())[0, 1]

    assert corr(recon) > 0.85
    assert max(corr(recon[::-1]), corr(recon[:, ::-1]), corr(recon.T)) < 0.7
