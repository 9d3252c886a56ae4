"""A library of networks built from code: published CNNs (for validation) and random CNNs (for training)."""

from hwlat.zoo.published import VARIANTS, ZOO, build, export_all, export_onnx, resolution
from hwlat.zoo.random_nets import random_network

__all__ = ["VARIANTS", "ZOO", "build", "export_all", "export_onnx", "random_network", "resolution"]
