"""medssl I/O: one ``load(path) -> Record`` for DICOM, NIfTI, WFDB, images, video and k-space, plus writers.

Importing this package is light (numpy only): pydicom, nibabel, wfdb, twixtools, SimpleITK, highdicom and
PyAV are imported inside the readers that need them, so ``medssl info`` starts fast. Never imports torch.
"""

from medssl.errors import InputError
from medssl.io.loader import info, iter_load, load
from medssl.io.record import Annotation, Record, RecordMeta, SourceInfo
from medssl.io.video import VIDEO_SUFFIXES, VideoInfo, read_video, read_video_frames, video_info
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
    "read_video",
    "read_video_frames",
    "video_info",
    "VideoInfo",
    "VIDEO_SUFFIXES",
    "write_nifti",
    "write_dicom_seg",
    "write_png",
    "write_csv",
]
