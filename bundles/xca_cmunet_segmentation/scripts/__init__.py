"""Thin module of the xca_cmunet_segmentation bundle (importable as scripts.xca when the bundle root is on sys.path)."""
