"""ONNX Runtime: an op's artifact is its one-op ONNX model; a whole model is its own file (with
any external weights put inside it)."""

from __future__ import annotations

from pathlib import Path

from hwlat.profiler.backends.base import HostBackend, cache_dir, register_backend
from hwlat.profiler.onnx_models import model_path, one_file
from hwlat.profiler.opspec import OpSpec


@register_backend
class OrtBackend(HostBackend):
    name = "ort"
    version_key = "onnxruntime"

    def artifact(self, spec: OpSpec) -> Path:
        return model_path(spec, cache_dir() / "models")

    def model_artifact(self, onnx_path: Path) -> Path:
        return one_file(Path(onnx_path), cache_dir() / "models")
