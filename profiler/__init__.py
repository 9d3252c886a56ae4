"""Profiler: single ops and whole models, timed on devices, stored in SQLite."""

from hwlat.profiler.campaign import Campaign, CampaignReport
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec, read_jsonl, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

__all__ = [
    "Campaign",
    "CampaignReport",
    "InvalidOpSpecError",
    "Measurement",
    "OpSpec",
    "Store",
    "TimingProtocol",
    "read_jsonl",
    "write_jsonl",
]
