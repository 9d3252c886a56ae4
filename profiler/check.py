"""``hwlat devices check``: can this device be measured on, and with what?

Connects the way a campaign does, starts the agent for its hello (host facts and
runtime versions) and asks the device's Python for the free disk in the workdir.
Each failure becomes one line naming the cause and the fix (see devices/ssh.py and
devices/known_hosts.py for the connection failures). A device from TVM's RPC tracker is
checked through the tracker (profiler/backends/tvm/tracker.py).
"""

from __future__ import annotations

import statistics
import subprocess

from hwlat.devices.connection import DeviceError, PythonMissing, connect
from hwlat.devices.device import Device
from hwlat.profiler.agent_client import AgentCrashed, AgentSession, AgentTimeout, agent_start_error
from hwlat.profiler.backends import OrtBackend, cache_dir
from hwlat.profiler.backends.ort.harness import QDQ_PROBE_BRANCHING, qdq_fanout_probe, qdq_probe_fused
from hwlat.profiler.opspec import INT_DTYPES, OpSpec
from hwlat.profiler.protocol import TimingProtocol

RUNTIME_OF = {"ort": "onnxruntime", "tvm": "tvm"}
_FREE_DISK = (
    "import os, shutil, sys; d = os.path.expanduser(sys.argv[1]); "
    "os.makedirs(d, exist_ok=True); print(shutil.disk_usage(d).free)"
)


def check_device(device: Device) -> dict:
    """Host facts and versions; ``ok`` False with ``error`` (a class name) and ``diagnosis``.

    A device with ``tvm_tracker`` is checked through the tracker (its key's servers, and a free
    one's facts); one that also has a host is then checked over SSH as well.
    """
    if not device.uses_tracker:
        return _check_agent(device)
    from hwlat.profiler.backends.tvm.tracker import check_tracker

    report = check_tracker(device)
    if not report["ok"] or device.host is None:
        return report
    ssh = _check_agent(device)
    return {**report, **ssh, "connection": f"{ssh.get('connection')}; {report['connection']}"}


def _check_agent(device: Device) -> dict:
    report: dict = {"device": device.name, "ok": False}
    try:
        with connect(device) as connection:
            report["connection"] = "local" if device.is_local else f"ssh {connection.target}"
            session = AgentSession(connection, {}, hello_timeout_s=60)
            try:
                session.start_hello()
            except (AgentCrashed, AgentTimeout) as exc:
                raise agent_start_error(device, exc) from None
            finally:
                session.close()
            report.update(session.hello["host"])
            report.update(session.hello["versions"])
            report.update(_workdir_facts(device, connection))
            if "ort" in device.backends and report.get("onnxruntime"):
                report.update(_int8_facts(device, connection))
    except DeviceError as exc:
        report["error"] = type(exc).__name__
        report["diagnosis"] = str(exc).splitlines()[0]
        return report
    problem = _problem(device, report)
    if problem:
        report["error"], report["diagnosis"] = problem
        return report
    report["ok"] = True
    return report


def _workdir_facts(device: Device, connection) -> dict:
    workdir = device.workdir or str(cache_dir())
    try:
        status, out, err = connection.run([device.python, "-c", _FREE_DISK, workdir], timeout_s=60)
    except (TimeoutError, subprocess.TimeoutExpired):
        raise DeviceError(
            f"device {device.name!r}: {device.python} did not report the free disk "
            "within 60 s; is the device overloaded?"
        ) from None
    if status == 127:
        raise PythonMissing(
            f"device {device.name!r}: {err.strip()}; set 'python' to an interpreter that exists there"
        )
    if status != 0:
        raise DeviceError(
            f"device {device.name!r}: cannot use workdir {workdir!r}: "
            f"{err.strip().splitlines()[-1] if err.strip() else status}; set 'workdir' "
            "to a writable folder"
        )
    return {"workdir": workdir, "disk_free_gb": round(int(out) / 1e9, 1)}


def _problem(device: Device, report: dict) -> tuple[str, str] | None:
    missing = [b for b in device.backends if not report.get(RUNTIME_OF.get(b, b))]
    if missing:
        return "RuntimeMissing", (
            f"runtime missing on the device for backend(s) {missing}: "
            f"install {', '.join(RUNTIME_OF.get(b, b) for b in missing)} for "
            f"{device.python}, or drop them from 'backends'"
        )
    cores = report.get("cores") or 0
    bad = [c for c in device.cpu_affinity or () if c >= cores]
    if bad:
        return "BadAffinity", (
            f"cpu_affinity lists CPU(s) {bad}, but the device has {cores} cores "
            f"(0..{cores - 1}); fix 'cpu_affinity'"
        )
    return None


# The reference conv whose float32 and int8 (QDQ, S8S8) op models are timed: a mid-network
# 3x3 conv, big enough for the conv to dominate its model's conversions.
REFERENCE_CONV = OpSpec("conv", (1, 64, 56, 56), out_channels=64, kernel=3, padding=1)


def _int8_facts(device: Device, connection) -> dict:
    """Whether int8 pays on the device: how many times faster its ONNX Runtime runs the int8
    reference conv than float32 (above 1: int8 pays; None when it could not be timed), and
    whether it runs 8-bit QDQ convs next to a tensor with several readers as one 8-bit kernel,
    per activation type (x86 fuses uint8 only and leaves such int8 convs in float32, where an
    S8S8 network can run slower than float32)."""
    backend = OrtBackend(device)
    artifacts = [backend.artifact(REFERENCE_CONV), backend.artifact(REFERENCE_CONV.as_dtype("int8"))]
    config = {**backend.agent_config(), "protocol": TimingProtocol.quick().to_dict()}
    facts: dict = {"int8_over_fp32_speedup": None, "qdq_branching_fused": {}}
    session = AgentSession(connection, config, hello_timeout_s=60)
    try:
        session.start()
        medians = []
        for artifact in artifacts:
            result = session.measure(REFERENCE_CONV.key, artifact, timeout_s=120)
            if result.get("status") == "ok":
                medians.append(statistics.median(result["samples_ms"]))
        if len(medians) == 2:
            facts["int8_over_fp32_speedup"] = round(medians[0] / medians[1], 2)
        for dtype in INT_DTYPES:
            probe = qdq_fanout_probe(dtype, cache_dir() / "probes")
            result = session.measure(f"probe-qdq-fanout-{dtype}", probe, timeout_s=120, cmd="profile_kernels")
            if result.get("status") == "ok":
                fused = qdq_probe_fused(result["kernel_nodes"])
                facts["qdq_branching_fused"][dtype] = all(fused[c] for c in QDQ_PROBE_BRANCHING)
    except (AgentCrashed, AgentTimeout):
        pass
    finally:
        session.close()
    if facts["qdq_branching_fused"].get("int8") is False and facts["qdq_branching_fused"].get("uint8"):
        facts["int8_note"] = (
            "int8 (S8S8) convs next to branching tensors run in float32 here; "
            "hwlat quantize --activation-type uint8 (U8S8) runs them in 8 bits"
        )
    return facts
