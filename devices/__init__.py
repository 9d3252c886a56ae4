"""Devices: where ops are measured and how to reach them (local or SSH)."""

from hwlat.devices.connection import (
    Connection,
    ConnectionLost,
    DeviceError,
    LocalConnection,
    ProcessKilledError,
    PythonMissing,
    RuntimeMissing,
    connect,
)
from hwlat.devices.device import LOCAL, Device, local_device
from hwlat.devices.inventory import InventoryError, load_inventory, resolve_device

__all__ = [
    "Connection",
    "ConnectionLost",
    "Device",
    "DeviceError",
    "InventoryError",
    "LOCAL",
    "LocalConnection",
    "ProcessKilledError",
    "PythonMissing",
    "RuntimeMissing",
    "connect",
    "load_inventory",
    "local_device",
    "resolve_device",
]
