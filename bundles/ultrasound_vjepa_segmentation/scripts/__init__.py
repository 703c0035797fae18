"""Thin module of the ultrasound_vjepa_segmentation bundle (``scripts.us`` with the bundle root on sys.path)."""
