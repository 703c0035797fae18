"""Inference on users' files: read through :mod:`medssl.io`, sliding-window prediction, contract outputs.

See :mod:`medssl.infer.segmentation` for the 2-D / cine segmentation path used by the segmentation bundles.
"""

from medssl.infer.segmentation import (
    Frames,
    SegmentationInference,
    keep_largest_component,
    load_frames,
    output_stem,
    overlay,
    resample,
    sliding_window_probabilities,
    write_seg_without_frame_of_reference,
    zscore,
)

__all__ = [
    "Frames",
    "SegmentationInference",
    "keep_largest_component",
    "load_frames",
    "output_stem",
    "overlay",
    "resample",
    "sliding_window_probabilities",
    "write_seg_without_frame_of_reference",
    "zscore",
]
