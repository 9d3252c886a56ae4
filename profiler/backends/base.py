"""Host-side backends: what the agent runs for an op, and how it is configured.

The agent times an *artifact*: for ONNX Runtime the op's ONNX file (backends/ort); for TVM a
library compiled for the device's target (backends/tvm). Each backend registers itself under
its name; ``get_backend`` imports it on first use.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from hwlat.devices.device import Device
from hwlat.errors import HwlatError
from hwlat.profiler.opspec import OpSpec

CACHE_ENV = "HWLAT_CACHE"


class ArtifactError(HwlatError):
    """The op could not be turned into something the device can run (e.g. a compile error)."""


class UnknownBackendError(HwlatError):
    """A backend name that hwlat does not know."""


def cache_dir() -> Path:
    """``$HWLAT_CACHE`` or ``~/.cache/hwlat``: op models, compiled libraries, tuning logs."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "hwlat"))


class HostBackend:
    """Base class: a backend prepares artifacts on the host and names its agent runner."""

    name = ""
    version_key = ""  # which entry of the agent's hello "versions" is this backend's version
    # The agent command that measures a kernel's artifact (Campaign kind "kernel"): the kernel
    # compiled alone is timed end to end; ONNX Runtime's harness backend profiles instead.
    kernel_command = "measure"

    def __init__(self, device: Device) -> None:
        self.device = device

    @property
    def via_tracker(self) -> bool:
        """Measured on a board from TVM's RPC tracker (backends/tvm/tracker.py), not by the agent."""
        return False

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


# Where each backend lives: its module registers it when imported (TVM is imported only when asked for).
BACKEND_MODULES = {
    "ort": "hwlat.profiler.backends.ort",
    "tvm": "hwlat.profiler.backends.tvm",
    "tvm-untuned": "hwlat.profiler.backends.tvm",
}
BACKENDS: dict[str, type[HostBackend]] = {}


def register_backend(cls: type[HostBackend]) -> type[HostBackend]:
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str, device: Device, **options) -> HostBackend:
    """The backend ``name`` for ``device``; ``options`` go to its constructor (e.g. tune_trials)."""
    if name not in BACKEND_MODULES:
        raise UnknownBackendError(f"unknown backend {name!r}; use one of {', '.join(BACKEND_MODULES)}")
    importlib.import_module(BACKEND_MODULES[name])
    if device.backends and name.split("-")[0] not in device.backends:
        raise UnknownBackendError(
            f"device {device.name!r} does not list backend {name!r} "
            f"(it has {', '.join(device.backends)}); add it to 'backends' "
            "in the inventory"
        )
    return BACKENDS[name](device, **options)
