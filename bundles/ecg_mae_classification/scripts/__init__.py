"""Thin module of the ecg_mae_classification bundle: data, models, workflows (ecg_bundle), inference, study."""
