"""Tuning and measuring on devices handed out by TVM's own RPC tracker.

A pool of boards, each running ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``,
registers with ``python -m tvm.exec.rpc_tracker``; the tracker queues requests for a key and
hands each to a free board. hwlat schedules nothing itself: it asks the tracker.

The inventory (devices/inventory.py) gives such a device ``tvm_tracker = "host:port"`` and
``tvm_key`` (both or neither). ``host`` is optional: without it the device is reached only
through the tracker and measures with the TVM backends; with it, ``ort`` and ``devices check``
also use SSH as for any device. Several inventory devices may share a key: each is one more
place in the queue, and two campaigns at once get two boards. The key should name identical
boards, since the canary reference is kept per inventory device, not per board.

What goes through the tracker, for a device with ``tvm_tracker`` and a TVM backend:

* tuning: MetaSchedule's ``RPCRunner`` with ``RPCConfig(tracker_host, tracker_port,
  tracker_key)``, TVM's standard tracker path; each batch of candidates asks the tracker for a
  board, and its wait in the queue counts against the runner's timeout (``RUNNER_TIMEOUT_S``);
* measurement: a ``TrackerSession``, the campaign's alternative to the SSH agent's
  ``AgentSession``. It asks the tracker for a board once and keeps it for the whole campaign
  (so nothing else times on it meanwhile), uploads each compiled library, loads it with the
  Relax VM there, binds ``main`` to random inputs shaped by ``hwlat_example_inputs()``, and
  times it with TVM's ``time_evaluator`` on the board. The protocol and the disturbance rule
  are the agent's own code (profiler/agent.py), run on the host with the timing delegated:
  warm-up is one ``time_evaluator`` call with ``number = warmup_runs`` and ``min_repeat_ms =
  warmup_ms``; ``number`` is then set so that one repeat lasts ``min_repeat_ms`` and the
  ``repeat`` repeats are timed in one call (a repeat shorter than half of ``min_repeat_ms``
  doubles ``number`` and they are timed again); the canary library is timed the same way
  before and after every op and judged against the stored reference, as by the agent. The
  timed call is the VM running ``main``, as in the agent, but with no Python loop around it,
  so ops of a few microseconds read a fraction of a microsecond faster than the agent says.
  A board whose session ends loses its op (stored as failed) and another is requested; when
  no board with the key is left, the campaign waits with back-off, as for a lost SSH link.

Threads and CPUs are set in the board's session with TVM's ``runtime.config_threadpool``: the
device's ``cpu_affinity`` shared by ``threads`` workers, or TVM's default (big cores) without
one. TVM cannot run more threads than its pool has (``TVM_NUM_THREADS`` of the server, else
the cores, halved on x86), so a device asking for more is refused with that fix.

What the session cannot see: TVM's RPC server reports neither its TVM version nor the board's
OS, memory or governor. ``backend_version`` is therefore the host's TVM (which compiled the
library; the RPC handshake and ``load_module`` refuse an incompatible runtime), host facts are
what TVM's functions tell (LLVM's name for the CPU, the triple, the server's address), and
whole models have no peak-memory numbers.
"""

from __future__ import annotations

import math
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from hwlat.devices.connection import Connection, ConnectionLost, DeviceError
from hwlat.devices.device import Device
from hwlat.errors import HwlatError
from hwlat.profiler.agent import Agent, _random_feeds
from hwlat.profiler.agent_client import AgentCrashed, AgentTimeout
from hwlat.profiler.backends.tvm.tune import RUNNER_TIMEOUT_S, evaluator_config

CONNECT_TIMEOUT_S = 10.0  # reaching the tracker and each of its answers
CHECK_WAIT_S = 10.0  # `devices check`: how long a free board may take to be handed out
SERVER_RECHECK_S = 10.0  # while queued: how often to see that boards with the key still exist
ALIVE_TIMEOUT_S = 10.0
SAVED_MAIN = "hwlat_main"
# TVM's thread pool modes (runtime.config_threadpool): pin to the big cores, or share given cores.
_BIG_CORES, _SHARE_CPUS = 1, -3


def _start_hint(device: Device) -> str:
    return f"python -m tvm.exec.rpc_server --tracker {device.tvm_tracker} --key {device.tvm_key}"


