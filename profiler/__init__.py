"""Profiler: single ops and whole models, timed on devices, stored in SQLite."""

from .campaign import Campaign, CampaignReport
from .measurement import Measurement
from .opspec import InvalidOpSpecError, OpSpec, read_jsonl, write_jsonl
from .protocol import TimingProtocol
from .store import Store

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
