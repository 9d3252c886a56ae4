"""Tuning on a remote device: TVM's RPC server started there, reached through the SSH connection.

MetaSchedule builds candidates on the host and times them with an RPCRunner. hwlat
starts the server on the device over its own SSH connection, bound to the device's
loopback, with the agent's thread count and CPU set, and reaches it through an SSH port
forward, so no port opens on the device's network and no RPC tracker is needed. The
server needs the full TVM package on the device (``apache-tvm``), as the agent does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from hwlat.devices.connection import ConnectionLost, DeviceError, RuntimeMissing, connect
from hwlat.devices.device import Device
from hwlat.profiler.backends.tvm.tune import RUNNER_TIMEOUT_S, evaluator_config

SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 10.0
# Run on the device with its Python: set threads and CPUs up like the agent, start the
# server on loopback, print its port; on a line (or EOF) from the host, stop the server
# and its worker processes (killing this script alone would leave them running).
SERVER_SCRIPT = """\
import json, os, sys
threads, cpus = int(sys.argv[1]), json.loads(sys.argv[2])
os.environ["TVM_NUM_THREADS"] = str(threads)
os.environ["TVM_BIND_THREADS"] = "0"
if cpus:
    os.sched_setaffinity(0, set(cpus))
from tvm import rpc
server = rpc.Server("127.0.0.1", port=9090, port_end=9999, silent=True)
print(json.dumps({"port": server.port}), flush=True)
sys.stdin.readline()
server.terminate()
"""


def connect_direct(rpc_config):
    """MetaSchedule's session factory without a tracker: the config's tracker address is the
    forwarded port of the device's RPC server itself. Runs in the runner's worker process."""
    from tvm import rpc

    return rpc.connect(
        rpc_config.tracker_host, rpc_config.tracker_port, session_timeout=rpc_config.session_timeout_sec
    )


@contextmanager
def device_rpc_runner(device: Device) -> Iterator[object]:
    """An RPCRunner that times candidates on ``device``; the server stops when this exits."""
    from tvm.s_tir import meta_schedule as ms

    with ExitStack() as stack:
        connection = stack.enter_context(connect(device))
        if not hasattr(connection, "forward_port"):
            raise DeviceError(
                f"device {device.name!r}: its connection cannot forward a port, "
                "which tuning on the device needs"
            )
        process = connection.start(
            [
                device.python,
                "-u",
                "-c",
                SERVER_SCRIPT,
                str(device.threads),
                json.dumps(list(device.cpu_affinity or [])),
            ]
        )
        stack.callback(_stop_server, process)
        port = _server_port(device, process)
        forward = stack.enter_context(connection.forward_port(port))
        config = ms.runner.RPCConfig(
            tracker_host="127.0.0.1",
            tracker_port=forward.port,
            tracker_key="hwlat-direct",
            session_timeout_sec=RUNNER_TIMEOUT_S,
        )
        yield ms.runner.RPCRunner(
            rpc_config=config,
            evaluator_config=evaluator_config(),
            f_create_session=connect_direct,
            max_workers=1,
        )


def _stop_server(process) -> None:
    try:
        process.write_line("stop")
        process.read_line(SERVER_STOP_TIMEOUT_S)  # EOF once the server and its workers are gone
    except (ConnectionLost, TimeoutError):
        pass
    process.kill()


def _server_port(device: Device, process) -> int:
    try:
        line = process.read_line(SERVER_START_TIMEOUT_S)
    except TimeoutError:
        raise DeviceError(
            f"device {device.name!r}: TVM's RPC server did not start within {SERVER_START_TIMEOUT_S:.0f} s"
        ) from None
    try:
        return int(json.loads(line)["port"])
    except (TypeError, ValueError, KeyError):
        pass
    deadline = time.monotonic() + 2.0  # stderr is read by another thread: let it catch up
    while not process.stderr_tail().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = " | ".join(process.stderr_tail().strip().splitlines()[-5:])
    if "No module named" in tail:
        raise RuntimeMissing(
            f"device {device.name!r}: TVM's RPC server needs TVM on the device "
            f"({device.python} -m pip install apache-tvm): {tail}"
        )
    raise DeviceError(f"device {device.name!r}: TVM's RPC server did not start: {tail or line!r}")
