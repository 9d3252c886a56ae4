"""Backends: how an op, kernel or model becomes something a device runs (``ort``, ``tvm``)."""

from hwlat.profiler.backends.base import (
    BACKEND_MODULES,
    ArtifactError,
    HostBackend,
    UnknownBackendError,
    cache_dir,
    get_backend,
    register_backend,
)
from hwlat.profiler.backends.ort import OrtBackend

__all__ = [
    "BACKEND_MODULES",
    "ArtifactError",
    "HostBackend",
    "OrtBackend",
    "UnknownBackendError",
    "cache_dir",
    "get_backend",
    "register_backend",
]
