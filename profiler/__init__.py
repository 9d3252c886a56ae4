"""Profiler: single ops, kernels and whole models, timed on devices under a protocol, stored."""

from hwlat.profiler.backends import get_backend
from hwlat.profiler.campaign import Campaign, CampaignReport
from hwlat.profiler.check import check_device
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.onnx_models import load_model, torch_to_onnx
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec, read_jsonl, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store, StoreError

__all__ = [
    "Campaign",
    "CampaignReport",
    "InvalidOpSpecError",
    "Kernel",
    "Measurement",
    "OpSpec",
    "Store",
    "StoreError",
    "TimingProtocol",
    "check_device",
    "get_backend",
    "load_model",
    "read_jsonl",
    "torch_to_onnx",
    "write_jsonl",
]
