"""``hwlat devices check``: can this device be measured on, and with what?"""

from __future__ import annotations

from devices.connection import DeviceError, connect
from devices.device import Device

from .agent_client import AgentCrashed, AgentSession, AgentTimeout


def check_device(device: Device) -> dict:
    """Connect, start the agent, and report host facts and runtime versions.

    ``ok`` is False (with ``diagnosis``, one line) when the device cannot be used.
    """
    report: dict = {"device": device.name, "ok": False}
    try:
        with connect(device) as connection:
            session = AgentSession(connection, {}, hello_timeout_s=60)
            try:
                session.start_hello()
            finally:
                session.close()
    except (DeviceError, AgentCrashed, AgentTimeout) as exc:
        report["diagnosis"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return report
    report.update(session.hello["host"])
    report.update(session.hello["versions"])
    missing = [b for b in device.backends
               if not session.hello["versions"].get({"ort": "onnxruntime", "tvm": "tvm"}[b])]
    if missing:
        report["diagnosis"] = (f"runtime missing on the device for backend(s) {missing}; install "
                               f"it for {device.python} or drop it from 'backends'")
        return report
    report["ok"] = True
    return report
