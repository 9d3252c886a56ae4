"""ONNX Runtime backend: one-op models for ops, harness models for kernels measured in context."""

from hwlat.profiler.backends.ort.backend import OrtBackend
from hwlat.profiler.backends.ort.harness import HarnessBackend, ProbeModel, build_harness, relu_chain

__all__ = ["HarnessBackend", "OrtBackend", "ProbeModel", "build_harness", "relu_chain"]