class Tracker:
    """A client of TVM's tracker, using TVM's own wire format (``tvm.rpc.base``), with the
    timeouts TVM's ``TrackerSession`` lacks (it retries a refused connection for a minute and
    waits in the queue forever)."""

    def __init__(self, device: Device, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        from tvm.rpc import base

        self.device = device
        self.address = device.tracker_address()
        self._base = base
        where = f"device {device.name!r}: TVM's RPC tracker {device.tvm_tracker}"
        try:
            self._sock = socket.create_connection(self.address, timeout=timeout_s)
        except OSError as exc:
            raise ConnectionLost(
                f"{where} cannot be reached ({exc.strerror or exc}); start it there with "
                f"python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {self.address[1]}"
            ) from None
        try:
            self._sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(self._sock, 4))[0]
        except (OSError, RuntimeError) as exc:
            self.close()
            raise ConnectionLost(f"{where} does not answer as a tracker ({exc})") from None
        if magic != base.RPC_TRACKER_MAGIC:
            self.close()
            raise DeviceError(f"{where} answers, but is not TVM's RPC tracker; check the port")

    def summary(self) -> dict:
        try:
            self._base.sendjson(self._sock, [self._base.TrackerCode.SUMMARY])
            code, value = self._base.recvjson(self._sock)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConnectionLost(f"TVM's RPC tracker {self.device.tvm_tracker} dropped ({exc})") from None
        if code != self._base.TrackerCode.SUCCESS:
            raise ConnectionLost(f"TVM's RPC tracker {self.device.tvm_tracker} answered {value!r}")
        return value

    def servers(self, key: str) -> tuple[int, int, int, list[str]]:
        """Boards registered with ``key``, how many are free, requests queued, and every key seen."""
        info = self.summary()
        keys = [s["key"].split(":", 1)[-1] for s in info.get("server_info", [])]
        queue = info.get("queue_info", {}).get(key, {})
        return keys.count(key), int(queue.get("free", 0)), int(queue.get("pending", 0)), sorted(set(keys))

    def request(
        self, key: str, wait_s: float | None = None, stop: threading.Event | None = None, priority: int = 1
    ):
        """An RPC session on a board with ``key`` and its address: the tracker's queue decides
        which and when. Waits up to ``wait_s`` (None: as long as boards with the key exist)."""
        from tvm import rpc

        deadline = None if wait_s is None else time.monotonic() + wait_s
        try:
            self._base.sendjson(self._sock, [self._base.TrackerCode.REQUEST, key, "", priority])
        except OSError as exc:
            raise ConnectionLost(f"TVM's RPC tracker {self.device.tvm_tracker} dropped ({exc})") from None
        recheck = time.monotonic() + SERVER_RECHECK_S
        while True:
            if stop is not None and stop.is_set():
                raise ConnectionLost(f"device {self.device.name!r}: stopped while queued at the tracker")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"the tracker handed out no board with key {key!r} within {wait_s:.0f} s")
            if now >= recheck:  # boards that went away leave a request queued forever
                recheck = now + SERVER_RECHECK_S
                with Tracker(self.device) as other:
                    if other.servers(key)[0] == 0:
                        raise ConnectionLost(self.no_server_message(other))
            if select.select([self._sock], [], [], 0.5)[0]:
                break
        try:
            code, value = self._base.recvjson(self._sock)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConnectionLost(f"TVM's RPC tracker {self.device.tvm_tracker} dropped ({exc})") from None
        if code != self._base.TrackerCode.SUCCESS:
            raise ConnectionLost(f"TVM's RPC tracker {self.device.tvm_tracker} answered {value!r}")
        host, port, matchkey = value
        try:
            return rpc.connect(host, port, matchkey), (host, int(port))
        except Exception as exc:  # TVM raises RuntimeError / TVMError subclasses
            raise ConnectionLost(
                f"device {self.device.name!r}: the tracker handed out the RPC server {host}:{port}, "
                f"which this host cannot reach ({_one_line(exc)}); a board behind NAT needs "
                "rpc_server --custom-addr ADDRESS"
            ) from None

    def no_server_message(self, tracker: Tracker | None = None) -> str:
        keys = (tracker or self).servers(self.device.tvm_key or "")[3]
        return (
            f"device {self.device.name!r}: no RPC server is registered with key {self.device.tvm_key!r} "
            f"at TVM's RPC tracker {self.device.tvm_tracker} (registered keys: "
            f"{', '.join(keys) or 'none'}); start one on the device: {_start_hint(self.device)}"
        )

    def close(self) -> None:
        sock, self._sock = getattr(self, "_sock", None), None
        if sock is not None:
            sock.close()  # a request still queued is dropped by the tracker

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def configure_remote(remote, threads: int, cpu_affinity: tuple[int, ...] | list[int] | None) -> int:
    """Set TVM's thread pool in a board's session as the agent would; the threads it now runs."""
    config = remote.get_function("runtime.config_threadpool")
    if cpu_affinity:  # arrays cannot be sent over RPC: built there
        config(_SHARE_CPUS, threads, remote.get_function("ffi.Array")(*[str(c) for c in cpu_affinity]))
    else:
        config(_BIG_CORES, threads)
    return int(remote.get_function("runtime.NumThreads")())


