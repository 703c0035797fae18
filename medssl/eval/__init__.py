"""Evaluation: label-fraction splits, linear probe, kNN, fine-tuning, metrics and results tables.

Names are imported lazily on first use (so ``python -m medssl.eval.results`` runs cleanly and importing the
package is cheap).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FinetuneResult": "finetune",
    "SupervisedAdapter": "finetune",
    "finetune": "finetune",
    "init_output_bias_to_prior": "finetune",
    "load_pretrained": "finetune",
    "predict": "finetune",
    "DelineationScore": "delineation",
    "ludb_waves": "delineation",
    "score_delineation": "delineation",
    "waves_from_labels": "delineation",
    "waves_to_labels": "delineation",
    "knn_predict": "knn",
    "LinearProbe": "linear_probe",
    "extract_features": "linear_probe",
    "linear_probe": "linear_probe",
    "choose_threshold": "metrics",
    "cldice": "metrics",
    "dice": "metrics",
    "hd95": "metrics",
    "macro_auroc": "metrics",
    "nmse": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
    "effective_rank": "representation",
    "effective_rank_tensor": "representation",
    "append_result": "results",
    "render_results_table": "results",
    "summarise": "results",
    "LabelSplit": "splits",
    "label_fraction_split": "splits",
    "load_split": "splits",
    "save_split": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medssl.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medssl.eval.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
