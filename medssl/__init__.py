"""medssl: self-supervised learning for medical imaging and signals, built on MONAI and PyTorch.

The top-level package imports nothing heavy, so ``medssl info`` starts quickly; import the
sub-packages (``medssl.io``, ``medssl.ssl``, ...) for the work itself.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