def threads_problem(device: Device, threads: int) -> str | None:
    if threads == device.threads:
        return None
    return (
        f"device {device.name!r}: the RPC servers with key {device.tvm_key!r} run at most {threads} TVM "
        f"thread(s), not the {device.threads} asked for; start them with TVM_NUM_THREADS={device.threads}, "
        f"or set threads = {threads}"
    )


def remote_facts(remote, address: tuple[str, int], device: Device) -> dict:
    """What a board's session tells about it (TVM has no call for OS, memory or version)."""
    facts = {"hostname": address[0], "rpc_server": f"{address[0]}:{address[1]}"}
    for name, function in (
        ("llvm_cpu", "target.llvm_get_system_cpu"),
        ("triple", "target.llvm_get_system_triple"),
    ):
        try:
            facts[name] = str(remote.get_function(function)())
        except Exception:  # a runtime-only server has no LLVM
            facts[name] = None
    facts["arch"] = facts["triple"].split("-")[0] if facts["triple"] else None
    facts.update(tvm_tracker=device.tvm_tracker, tvm_key=device.tvm_key)
    return facts


# ----- the campaign's side ------------------------------------------------------------------------
class TrackerLink(Connection):
    """What a campaign holds for a tracker device instead of an SSH connection: the tracker
    answers and boards with the key are registered (else ConnectionLost, so that the campaign
    retries with back-off). Nothing runs or is staged over it; the session uploads itself."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        with Tracker(device) as tracker:
            if tracker.servers(device.tvm_key or "")[0] == 0:
                raise ConnectionLost(tracker.no_server_message())

    def request(self, stop: threading.Event | None = None):
        with Tracker(self.device) as tracker:
            return tracker.request(self.device.tvm_key or "", stop=stop)

    def start(self, argv: list[str]):
        raise DeviceError(f"device {self.device.name!r}: nothing runs on a tracker device but TVM's RPC")

    def stage(self, paths: list[Path], timeout_s: float | None = None) -> list[str]:
        return [str(p) for p in paths]

    def run(self, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str, str]:
        raise DeviceError(f"device {self.device.name!r}: nothing runs on a tracker device but TVM's RPC")

    def is_alive(self) -> bool:
        try:
            with Tracker(self.device) as tracker:
                return tracker.servers(self.device.tvm_key or "")[0] > 0
        except DeviceError:
            return False


class RemoteRunner:
    """One library loaded in a board's session: ``main`` bound to random inputs, timed there."""

    def __init__(self, remote, name: str) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        from hwlat.profiler.backends.tvm.backend import INPUTS_FUNCTION

        self.device = remote.cpu()
        self.vm = VirtualMachine(remote.load_module(name), self.device)
        examples = self.vm[INPUTS_FUNCTION]()  # a tuple, which comes back as a handle to it
        size, item = remote.get_function("ffi.ArraySize"), remote.get_function("ffi.ArrayGetItem")
        tensors = [item(examples, i) for i in range(int(size(examples)))]
        feeds = _random_feeds([(str(i), list(t.shape)) for i, t in enumerate(tensors)])
        args = [
            tvm.runtime.tensor(feeds[str(i)].astype(str(t.dtype)), self.device) for i, t in enumerate(tensors)
        ]
        self.vm.save_function("main", SAVED_MAIN, *args)  # as the agent's TvmRunner binds them

    def _evaluate(self, number: int, repeat: int, min_repeat_ms: float) -> list[float]:
        timer = self.vm.time_evaluator(
            SAVED_MAIN, self.device, number=number, repeat=repeat, min_repeat_ms=math.ceil(min_repeat_ms)
        )
        return [s * 1e3 for s in timer().results]

    def time(self, warmup_ms: float, warmup_runs: int, min_repeat_ms: float, repeat: int):
        """The agent's ``time_runner`` with every call made on the board (module docstring)."""
        per_call_ms = max(self._evaluate(max(1, int(warmup_runs)), 1, warmup_ms)[0], 1e-6)
        number = max(1, int(min_repeat_ms / per_call_ms + 0.999))
        while True:
            samples = self._evaluate(number, int(repeat), 0)
            if min(samples) * number >= min_repeat_ms * 0.5 or number >= 1e7:
                return samples, number
            number *= 2  # warm-up under-estimated the speed


