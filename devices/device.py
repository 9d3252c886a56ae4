"""Device: one machine that ops are measured on, and how to reach it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

BACKENDS = ("ort", "tvm")
LOCAL = "local"


@dataclass(frozen=True)
class Device:
    """Where and how to measure. ``host=None`` means this machine (the ``local`` device), unless
    the device is reached through TVM's RPC tracker (``tvm_tracker``): then ``host`` is only for
    SSH (the ``ort`` backend, ``devices check``) and may be None (profiler/backends/tvm/tracker.py).

    ``threads`` and ``cpu_affinity`` are applied by the agent before it times anything
    and recorded with every measurement; one thread is the default because multi-thread
    timings on a shared machine are bimodal.
    """

    name: str
    host: str | None = None
    port: int | None = None  # None: the ~/.ssh/config alias's Port, else 22
    user: str | None = None  # None: the alias's User, else the local user name
    identity_file: str | None = None  # None: the alias's IdentityFile, ssh-agent, ~/.ssh/id_*
    python: str = "python3"
    workdir: str = "~/.hwlat"
    backends: tuple[str, ...] = BACKENDS
    threads: int = 1
    cpu_affinity: tuple[int, ...] | None = None
    tvm_target: dict | None = None
    labels: tuple[str, ...] = field(default=())
    graph_optimization: str = "all"
    # ONNX Runtime's memory arena and memory patterns: on is how models usually run; off makes a
    # memory measurement the model's own need rather than the arena's growth in chunks.
    memory_arena: bool = True
    trust_on_first_use: bool = False
    known_hosts: str | None = None  # None: the alias's UserKnownHostsFile, else ~/.ssh/known_hosts
    connect_timeout_s: float = 15.0
    tvm_tracker: str | None = None  # "host:port" of TVM's RPC tracker that hands out this device
    tvm_key: str | None = None  # the key its RPC servers registered with (rpc_server --key)

    @property
    def is_local(self) -> bool:
        return self.host is None and self.tvm_tracker is None

    @property
    def uses_tracker(self) -> bool:
        """TVM tunes and measures on it through TVM's RPC tracker, not over SSH."""
        return self.tvm_tracker is not None

    def tracker_address(self) -> tuple[str, int]:
        """``tvm_tracker`` as (host, port); the inventory has checked its form."""
        host, _, port = (self.tvm_tracker or "").rpartition(":")
        return host.strip("[]"), int(port)

    def settings(self) -> dict:
        """The per-device settings recorded with every measurement."""
        return {
            "threads": self.threads,
            "cpu_affinity": list(self.cpu_affinity or []) or None,
            "graph_optimization": self.graph_optimization,
            "memory_arena": self.memory_arena,
        }


def local_device(threads: int = 1, cpu_affinity: tuple[int, ...] | None = None) -> Device:
    """The machine hwlat runs on; it needs no inventory entry."""
    return Device(
        name=LOCAL,
        python=sys.executable,
        workdir="",
        threads=threads,
        cpu_affinity=cpu_affinity,
        labels=("local",),
    )
