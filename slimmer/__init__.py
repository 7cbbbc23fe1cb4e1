"""slimmer: make PyTorch/CUDA environments and images small without breaking them."""

__version__ = "0.1.0"