class _RemoteAgent(Agent):
    """The agent's protocol, canary and disturbance rule, with a board's session doing the timing."""

    def __init__(self, remote, device: Device) -> None:
        super().__init__()
        self.remote = remote
        self.device = device
        self._uploaded: set[str] = set()

    def _apply_settings(self, settings):
        threads = configure_remote(self.remote, settings["threads"], settings["cpu_affinity"])
        problem = threads_problem(self.device, threads)
        if problem:
            raise DeviceError(problem)
        return {**settings, "threads": threads, "cpu_affinity": list(settings["cpu_affinity"] or []) or None}

    def _runner(self, model_path):
        path = Path(model_path)
        name = path.name  # libraries are named by content hash: each is uploaded once per session
        if name not in self._uploaded:
            self.remote.upload(str(path), name)
            self._uploaded.add(name)
        return RemoteRunner(self.remote, name)

    def _time(self, run, warmup_ms, warmup_runs, min_repeat_ms, repeat):
        return run.time(warmup_ms, warmup_runs, min_repeat_ms, repeat)

    def measure_model(self, msg):
        return self.measure(msg)  # no memory numbers: TVM's RPC has no call for them


class TrackerSession:
    """A board from the tracker, held from ``start`` to ``close``; answers like ``AgentSession``
    (``hello``, ``configured``, ``measure`` results), so the campaign stores the same rows."""

    def __init__(
        self,
        connection: TrackerLink,
        config: dict,
        stop: threading.Event | None = None,
        hello_timeout_s: float = 120.0,
    ) -> None:
        self.connection = connection
        self.device = connection.device
        self.config = config
        self.stop = stop
        self.hello_timeout_s = hello_timeout_s
        self.process = None
        self.hello: dict = {}
        self.configured: dict = {}
        self._agent: _RemoteAgent | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> TrackerSession:
        """Queue at the tracker for a board, then set it up like the agent (threads, canary)."""
        from hwlat.profiler.backends.tvm.tune import load_tvm

        remote, address = self.connection.request(self.stop)
        self._agent = _RemoteAgent(remote, self.device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hwlat-rpc-{self.device.name}")
        try:
            self.hello = {
                "type": "hello",
                "versions": {"tvm": load_tvm().__version__},
                "host": self._call(remote_facts, self.hello_timeout_s, remote, address, self.device),
            }
            self.configured = self._call(
                self._agent.configure, self.hello_timeout_s, {"cmd": "configure", **self.config}
            )
        except (DeviceError, AgentCrashed, AgentTimeout):
            self.close()
            raise
        except Exception as exc:  # TVM raises many types
            self.close()
            raise AgentCrashed(f"the RPC server could not set up the canary: {_one_line(exc)}") from None
        return self

    def measure(self, key: str, artifact: Path, timeout_s: float, cmd: str = "measure") -> dict:
        assert self._agent is not None, "start() the session first"
        handlers = {
            "measure": self._agent.measure,
            "measure_model": self._agent.measure_model,
            "profile_kernels": self._agent.profile_kernels,
        }
        msg = {"cmd": cmd, "key": key, "model": str(artifact)}
        try:
            return self._call(handlers[cmd], timeout_s, msg)
        except (AgentCrashed, AgentTimeout):
            raise
        except Exception as exc:  # the op's own failure (e.g. it does not load there): stored as failed
            return {"type": "result", "key": key, "status": "failed", "error_msg": _one_line(exc)}

    def _call(self, fn, timeout_s: float, *args):
        """Run on the session's thread with a time limit; a session that died is AgentCrashed."""
        assert self._pool is not None
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise AgentTimeout(f"the RPC server gave no answer within {timeout_s:.0f} s") from None
        except (DeviceError, AgentCrashed):
            raise
        except Exception as exc:
            if not self._alive():
                raise AgentCrashed(f"the RPC session ended: {_one_line(exc)}") from None
            raise

    def _alive(self) -> bool:
        if self._agent is None or self._pool is None:
            return False
        remote = self._agent.remote
        probe = self._pool.submit(lambda: remote.get_function("runtime.NumThreads")())
        try:
            probe.result(timeout=ALIVE_TIMEOUT_S)
            return True
        except Exception:
            return False

    def kill(self) -> None:
        """From another thread (Ctrl-C): stop queueing; a call in flight ends on its own."""
        if self.stop is not None:
            self.stop.set()
        self.close()

    def close(self) -> None:
        """Hand the board back (the session closes once nothing refers to it)."""
        pool, self._pool = self._pool, None
        self._agent = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ----- tuning -------------------------------------------------------------------------------------
def tuning_session(threads: int, cpu_affinity: tuple[int, ...], rpc_config):
    """MetaSchedule's session factory: TVM's standard tracker request, then the device's threads.
    Runs in the runner's worker process."""
    session = rpc_config.connect_server()
    configure_remote(session, threads, cpu_affinity)
    return session


@contextmanager
def tracker_rpc_runner(device: Device) -> Iterator[object]:
    """An RPCRunner that times candidates on boards the tracker hands out.

    Checked first, so that tuning fails at once with the fix rather than candidate by candidate:
    the tracker answers, boards with the key exist, and one runs the threads asked for.
    """
    from tvm.s_tir import meta_schedule as ms

    with Tracker(device) as tracker:
        if tracker.servers(device.tvm_key or "")[0] == 0:
            raise DeviceError(tracker.no_server_message())
        remote, _ = tracker.request(device.tvm_key or "")
    problem = threads_problem(device, configure_remote(remote, device.threads, device.cpu_affinity))
    del remote  # hand the board back before tuning asks for one
    if problem:
        raise DeviceError(problem)
    host, port = device.tracker_address()
    config = ms.runner.RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=device.tvm_key,
        session_timeout_sec=RUNNER_TIMEOUT_S,
    )
    yield ms.runner.RPCRunner(
        rpc_config=config,
        evaluator_config=evaluator_config(),
        f_create_session=partial(tuning_session, device.threads, tuple(device.cpu_affinity or ())),
        max_workers=1,
    )


