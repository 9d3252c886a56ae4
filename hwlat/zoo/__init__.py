"""A library of networks built from code: published CNNs (for validation), CNN families outside the zoo
(the never-seen benchmark) and random CNNs (for training)."""

from hwlat.zoo.families import FAMILIES, export_family
from hwlat.zoo.published import VARIANTS, ZOO, build, export_all, export_onnx, resolution
from hwlat.zoo.random_nets import random_network

__all__ = [
    "FAMILIES",
    "VARIANTS",
    "ZOO",
    "export_family",
    "build",
    "export_all",
    "export_onnx",
    "random_network",
    "resolution",
]
