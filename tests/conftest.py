"""Shared fixtures: the ../shared/data folder and factories for synthetic and malformed input files."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Identifiers put into synthetic DICOM files; none may ever appear in medssl metadata or outputs.
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "SECRET123",
    "PatientBirthDate": "19450317",
    "InstitutionName": "St Nowhere Hospital",
    "AccessionNumber": "ACC98765",
    "ReferringPhysicianName": "House^Gregory",
    "DeviceSerialNumber": "SN-556677",
    "StudyDate": "20240229",
    "StudyTime": "134501",
    "StudyID": "STUDY4242",
    "OperatorsName": "Operator^Olga",
    "InstitutionAddress": "1 Secret Street",
}
PHI_STRINGS = [
    "Doe",
    "Jane",
    "SECRET123",
    "19450317",
    "Nowhere",
    "ACC98765",
    "House",
    "SN-556677",
    "20240229",
    "134501",
    "STUDY4242",
    "Olga",
    "Secret Street",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data, or skip when this checkout has no shared data."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent: {SHARED_DATA} not found (real-data tests need it)")
    return SHARED_DATA


def make_ct_dataset(
    *,
    rows: int = 8,
    cols: int = 8,
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    instance: int = 1,
    series_uid: str | None = None,
    study_uid: str | None = None,
    for_uid: str | None = None,
    pixels: np.ndarray | None = None,
    spacing: tuple[float, float] = (0.5, 0.75),
    thickness: float = 2.0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
):
    """A small, valid CT Image Storage dataset carrying the fake identifiers in PHI."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = for_uid or generate_uid()
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.PatientSex = "F"
    ds.Modality = "CT"
    ds.Manufacturer = "SynthCo"
    ds.ManufacturerModelName = "Synth-1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [spacing[0], spacing[1]]
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    if pixels is None:
        pixels = (np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) + 1000 + instance).astype(
            np.int16
        )
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16)).tobytes()
    return ds


def write_dataset(ds, path: Path) -> Path:
    """Save a dataset as a DICOM file with preamble (pydicom 3 API)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:  # noqa: D103
    """One synthetic CT slice with fake patient identifiers."""
    return write_dataset(make_ct_dataset(), tmp_path / "ct.dcm")


@pytest.fixture
def ct_series(tmp_path: Path) -> tuple[Path, list[Path], list[float]]:
    """A 5-slice synthetic CT series written in shuffled order; returns (folder, files, z positions)."""
    from pydicom.uid import generate_uid

    folder = tmp_path / "series"
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    zs = [10.0, 12.5, 15.0, 17.5, 20.0]
    order = [3, 0, 4, 1, 2]  # file names and instance numbers deliberately not in z order
    files = []
    for n, i in enumerate(order):
        ds = make_ct_dataset(
            position=(-5.0, -7.0, zs[i]),
            instance=n + 1,
            series_uid=series,
            study_uid=study,
            for_uid=frame,
            pixels=np.full((8, 8), 100 * (i + 1), np.int16),
        )
        files.append(write_dataset(ds, folder / f"im{n:02d}.dcm"))
    return folder, files, zs


@pytest.fixture
def bad_file(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Factory writing a malformed file: ``bad_file(name, content) -> path``."""

    def _make(name: str, content: bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        return p

    return _make


@pytest.fixture
def make_ct() -> Callable[..., object]:
    """Factory for synthetic CT datasets (see make_ct_dataset)."""
    return make_ct_dataset


@pytest.fixture
def save_dicom() -> Callable[..., Path]:
    """Save a pydicom dataset to a path (see write_dataset)."""
    return write_dataset


@pytest.fixture
def phi_strings() -> list[str]:
    """Fake identifier strings placed into synthetic DICOM files."""
    return list(PHI_STRINGS)


def _bundle_module(bundle: str, module: str) -> Iterator[ModuleType]:
    """Import ``scripts.<module>`` of ``bundles/<bundle>`` (its folder first on sys.path), forget it afterwards."""
    from medssl.bundles import _use_bundle_scripts

    root = str(REPO / "bundles" / bundle)
    _use_bundle_scripts(root)  # another bundle's folder and `scripts` package are forgotten
    try:
        yield importlib.import_module(f"scripts.{module}")
    finally:
        if root in sys.path:
            sys.path.remove(root)
        for key in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
            del sys.modules[key]


@pytest.fixture(scope="module")
def us() -> Iterator[ModuleType]:
    """The ultrasound bundle's ``scripts.us``."""
    yield from _bundle_module("ultrasound_vjepa_segmentation", "us")


@pytest.fixture(scope="module")
def xca() -> Iterator[ModuleType]:
    """The XCA bundle's ``scripts.xca``."""
    yield from _bundle_module("xca_cmunet_segmentation", "xca")
