"""SshConnection and `hwlat devices check` against real private sshd instances on loopback."""

from __future__ import annotations

import hashlib
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnxruntime
import psutil
import pytest

from hwlat import cli as hwlat_cli
from hwlat.devices.connection import ConnectionLost, PythonMissing
from hwlat.devices.device import Device
from hwlat.devices.known_hosts import HostKeyChanged, HostKeyUnknown
from hwlat.devices.ssh import (
    AuthenticationFailed,
    ConnectionRefused,
    ConnectTimeout,
    HostUnresolved,
    SshConnection,
)
from hwlat.profiler.check import check_device


@pytest.fixture(autouse=True)
def _no_ssh_agent(monkeypatch):
    """Only the keys a test names may log in."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def check_cli(tmp_path: Path, inventory: str, name: str, capsys) -> tuple[int, str, str]:
    path = tmp_path / "devices.toml"
    path.write_text(inventory)
    status = hwlat_cli.main(["devices", "check", name, "--inventory", str(path)])
    out, err = capsys.readouterr()
    return status, out, err


# ----- devices check: the must-show -----------------------------------------
def test_devices_check_reports_the_remote_runtime_versions(sshd_a, tmp_path, capsys) -> None:
    status, out, err = check_cli(tmp_path, sshd_a.inventory("pi"), "pi", capsys)
    assert status == 0, err
    facts = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert facts["onnxruntime"] == onnxruntime.__version__
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["connection"] == f"ssh {sshd_a.device().user}@127.0.0.1:{sshd_a.port}"
    for key in ("os", "arch", "cpu_model", "cores", "governor", "numpy", "tvm", "disk_free_gb"):
        assert key in facts
    assert float(facts["disk_free_gb"]) > 0
    # int8 on the device: the reference conv timed, the QDQ probe pushed and profiled there
    assert float(facts["int8_over_fp32_speedup"]) > 0
    assert "'uint8': True" in facts["qdq_branching_fused"]


def test_devices_check_with_a_wrong_key_fails_with_one_line(sshd_a, sshd_b, tmp_path, capsys) -> None:
    inventory = sshd_a.inventory("pi", identity_file=str(sshd_b.user_key))
    status, out, err = check_cli(tmp_path, inventory, "pi", capsys)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "authentication failed for" in err and "identity_file" in err


def test_an_unknown_host_is_refused_with_the_command_that_trusts_it(sshd_a, tmp_path, capsys) -> None:
    known = tmp_path / "known_hosts"
    status, _, err = check_cli(tmp_path, sshd_a.inventory("pi", known_hosts=str(known)), "pi", capsys)
    assert status == 1 and err.count("\n") == 1 and "is not in" in err
    command = err.split("trust it with: ")[1].split(" (or set")[0]
    assert command == f"ssh-keyscan -p {sshd_a.port} 127.0.0.1 >> {shlex.quote(str(known))}"
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=30)
    SshConnection(sshd_a.device(known_hosts=str(known))).close()  # the printed command was enough


def test_trust_on_first_use_records_the_key(sshd_a, tmp_path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    SshConnection(sshd_a.device(known_hosts=str(known), trust_on_first_use=True)).close()
    assert known.read_text() == sshd_a.known_hosts_line()
    assert known.stat().st_mode & 0o777 == 0o600
    SshConnection(sshd_a.device(known_hosts=str(known))).close()  # now known without opting in


def test_a_changed_host_key_is_refused_even_with_trust_on_first_use(sshd_a, sshd_b, tmp_path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd_b.known_hosts_line().replace(f":{sshd_b.port} ", f":{sshd_a.port} "))
    with pytest.raises(HostKeyChanged, match=r"changed .* ssh-keygen -R '\[127.0.0.1\]:\d+' -f"):
        SshConnection(sshd_a.device(known_hosts=str(known), trust_on_first_use=True))


def test_wrong_python_is_diagnosed(sshd_a) -> None:
    report = check_device(sshd_a.device(python="/opt/no/python3"))
    assert not report["ok"] and report["error"] == "PythonMissing"
    assert "cannot run /opt/no/python3: not found; set 'python'" in report["diagnosis"]


def test_a_python_without_numpy_is_runtime_missing(sshd_a) -> None:
    bare = next(
        (
            p
            for p in ("/usr/bin/python3", "/usr/local/bin/python3")
            if Path(p).exists() and subprocess.run([p, "-c", "import numpy"], capture_output=True).returncode
        ),
        None,
    )
    if bare is None:
        pytest.skip("no Python without numpy on this machine")
    report = check_device(sshd_a.device(python=bare))
    assert report["error"] == "RuntimeMissing"
    assert f"cannot import 'numpy' with {bare}; install it there" in report["diagnosis"]


def test_connection_failures_have_their_own_types(sshd_a, tmp_path) -> None:
    closed_port = _free_port()
    with pytest.raises(ConnectionRefused, match="connection refused by 127.0.0.1"):
        SshConnection(sshd_a.device(port=closed_port))
    assert issubclass(ConnectionRefused, ConnectionLost)  # a campaign retries these
    with pytest.raises(HostUnresolved, match="does not resolve"):
        SshConnection(sshd_a.device(host="no-such-host.invalid"))
    with pytest.raises(AuthenticationFailed):
        SshConnection(sshd_a.device(user="nobody-here"))
    with pytest.raises(HostKeyUnknown):
        SshConnection(sshd_a.device(known_hosts=str(tmp_path / "empty")))
    with _silent_server() as port, pytest.raises(ConnectTimeout, match="did not answer within 1 s"):
        SshConnection(sshd_a.device(port=port, connect_timeout_s=1.0))


# ----- commands and files ---------------------------------------------------
def test_arguments_reach_the_device_verbatim(sshd_a, tmp_path) -> None:
    canary = tmp_path / "pwned"
    nasty = ["a b", f"$(touch {canary})", f"`touch {canary}`", "it's;", "*", "~", "-n", "\\x"]
    with SshConnection(sshd_a.device()) as conn:
        status, out, _ = conn.run([sys.executable, "-c", "import sys; print(sys.argv[1:])", *nasty])
        assert status == 0 and out.strip() == repr(nasty[:5] + [conn._expand_home("~")] + nasty[6:])
        status, _, err = conn.run(["/no/such/tool", "x"])
        assert status == 127 and "not found" in err
        with pytest.raises(PythonMissing):
            conn.start(["/no/such/python"])
    assert not canary.exists()


def test_stage_names_files_by_content_and_skips_what_is_there(sshd_a, tmp_path) -> None:
    one, same, other = tmp_path / "one.onnx", tmp_path / "same.onnx", tmp_path / "other.onnx"
    one.write_bytes(b"model one")
    same.write_bytes(b"model one")
    other.write_bytes(b"model two")
    device = sshd_a.device(workdir=str(tmp_path / "fresh" / "deep" / "work"))
    with SshConnection(device) as conn:
        a, b, c = conn.stage([one, same, other], timeout_s=30)
    assert a == b != c
    assert Path(a).name == hashlib.sha256(b"model one").hexdigest()[:32] + ".onnx"
    assert Path(a).read_bytes() == b"model one" and Path(c).read_bytes() == b"model two"
    before = Path(a).stat().st_mtime_ns
    with SshConnection(device) as conn:  # a new connection finds the files already there
        assert conn.stage([one, other]) == [a, c]
    assert Path(a).stat().st_mtime_ns == before
    assert not list(Path(a).parent.glob("*.part"))


def test_a_batch_that_outlives_its_timeout_is_a_lost_connection(sshd_a, tmp_path) -> None:
    late = tmp_path / "late.onnx"
    late.write_bytes(b"x" * 1000)
    with SshConnection(sshd_a.device()) as conn:
        conn.stage([])  # the workdir exists; now only the upload is timed
        with pytest.raises(ConnectionLost, match="longer than its timeout"):
            conn.stage([late], timeout_s=1e-9)
        assert conn.stage([late], timeout_s=30)  # the campaign reconnects and tries again


def test_a_started_process_talks_lines_and_is_stopped(sshd_a) -> None:
    marker = f"hwlat-test-{time.monotonic_ns()}"
    script = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
    with SshConnection(sshd_a.device()) as conn:
        process = conn.start([sys.executable, "-u", "-c", script, marker])
        process.write_line("hello")
        assert process.read_line(30) == "HELLO"
        assert _processes_with(marker)
        process.kill()
        assert process.read_line(10) is None
        assert conn.is_alive()
    assert _wait_until(lambda: not _processes_with(marker))


def test_a_process_whose_link_breaks_during_the_kill_is_killed_quietly(sshd_a, monkeypatch) -> None:
    # Ctrl-C can reach the kill while the link is going down: paramiko then raises EOFError
    # from channel.close() (CI once failed so). Break sending at that point: the kill must
    # not raise, and closing the connection then ends the process.
    marker = f"hwlat-test-{time.monotonic_ns()}"
    conn = SshConnection(sshd_a.device())
    process = conn.start([sys.executable, "-u", "-c", "import sys; sys.stdin.read()", marker])
    assert _wait_until(lambda: _processes_with(marker))
    transport = conn._client.get_transport()

    def link_gone(message) -> None:
        raise EOFError  # what paramiko's packetizer raises once the socket is dead

    monkeypatch.setattr(transport, "_send_user_message", link_gone)
    process.kill()
    conn.close()
    assert _wait_until(lambda: not _processes_with(marker))


def test_an_ssh_config_alias_is_followed(sshd_a, tmp_path) -> None:
    config = tmp_path / "ssh_config"
    d = sshd_a.device()
    config.write_text(
        f"Host board\n  HostName 127.0.0.1\n  Port {d.port}\n  User {d.user}\n"
        f"  IdentityFile {d.identity_file}\n  UserKnownHostsFile {d.known_hosts}\n"
    )
    alias = Device(name="board", host="board", python=sys.executable)
    with SshConnection(alias, ssh_config=config) as conn:
        assert (conn.target.hostname, conn.target.port) == ("127.0.0.1", d.port)
        assert conn.run(["true"])[0] == 0


def test_a_killed_sshd_is_noticed(sshd_factory) -> None:
    server = sshd_factory("sshd-drop")
    conn = SshConnection(server.device())
    assert conn.is_alive()
    server.kill()
    assert _wait_until(lambda: not conn.is_alive())
    with pytest.raises(ConnectionLost):
        conn.run(["true"])
    conn.close()
    with pytest.raises(ConnectionRefused):
        SshConnection(server.device())
    server.start()
    SshConnection(server.device()).close()


# ----- helpers --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _silent_server:
    """Accepts TCP connections and never says anything (a hung device)."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()
        return self.sock.getsockname()[1]

    def _accept(self) -> None:
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:
            pass

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for s in self.held:
            s.close()


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def _wait_until(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
