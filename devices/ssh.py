"""SshConnection: a device reached over SSH with paramiko.

One SSH connection serves a whole campaign: processes run on exec channels, files
travel over one SFTP session. Files are stored on the device under
``<workdir>/files/<sha256 prefix><suffix>``, so a file already there (from this run
or an earlier one) is never sent again.

Every remote command is ``argv`` with each argument shell-quoted, wrapped in a tiny
``/bin/sh`` script that reports a missing program (exit 127) and the process id, so the
process can be stopped later even if its channel hangs.

Connection failures become one-line DeviceErrors; those that a retry may fix
(refused, timed out, dropped) are ConnectionLost.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import paramiko

from hwlat.devices.connection import (
    Connection,
    ConnectionLost,
    DeviceError,
    ProcessKilledError,
    PythonMissing,
    RemoteProcess,
)
from hwlat.devices.device import Device
from hwlat.devices.known_hosts import DEFAULT_KNOWN_HOSTS, VerifyPolicy, changed, load_known_hosts
from hwlat.devices.port_forward import PortForward

SSH_CONFIG = "~/.ssh/config"
PROBE_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
# $1 is the program; it must exist. Prints "hwlat-pid N" (N is the process that then
# becomes the program through exec) when asked to.
_WRAPPER = (
    'command -v "$1" >/dev/null 2>&1 || {{ echo "cannot run $1: not found" >&2; exit 127; }}; {pid}exec "$@"'
)
_PID_LINE = b"hwlat-pid "

log = logging.getLogger(__name__)


class HostUnresolved(DeviceError):
    """The device's host name does not resolve."""


class ConnectionRefused(ConnectionLost):
    """Nothing listens on the device's SSH port (down, rebooting, or wrong port)."""


class ConnectTimeout(ConnectionLost):
    """The device did not answer in time."""


class AuthenticationFailed(DeviceError):
    """The device refused every key offered."""


@dataclass(frozen=True)
class SshTarget:
    """Where to connect, after applying the ~/.ssh/config alias (inventory values win)."""

    hostname: str
    port: int
    user: str
    identity_files: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    known_hosts: Path = Path(DEFAULT_KNOWN_HOSTS).expanduser()

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve_target(device: Device, ssh_config: str | Path | None = SSH_CONFIG) -> SshTarget:
    cfg: dict = {}
    path = Path(ssh_config).expanduser() if ssh_config else None
    if path is not None and path.is_file():
        try:
            cfg = paramiko.SSHConfig.from_path(str(path)).lookup(device.host)
        except Exception as exc:  # paramiko raises several types for a bad config line
            raise DeviceError(
                f"device {device.name!r}: cannot read {path}: {exc}; fix that file "
                "or give host/port/user in the inventory"
            ) from None
    proxy = cfg.get("proxycommand")
    known = device.known_hosts or (cfg.get("userknownhostsfile", "").split() or [DEFAULT_KNOWN_HOSTS])[0]
    identities = [device.identity_file] if device.identity_file else cfg.get("identityfile", [])
    return SshTarget(
        hostname=cfg.get("hostname", device.host),
        port=device.port or int(cfg.get("port", 22)),
        user=device.user or cfg.get("user") or getpass.getuser(),
        identity_files=[str(Path(p).expanduser()) for p in identities],
        proxy_command=None if not proxy or proxy.lower() == "none" else proxy,
        known_hosts=Path(known).expanduser(),
    )