# ----- hwlat devices check ------------------------------------------------------------------------
def check_tracker(device: Device) -> dict:
    """The tracker's view of the device's key, and a free board's facts (``ok`` False with
    ``error`` and a one-line ``diagnosis`` when something is wrong)."""
    report: dict = {
        "device": device.name,
        "ok": False,
        "connection": f"TVM RPC tracker {device.tvm_tracker}, key {device.tvm_key}",
    }
    try:
        with Tracker(device) as tracker:
            total, free, queued, _ = tracker.servers(device.tvm_key or "")
            if total == 0:
                raise DeviceError(tracker.no_server_message())
            report.update(servers=total, free=free, queued=queued)
            if not free:
                report["note"] = f"all {total} server(s) busy, {queued} request(s) queued; no board probed"
            else:
                try:
                    remote, address = tracker.request(device.tvm_key or "", wait_s=CHECK_WAIT_S)
                except TimeoutError:
                    raise DeviceError(
                        f"device {device.name!r}: the tracker lists {free} free server(s) with key "
                        f"{device.tvm_key!r} but handed none out within {CHECK_WAIT_S:.0f} s; restart "
                        f"them: {_start_hint(device)}"
                    ) from None
                report.update(remote_facts(remote, address, device))
                report["tvm_threads"] = configure_remote(remote, device.threads, device.cpu_affinity)
                problem = threads_problem(device, report["tvm_threads"]) or _target_problem(device, report)
                if problem:
                    raise DeviceError(problem)
    except HwlatError as exc:  # DeviceError, or TvmTargetError from the device's tvm_target
        report["error"] = type(exc).__name__
        report["diagnosis"] = str(exc).splitlines()[0]
        return report
    report["ok"] = True
    return report


def _target_problem(device: Device, facts: dict) -> str | None:
    """No tvm_target, or one for another architecture than the board's."""
    arch = facts.get("arch")
    if not arch:
        return None
    if device.tvm_target is None:
        return (
            f"device {device.name!r} has no tvm_target; its board says "
            f'tvm_target = {{ kind = "llvm", mtriple = "{facts["triple"]}", mcpu = "{facts["llvm_cpu"]}" }}'
        )
    from hwlat.profiler.backends.tvm.target import device_target

    wanted = device_target(device).get("mtriple", "").split("-")[0] or platform.machine()
    aliases = {"arm64": "aarch64", "amd64": "x86_64"}
    if aliases.get(wanted, wanted) != aliases.get(arch, arch):
        return (
            f"device {device.name!r}: tvm_target compiles for {wanted}, but the board behind key "
            f"{device.tvm_key!r} is {arch} ({facts['triple']}); fix tvm_target's mtriple"
        )
    return None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
