"""medssl I/O: one ``load(path) -> Record`` for DICOM, NIfTI, WFDB, images and k-space, plus atomic writers.

Importing this package is light (numpy only): pydicom, nibabel, wfdb, twixtools, SimpleITK and highdicom
are imported inside the readers that need them, so ``medssl info`` starts fast. Never imports torch.
"""

from medssl.errors import InputError
from medssl.io.loader import info, iter_load, load
from medssl.io.record import Annotation, Record, RecordMeta, SourceInfo
from medssl.io.writers import write_csv, write_dicom_seg, write_nifti, write_png

__all__ = [
    "load",
    "info",
    "iter_load",
    "Record",
    "RecordMeta",
    "SourceInfo",
    "Annotation",
    "InputError",
    "write_nifti",
    "write_dicom_seg",
    "write_png",
    "write_csv",
]
