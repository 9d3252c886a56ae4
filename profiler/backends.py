"""Host-side backends: what the agent runs for an op, and how it is configured.

The agent times an *artifact*: for ONNX Runtime the op's ONNX file; for TVM a
library compiled for the device's target (profiler/tvm_backend.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from hwlat.devices.device import Device
from hwlat.profiler.onnx_models import model_path
from hwlat.profiler.opspec import OpSpec

CACHE_ENV = "HWLAT_CACHE"


class ArtifactError(RuntimeError):
    """The op could not be turned into something the device can run (e.g. a compile error)."""


class UnknownBackendError(ValueError):
    """A backend name that hwlat does not know."""


def cache_dir() -> Path:
    """``$HWLAT_CACHE`` or ``~/.cache/hwlat``: op models, compiled libraries, tuning logs."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "hwlat"))


class HostBackend:
    """Base class: a backend prepares artifacts on the host and names its agent runner."""

    name = ""
    version_key = ""  # which entry of the agent's hello "versions" is this backend's version

    def __init__(self, device: Device) -> None:
        self.device = device

    def agent_config(self) -> dict:
        return {"backend": self.name, **self.device.settings()}

    def artifact(self, spec: OpSpec) -> Path:
        raise NotImplementedError

    def model_artifact(self, onnx_path: Path) -> Path:
        raise NotImplementedError

    def prefetch(self, specs: list[OpSpec], progress: bool = False) -> None:
        """Prepare the artifacts of a campaign's ops before and while they are measured.

        Called once per campaign with the ops still to measure; ``artifact`` must still work
        for any op. Nothing to do where artifacts are cheap (ONNX Runtime).
        """

    def close(self) -> None:
        """Release host-side resources (compiler workers)."""


class OrtBackend(HostBackend):
    name = "ort"
    version_key = "onnxruntime"

    def artifact(self, spec: OpSpec) -> Path:
        return model_path(spec, cache_dir() / "models")

    def model_artifact(self, onnx_path: Path) -> Path:
        return Path(onnx_path)


BACKENDS: dict[str, type[HostBackend]] = {"ort": OrtBackend}


def register_backend(cls: type[HostBackend]) -> type[HostBackend]:
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str, device: Device, **options) -> HostBackend:
    """The backend ``name`` for ``device``; ``options`` go to its constructor (e.g. tune_trials)."""
    if name == "tvm" or name.startswith("tvm-"):
        from hwlat.profiler import tvm_backend  # noqa: F401  (registers the TVM backends; imports TVM lazily)
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; use one of {', '.join(sorted(BACKENDS))}")
    if device.backends and name.split("-")[0] not in device.backends:
        raise UnknownBackendError(
            f"device {device.name!r} does not list backend {name!r} "
            f"(it has {', '.join(device.backends)}); add it to 'backends' "
            "in the inventory"
        )
    return BACKENDS[name](device, **options)
