"""Devices from TVM's RPC tracker: a real tracker and two real RPC servers on loopback.

The servers register with one key, as a pool of identical boards would; campaigns, tuning
and ``devices check`` reach them only through the tracker. Ops are compiled untuned (or
tuned with two trials) and small, so the whole file runs in about a minute.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest

from hwlat import cli as hwlat_cli
from hwlat.devices.connection import DeviceError, connect
from hwlat.devices.inventory import InventoryError, load_inventory
from hwlat.profiler.backends.tvm.backend import TvmBackend, TvmUntunedBackend
from hwlat.profiler.backends.tvm.tracker import TrackerLink
from hwlat.profiler.backends.tvm.tune import load_tvm
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.onnx_models import build_model
from hwlat.profiler.opspec import OpSpec, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

KEY = "hwlat-test"
OPS = [
    OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=3, padding=1, activation="relu"),
    OpSpec("add", (1, 8, 14, 14)),
    OpSpec("globalavgpool", (1, 8, 14, 14)),
]
# Quick, with more retries: the servers share this machine's CPUs with the test itself.
PROTOCOL = TimingProtocol(
    warmup_ms=5.0,
    warmup_runs=1,
    min_repeat_ms=2.0,
    repeat=5,
    canary_repeat=2,
    canary_min_repeat_ms=2.0,
    max_retries=3,
    retry_backoff_s=0.05,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TrackerPool:
    """``python -m tvm.exec.rpc_tracker`` and its RPC servers, each in a process group of its own."""

    root: Path
    port: int = field(default_factory=_free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its popen_worker children go with it at teardown
            )
        self.procs.append(proc)
        return proc

    def spawn_server(self, name: str, key: str = KEY) -> subprocess.Popen:
        base = _free_port()
        return self._spawn(
            name,
            "tvm.exec.rpc_server",
            *("--tracker", self.address, "--key", key, "--host", "127.0.0.1"),
            *("--port", str(base), "--port-end", str(base + 100)),
        )

    def start(self, servers: int = 2) -> TrackerPool:
        port, end = str(self.port), str(self.port + 1)  # the end is excluded
        self._spawn(
            "tracker", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", port, "--port-end", end
        )
        self.wait_for(lambda: self.servers() is not None, "the tracker")  # servers retry only every 5 s
        for i in range(servers):
            self.spawn_server(f"server{i}")
        self.wait_for(lambda: len(self.servers() or []) == servers, "the servers")
        return self

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                logs = {p.name: p.read_text()[-500:] for p in self.root.glob("*.log")}
                self.stop()
                raise RuntimeError(f"{what} did not come up: {logs}")
            time.sleep(0.1)

    def servers(self, key: str = KEY) -> list[str] | None:
        """Addresses of the servers registered with ``key`` (None while the tracker starts)."""
        from tvm.rpc import base

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                base.recvall(sock, 4)
                base.sendjson(sock, [base.TrackerCode.SUMMARY])
                info = base.recvjson(sock)[1]
        except OSError:
            return None
        return [f"{s['addr'][0]}:{s['addr'][1]}" for s in info["server_info"] if s["key"] == f"server:{key}"]

    def server_logs(self) -> str:
        return "".join(p.read_text() for p in self.root.glob("server*.log"))

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        self.procs.clear()

    def inventory(self, name: str, key: str = KEY, tracker: str | None = None) -> str:
        return (
            f'[devices.{name}]\ntvm_tracker = "{tracker or self.address}"\ntvm_key = "{key}"\n'
            f'tvm_target = "{host_cpu_target()}"\n\n'
        )


def host_cpu_target() -> str:
    return f"llvm -mcpu={load_tvm().target.codegen.llvm_get_system_cpu()}"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    pool = TrackerPool(tmp_path_factory.mktemp("tvm-tracker")).start()
    yield pool
    pool.stop()


@pytest.fixture
def inventory(pool, tmp_path) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(
        pool.inventory("board")
        + pool.inventory("board2")
        + pool.inventory("nokey", key="no-such-key")
        + pool.inventory("nowhere", tracker=f"127.0.0.1:{_free_port()}")
        + pool.inventory("fragile", key="hwlat-fragile")
    )
    return path


# ----- the inventory ------------------------------------------------------------------------------
def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_a_tracker_device_needs_no_host_and_measures_with_tvm(tmp_path) -> None:
    devices = load_inventory(
        write(
            tmp_path,
            '[devices.pool]\ntvm_tracker = "10.0.0.5:9190"\ntvm_key = "rk3588"\n\n'
            '[devices.both]\nhost = "pi"\ntvm_tracker = "tracker.lan:9190"\ntvm_key = "pi4"\n',
        )
    )
    pool, both = devices["pool"], devices["both"]
    assert pool.host is None and not pool.is_local and pool.uses_tracker
    assert pool.backends == ("tvm",) and pool.tracker_address() == ("10.0.0.5", 9190)
    assert both.backends == ("ort", "tvm") and both.tracker_address() == ("tracker.lan", 9190)
    with pytest.raises(DeviceError, match="reached only through TVM's RPC tracker 10.0.0.5:9190"):
        connect(pool)


@pytest.mark.parametrize(
    "lines, line, expected",
    [
        ('tvm_tracker = "10.0.0.5:9190"', 3, "devices.pi.tvm_tracker: needs tvm_key too"),
        ('tvm_key = "rk3588"', 3, "devices.pi.tvm_key: needs tvm_tracker too"),
        ('tvm_tracker = "10.0.0.5"\ntvm_key = "k"', 3, "'10.0.0.5' is not \"host:port\""),
        ('tvm_tracker = "10.0.0.5:99999"\ntvm_key = "k"', 3, 'is not "host:port"'),
        ('tvm_tracker = "t:9190"\ntvm_key = "a:b"', 4, "'a:b' must be one word without ':'"),
        ('tvm_tracker = "t:9190"\ntvm_key = 5', 4, "tvm_key = 5 has the wrong type; it must be the key"),
    ],
)
def test_tracker_keys_are_checked_with_the_line(tmp_path, lines, line, expected) -> None:
    path = write(tmp_path, f'[devices.pi]\nhost = "pi"\n{lines}\n')
    with pytest.raises(InventoryError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(expected)):
        load_inventory(path)


def test_ort_without_host_and_a_tracker_for_local_are_refused(tmp_path) -> None:
    path = write(tmp_path, '[devices.pool]\ntvm_tracker = "t:1"\ntvm_key = "k"\nbackends = ["ort", "tvm"]\n')
    with pytest.raises(InventoryError, match=re.escape(f'{path}:4: devices.pool.backends: "ort" needs host')):
        load_inventory(path)
    path = write(tmp_path, '[devices.local]\ntvm_tracker = "t:1"\ntvm_key = "k"\n')
    with pytest.raises(InventoryError, match="'local' is this machine and takes no tvm_tracker"):
        load_inventory(path)
    path = write(tmp_path, "[devices.pi]\nthreads = 2\n")
    with pytest.raises(InventoryError, match='needs host = "..." .* or tvm_tracker = "host:port"'):
        load_inventory(path)


# ----- hwlat devices check ------------------------------------------------------------------------
def test_devices_check_asks_the_tracker(pool, inventory, capsys) -> None:
    assert hwlat_cli.main(["devices", "check", "board", "--inventory", str(inventory), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["servers"] == 2 and report["free"] == 2
    assert report["rpc_server"] in pool.servers() and report["tvm_threads"] == 1
    assert report["arch"] and report["llvm_cpu"] == load_tvm().target.codegen.llvm_get_system_cpu()

    assert hwlat_cli.main(["devices", "check", "nokey", "--inventory", str(inventory)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no RPC server is registered with key 'no-such-key'" in err and f"registered keys: {KEY}" in err
    assert "python -m tvm.exec.rpc_server --tracker" in err

    assert hwlat_cli.main(["devices", "check", "nowhere", "--inventory", str(inventory)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be reached (Connection refused)" in err


# ----- measuring ----------------------------------------------------------------------------------
def test_a_campaign_through_the_tracker_stores_clean_rows(pool, inventory, tmp_path) -> None:
    device = load_inventory(inventory)["board"]
    backend = TvmUntunedBackend(device)
    for spec in OPS:  # compiled first: the servers share this machine's CPUs with the compiler
        backend.artifact(spec)
    with Store(tmp_path / "m.db") as store:
        report = Campaign(device, backend, store, PROTOCOL, show_progress=False).run(OPS)
        assert (report.measured, report.failed) == (3, 0), report.failures
        for _ in range(3):  # this machine is shared: a re-run measures what was disturbed again
            if not Campaign(device, backend, store, PROTOCOL, show_progress=False).run(OPS).measured:
                break
        rows = {spec.op: store.get("board", "tvm-untuned", spec.key) for spec in OPS}
    for row in rows.values():
        assert row.clean, row.disturbance
        assert len(row.samples_ms) == PROTOCOL.repeat and row.number >= 1
        assert row.number * row.median_ms >= PROTOCOL.min_repeat_ms * 0.5  # a repeat lasted min_repeat_ms
        assert 0.5 < row.canary_ratio <= 1 + PROTOCOL.canary_tolerance
        assert row.backend_version == load_tvm().__version__
        assert row.settings["threads"] == 1 and row.host["rpc_server"] in pool.servers()
        assert row.host["tvm_key"] == KEY
    assert 0 < rows["add"].median_ms < rows["conv"].median_ms < 50


def test_a_quiet_canary_reference_flags_the_rows_disturbed(inventory, tmp_path) -> None:
    device = load_inventory(inventory)["board"]
    spec = OPS[1]
    with Store(tmp_path / "m.db") as store:
        store.update_canary_reference("board", "tvm-untuned", device.settings(), 1e-6)
        report = Campaign(device, "tvm-untuned", store, PROTOCOL, show_progress=False).run([spec])
        row = store.get("board", "tvm-untuned", spec.key)
    assert report.disturbed == 1 and row.ok and row.disturbed
    assert "canary ran" in row.disturbance and row.attempts == PROTOCOL.max_retries + 1


def test_hwlat_measure_times_a_whole_model_through_the_tracker(inventory, tmp_path, capsys) -> None:
    model = tmp_path / "conv.onnx"
    onnx.save(build_model(OpSpec("conv", (1, 8, 16, 16), out_channels=8, kernel=3, padding=1)), model)
    argv = ["measure", str(model), "--device", "board", "--inventory", str(inventory)]
    argv += ["--backend", "tvm-untuned", "--quick", "--json", "--db", str(tmp_path / "m.db")]
    assert hwlat_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latency_ms"] > 0 and result["threads"] == 1
    assert result["peak_rss_mb"] is None  # TVM's RPC has no call for memory


def test_two_campaigns_at_once_get_the_two_servers(pool, inventory, tmp_path, monkeypatch, capsys) -> None:
    together = threading.Barrier(2, timeout=60)  # both hold a server at once, or the test fails
    request = TrackerLink.request

    def request_and_wait(self, stop=None):
        got = request(self, stop)
        together.wait()
        return got

    monkeypatch.setattr(TrackerLink, "request", request_and_wait)
    ops = tmp_path / "ops.jsonl"
    write_jsonl(OPS[1:], ops)
    argv = ["profile", "--device", "board", "--device", "board2", "--inventory", str(inventory)]
    argv += ["--ops", str(ops), "--backend", "tvm-untuned", "--quick", "--db", str(tmp_path / "m.db")]
    assert hwlat_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "board/tvm-untuned: 2 measured" in out and "board2/tvm-untuned: 2 measured" in out
    with Store(tmp_path / "m.db") as store:
        rows = [m for m in store.measurements() if m.ok]
    assert len(rows) == 4
    servers = {m.device: m.host["rpc_server"] for m in rows}
    assert servers["board"] != servers["board2"] and set(servers.values()) == set(pool.servers())


def test_a_server_killed_mid_campaign_is_waited_for_and_every_op_stored_once(
    pool, inventory, tmp_path
) -> None:
    device = load_inventory(inventory)["fragile"]
    specs = [OpSpec("conv", (1, 8 + i, 14, 14), out_channels=8, kernel=3, padding=1) for i in range(8)]
    backend = TvmUntunedBackend(device)
    for spec in specs:
        backend.artifact(spec)
    server = pool.spawn_server("fragile", key="hwlat-fragile")
    pool.wait_for(lambda: len(pool.servers("hwlat-fragile") or []) == 1, "the fragile server")
    slow = TimingProtocol(**{**PROTOCOL.to_dict(), "min_repeat_ms": 100.0, "repeat": 3, "max_retries": 0})
    with Store(tmp_path / "m.db") as store:

        def kill_after_two_ops() -> None:
            pool.wait_for(lambda: len(store.measurements()) >= 2, "two measurements")
            pool.kill(server)
            pool.spawn_server("fragile", key="hwlat-fragile")

        killer = threading.Thread(target=kill_after_two_ops)
        killer.start()
        campaign = Campaign(device, backend, store, slow, show_progress=False, reconnect_timeout_s=120)
        report = campaign.run(specs)
        killer.join()
        rows = store.measurements()
    assert sorted(m.key for m in rows) == sorted(s.key for s in specs)  # each op stored once
    # The op in flight is measured again after the reconnect, or (if the tracker still listed
    # the dead server for a moment) stored as failed like an op whose agent died.
    assert report.measured + report.failed == 8 and report.failed <= 1
    assert report.reconnects >= 1 or report.failed == 1


# ----- tuning -------------------------------------------------------------------------------------
def test_tuning_times_candidates_on_servers_from_the_tracker(pool, inventory) -> None:
    device = load_inventory(inventory)["board"]
    spec = OpSpec("conv", (1, 16, 14, 14), out_channels=24, kernel=3, padding=1, activation="relu6")
    backend = TvmBackend(device, tune_trials=2)
    library = backend.artifact(spec)
    record = backend.records[spec.key]
    assert library.exists() and (record.tasks, record.tuned_tasks) == (1, 1), record.error
    assert "candidate.so" in pool.server_logs()  # the servers loaded the candidates

    nokey = load_inventory(inventory)["nokey"]
    with pytest.raises(DeviceError, match="no RPC server is registered with key 'no-such-key'"):
        TvmBackend(nokey, tune_trials=2).artifact(OpSpec("add", (1, 4, 5, 5)))