class SshConnection(Connection):
    """An open SSH connection to one device (connects in the constructor)."""

    def __init__(self, device: Device, ssh_config: str | Path | None = SSH_CONFIG) -> None:
        super().__init__(device)
        self.target = resolve_target(device, ssh_config)
        self._client = self._connect()
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._files_dir: str | None = None
        self._present: set[str] = set()

    # ----- connecting ---------------------------------------------------------
    def _connect(self) -> paramiko.SSHClient:
        t, name = self.target, self.device.name
        client = paramiko.SSHClient()
        load_known_hosts(client, t.known_hosts)
        client.set_missing_host_key_policy(
            VerifyPolicy(name, t.hostname, t.port, t.known_hosts, self.device.trust_on_first_use)
        )
        timeout = self.device.connect_timeout_s
        try:
            sock = paramiko.ProxyCommand(t.proxy_command) if t.proxy_command else None
            client.connect(
                t.hostname,
                t.port,
                username=t.user,
                key_filename=t.identity_files or None,
                look_for_keys=not t.identity_files,
                allow_agent=True,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                sock=sock,
            )
        except DeviceError:
            client.close()
            raise
        except Exception as exc:
            client.close()
            raise self._diagnose(exc) from None
        transport = client.get_transport()
        if isinstance(transport.sock, socket.socket):
            # Without it every exec round trip waits ~40 ms for delayed ACKs.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_keepalive(KEEPALIVE_S)
        return client

    def _diagnose(self, exc: Exception) -> DeviceError:
        """One line naming the failure and what to do about it."""
        t, name = self.target, f"device {self.device.name!r}"
        where = f"{t.hostname}:{t.port}"
        if isinstance(exc, socket.gaierror):
            return HostUnresolved(
                f"{name}: host name {t.hostname!r} does not resolve ({exc.strerror}); "
                "fix 'host' in the inventory (or HostName in ~/.ssh/config)"
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            return changed(self.device.name, t.hostname, t.port, t.known_hosts, exc)
        if isinstance(exc, paramiko.PasswordRequiredException):
            return AuthenticationFailed(
                f"{name}: the key {', '.join(t.identity_files)} is encrypted; "
                "load it into ssh-agent (ssh-add KEY) and try again"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            keys = ", ".join(t.identity_files) or "ssh-agent and ~/.ssh/id_* keys"
            return AuthenticationFailed(
                f"{name}: authentication failed for {t.user}@{where} with {keys}; set 'user' and "
                f"'identity_file' in the inventory, or install the public key on the device: "
                f"ssh-copy-id -i KEY.pub -p {t.port} {shlex.quote(t.user)}@{shlex.quote(t.hostname)}"
            )
        if isinstance(exc, FileNotFoundError):
            return DeviceError(
                f"{name}: identity file {exc.filename or exc} does not exist; fix "
                "'identity_file' in the inventory"
            )
        banner = "banner" in str(exc)  # paramiko's words when no SSH greeting came
        cause = exc.__context__ if banner else exc
        # ... or when the SSH handshake outlives the timeout
        if isinstance(cause, TimeoutError) or str(exc) == "No existing session":
            return ConnectTimeout(
                f"{name}: {where} did not answer within "
                f"{self.device.connect_timeout_s:g} s; is the device on and is "
                "the address right? (raise connect_timeout_s for slow links)"
            )
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError)
            and all(isinstance(e, ConnectionRefusedError) for e in exc.errors.values())
        ):
            return ConnectionRefused(
                f"{name}: connection refused by {where}; is sshd running there, and is 'port' right?"
            )
        if banner:  # something listens there, but it is not an SSH server that lets this host in
            return ConnectionLost(
                f"{name}: {where} closed the connection without an SSH greeting; is 'port' the SSH "
                "port, and does sshd there take connections from this machine (MaxStartups, tcpwrappers)?"
            )
        return ConnectionLost(
            f"{name}: SSH connection to {where} failed: {type(exc).__name__}: {exc}".strip()
        )

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"device {self.device.name!r}: the SSH connection to {self.target} dropped")
        return transport

    def _channel(self, command: str) -> paramiko.Channel:
        try:
            channel = self._transport().open_session(timeout=PROBE_TIMEOUT_S)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionLost(
                f"device {self.device.name!r}: cannot open an SSH channel to "
                f"{self.target} ({exc or type(exc).__name__})"
            ) from None
        return channel

    def is_alive(self) -> bool:
        """True if the connection still carries a new channel (an active probe, ~1 round trip)."""
        try:
            self._transport().open_session(timeout=PROBE_TIMEOUT_S).close()
            return True
        except (DeviceError, paramiko.SSHException, OSError, EOFError):
            return False

    def forward_port(self, remote_port: int, remote_host: str = "127.0.0.1") -> PortForward:
        """A port on this machine's loopback reaching ``remote_host:remote_port`` as the device
        sees it (like ``ssh -L``); ``close()`` it when done. Used for TVM's RPC server."""

        def open_channel(peer: tuple[str, int]) -> paramiko.Channel:
            return self._transport().open_channel(
                "direct-tcpip", (remote_host, remote_port), peer, timeout=PROBE_TIMEOUT_S
            )

        return PortForward(open_channel)

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._client.close()

    # ----- processes ----------------------------------------------------------
    def _command(self, argv: list[str], report_pid: bool) -> str:
        script = _WRAPPER.format(pid='echo "hwlat-pid $$"; ' if report_pid else "")
        args = [self._expand_home(a) for a in argv]
        return "exec /bin/sh -c " + " ".join(shlex.quote(a) for a in [script, "hwlat", *args])

    def _expand_home(self, arg: str) -> str:
        """``~/x`` -> ``<home>/x``: quoting keeps the remote shell from doing it."""
        if arg == "~" or arg.startswith("~/"):
            return self._home_dir() + arg[1:]
        return arg

    def start(self, argv: list[str]) -> RemoteProcess:
        channel = self._channel(self._command(argv, report_pid=True))
        stdin, stdout = channel.makefile_stdin("wb"), channel.makefile("rb")
        stderr = channel.makefile_stderr("rb")
        channel.settimeout(self.device.connect_timeout_s)
        try:
            first = stdout.readline()
        except (TimeoutError, OSError, EOFError):
            first = b""
        if not first.startswith(_PID_LINE):
            raise self._start_failure(channel, stderr, argv[0], first)
        channel.settimeout(None)
        pid = int(first[len(_PID_LINE) :])
        return RemoteProcess(stdin, stdout, stderr, lambda: self._stop(channel, pid))

    def _start_failure(self, channel: paramiko.Channel, stderr, program: str, first: bytes) -> DeviceError:
        channel.status_event.wait(PROBE_TIMEOUT_S)
        status = channel.exit_status if channel.exit_status_ready() else None
        try:
            err = stderr.read().decode("utf-8", "replace").strip().replace("\n", " | ")
        except (TimeoutError, OSError, EOFError):
            err = ""
        channel.close()
        name = f"device {self.device.name!r}"
        if status == 127:
            return PythonMissing(
                f"{name}: {err or f'cannot run {program!r}'}; set 'python' for this "
                "device to an interpreter that exists there, e.g. /usr/bin/python3"
            )
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return ConnectionLost(f"{name}: the connection dropped while starting {program!r}")
        if status == -1:  # paramiko's status for a process a signal ended
            return ProcessKilledError(f"{name}: {program!r} was killed while it started")
        return DeviceError(
            f"{name}: {program!r} did not start (exit status {status}): {err or first[:200]!r}"
        )

    def _stop(self, channel: paramiko.Channel, pid: int, grace_s: float = 1.0) -> None:
        """End a started process: give it ``grace_s`` to exit, then TERM its process group, then KILL."""
        try:
            for signal_name in ("TERM", "KILL"):
                if channel.status_event.wait(grace_s):
                    break
                self.run(
                    [
                        "/bin/sh",
                        "-c",
                        f'kill -s {signal_name} -- "-$1" 2>/dev/null || kill -{signal_name} "$1"',
                        "hwlat",
                        str(pid),
                    ],
                    timeout_s=PROBE_TIMEOUT_S,
                )
                grace_s = 3.0
        except (DeviceError, OSError, EOFError, paramiko.SSHException):
            pass  # the connection is gone: sshd ends the session and the process sees EOF
        finally:
            # Another thread (the campaign's worker, seeing its agent end) may close the
            # connection meanwhile; closing a channel on a dead transport raises EOFError.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()

    def run(self, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str, str]:
        channel = self._channel(self._command(argv, report_pid=False))
        channel.settimeout(timeout_s)
        try:
            with channel.makefile("rb") as out, channel.makefile_stderr("rb") as err:
                stdout, stderr = out.read(), err.read()
            if not channel.status_event.wait(timeout_s):
                raise TimeoutError
        except TimeoutError:
            raise TimeoutError(
                f"device {self.device.name!r}: {argv[0]} did not finish within {timeout_s:g} s"
            ) from None
        finally:
            channel.close()
        return channel.exit_status, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    # ----- files --------------------------------------------------------------
    def stage(self, paths: list[Path], timeout_s: float | None = None) -> list[str]:
        deadline = time.monotonic() + timeout_s if timeout_s else None
        files_dir = self._ensure_files_dir()
        staged = []
        for path in paths:
            name = remote_name(Path(path))
            if name not in self._present:
                self._upload(Path(path), f"{files_dir}/{name}", deadline)
                self._present.add(name)
            staged.append(f"{files_dir}/{name}")
        return staged

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._lost("cannot start SFTP", exc) from None
            if self._sftp is None:
                raise DeviceError(
                    f"device {self.device.name!r}: the SSH server offers no SFTP; "
                    "enable 'Subsystem sftp' in the device's sshd_config"
                )
        return self._sftp

    def _home_dir(self) -> str:
        if self._home is None:
            try:
                self._home = self._sftp_client().normalize(".")
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise self._lost("cannot find the home folder", exc) from None
        return self._home

    def _ensure_files_dir(self) -> str:
        """Create ``<workdir>/files`` (like mkdir -p) and learn which files it already holds."""
        if self._files_dir is not None:
            return self._files_dir
        sftp = self._sftp_client()
        workdir = self._expand_home(self.device.workdir or "~/.hwlat")
        path = PurePosixPath(workdir if workdir.startswith("/") else f"{self._home_dir()}/{workdir}")
        target = path / "files"
        try:
            try:
                self._present = set(sftp.listdir(str(target)))
            except FileNotFoundError:
                for part in [*reversed(target.parents[:-1]), target]:
                    try:
                        sftp.stat(str(part))
                    except FileNotFoundError:
                        sftp.mkdir(str(part))
                self._present = set()
        except PermissionError:
            raise DeviceError(
                f"device {self.device.name!r}: cannot create {target} as "
                f"{self.target.user} (permission denied); set 'workdir' to a "
                "writable folder"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._lost(f"cannot create {target}", exc, "set 'workdir' to a writable folder") from None
        self._files_dir = str(target)
        return self._files_dir

    def _upload(self, local: Path, remote: str, deadline: float | None) -> None:
        """Write to ``<name>.part`` and rename, so a dropped upload never looks complete."""
        sftp = self._sftp_client()
        partial = remote + ".part"
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ConnectionLost(
                f"device {self.device.name!r}: uploading the batch took longer than "
                "its timeout; the link is too slow or stalled"
            )
        sftp.get_channel().settimeout(remaining)
        try:
            with sftp.open(partial, "wb") as fh:
                fh.set_pipelined(True)
                fh.write(local.read_bytes())
            sftp.posix_rename(partial, remote)
        except TimeoutError:
            raise ConnectionLost(
                f"device {self.device.name!r}: upload of {local.name} stalled past the batch timeout"
            ) from None
        except PermissionError:
            raise DeviceError(
                f"device {self.device.name!r}: cannot write {remote} (permission "
                "denied); set 'workdir' to a writable folder"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise self._lost(f"upload of {local.name} failed", exc) from None
        finally:
            sftp.get_channel().settimeout(None)

    def _lost(self, what: str, exc: BaseException, fix: str = "") -> DeviceError:
        """ConnectionLost if the link is gone, else a DeviceError that says how to fix it."""
        message = f"device {self.device.name!r}: {what}: {exc or type(exc).__name__}"
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return ConnectionLost(message + " (the connection dropped)")
        return DeviceError(f"{message}; {fix}" if fix else message)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def remote_name(path: Path) -> str:
    """The file's name on the device: 32 hex digits of its sha256, then its suffix."""
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _DIGESTS:
        _DIGESTS[cache_key] = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    return _DIGESTS[cache_key] + path.suffix
