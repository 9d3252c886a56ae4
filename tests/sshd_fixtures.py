"""Private OpenSSH servers on loopback, for the SSH tests and benchmarks/bench_ssh.py.

Each ``PrivateSshd`` has its own throwaway host key, user key, authorized_keys, config
and port, and logs in as the user running the tests (root here and in CI), so the
remote agent can use this very Python. Nothing outside its folder is touched except
``/run/sshd``, the privilege-separation folder sshd insists on when run as root.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hwlat.devices.device import Device

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
MaxStartups 50
MaxSessions 50
Subsystem sftp internal-sftp
"""


def sshd_available() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateSshd:
    """One sshd on 127.0.0.1:<port>; ``kill()`` and ``start()`` again keep port and keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = root / "host_ed25519"
        self.user_key = root / "user_ed25519"
        _keygen(self.host_key)
        _keygen(self.user_key)
        shutil.copy(self.user_key.with_suffix(".pub"), root / "authorized_keys")
        self.port = _free_port()
        self.config = root / "sshd_config"
        self.config.write_text(_CONFIG.format(port=self.port, root=root))
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line())
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def known_hosts_line(self) -> str:
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def start(self, timeout_s: float = 15.0) -> PrivateSshd:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while "Server listening" not in self.log.read_bytes()[offset:].decode(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_bytes()[offset:].decode(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"sshd did not start on port {self.port}: {tail}")
            time.sleep(0.02)
        return self

    def _session_processes(self) -> list[psutil.Process]:
        """The listener's per-connection sshd children (not the users' commands under them)."""
        if self.proc is None:
            return []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for child in children:
            try:
                if child.name() == "sshd":
                    found.append(child)
            except psutil.NoSuchProcess:
                pass  # ended while we looked
        return found

    def kill(self) -> None:
        """SIGKILL sshd and its sessions: to the client this is a dropped link."""
        if self.proc is None:
            return
        sessions = self._session_processes()
        self.proc.kill()
        for p in sessions:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        self.kill()

    def device(self, name: str = "sshdev", **overrides) -> Device:
        fields = dict(
            host="127.0.0.1",
            port=self.port,
            user=getpass.getuser(),
            identity_file=str(self.user_key),
            python=sys.executable,
            workdir=str(self.root / "work"),
            known_hosts=str(self.known_hosts),
            backends=("ort",),
            connect_timeout_s=10.0,
        )
        return Device(name=name, **{**fields, **overrides})

    def inventory(self, name: str = "sshdev", **overrides) -> str:
        """A [devices.NAME] table for this server, as a user would write it."""
        d = self.device(name, **overrides)
        lines = [
            f"[devices.{name}]",
            f'host = "{d.host}"',
            f"port = {d.port}",
            f'user = "{d.user}"',
            f'identity_file = "{d.identity_file}"',
            f'python = "{d.python}"',
            f'workdir = "{d.workdir}"',
            f'known_hosts = "{d.known_hosts}"',
            f"backends = {list(d.backends)!r}".replace("'", '"'),
            f"threads = {d.threads}",
            f"connect_timeout_s = {d.connect_timeout_s}",
        ]
        if d.cpu_affinity:
            lines.append(f"cpu_affinity = {list(d.cpu_affinity)}")
        if d.labels:
            lines.append(f"labels = {list(d.labels)!r}".replace("'", '"'))
        if d.trust_on_first_use:
            lines.append("trust_on_first_use = true")
        return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory):
    """``make(name)`` starts a private sshd; all are stopped at the end of the session."""
    if not sshd_available():
        pytest.skip(f"OpenSSH server not installed ({SSHD} missing); apt-get install openssh-server")
    servers: list[PrivateSshd] = []

    def make(name: str = "sshd") -> PrivateSshd:
        server = PrivateSshd(tmp_path_factory.mktemp(name)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sshd_a(sshd_factory) -> PrivateSshd:
    return sshd_factory("sshd-a")


@pytest.fixture(scope="session")
def sshd_b(sshd_factory) -> PrivateSshd:
    return sshd_factory("sshd-b")
