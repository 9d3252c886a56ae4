"""Connection: run a process on a device and move files to it.

Two kinds, like TVM's runners: ``LocalConnection`` (a subprocess on this machine)
and ``SshConnection`` (devices/ssh.py). Both hand back a ``RemoteProcess`` that
exchanges text lines, which is all the measuring agent needs.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import IO

from hwlat.devices.device import Device
from hwlat.errors import HwlatError


class DeviceError(HwlatError):
    """A device cannot be used; the message names the cause and the command that diagnoses it."""


class ConnectionLost(DeviceError):
    """The link to the device dropped or was refused; reconnecting may help."""


class PythonMissing(DeviceError):
    """The device's configured interpreter does not exist there."""


class RuntimeMissing(DeviceError):
    """The device's Python lacks numpy or the runtime a backend needs."""


class ProcessKilledError(DeviceError):
    """A process ended by a signal while it started (the OOM killer, a kill): a passing fault."""


class RemoteProcess:
    """A running process with line-based stdin/stdout and a bounded stderr tail.

    Lines are read on a background thread so that ``read_line`` can time out,
    which is how per-op timeouts are enforced for local and SSH devices alike.
    """

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes] | None, kill) -> None:
        self._stdin = stdin
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=40)
        self._kill = kill
        threading.Thread(target=self._pump, args=(stdout, self._lines.put, True), daemon=True).start()
        if stderr is not None:
            threading.Thread(
                target=self._pump, args=(stderr, self._stderr.append, False), daemon=True
            ).start()

    @staticmethod
    def _pump(stream: IO[bytes], sink, mark_eof: bool) -> None:
        try:
            for raw in iter(stream.readline, b""):
                sink(raw.decode("utf-8", "replace").rstrip("\n"))
        except (OSError, ValueError, EOFError):
            pass
        finally:
            if mark_eof:
                sink(None)

    def write_line(self, line: str) -> None:
        try:
            self._stdin.write((line + "\n").encode())
            self._stdin.flush()
        except (OSError, ValueError, EOFError) as exc:
            raise ConnectionLost(f"cannot write to the agent: {exc}") from None

    def read_line(self, timeout_s: float) -> str | None:
        """The next stdout line; None once the process has closed stdout. Raises TimeoutError."""
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no answer within {timeout_s:.0f} s") from None

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def kill(self) -> None:
        self._kill()


class Connection(ABC):
    """How the host reaches one device."""

    def __init__(self, device: Device) -> None:
        self.device = device

    @abstractmethod
    def start(self, argv: list[str]) -> RemoteProcess:
        """Start ``argv`` on the device (no shell; arguments are passed as they are)."""

    @abstractmethod
    def stage(self, paths: list[Path], timeout_s: float | None = None) -> list[str]:
        """Make local files available on the device; return their device-side paths.

        ``timeout_s`` bounds the whole batch: a stalled upload raises ConnectionLost.
        """

    @abstractmethod
    def run(self, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str, str]:
        """Run a short command to completion: (exit status, stdout, stderr)."""

    def is_alive(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027  (nothing to release for a local device)
        """Release the link (idempotent)."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalConnection(Connection):
    """Runs processes on this machine; files are already where they are."""

    def start(self, argv: list[str]) -> RemoteProcess:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise PythonMissing(
                f"device {self.device.name!r}: cannot run {argv[0]!r}: not found; set "
                "'python' for this device to an interpreter that exists"
            ) from None

        def kill() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

        return RemoteProcess(proc.stdin, proc.stdout, proc.stderr, kill)

    def stage(self, paths: list[Path], timeout_s: float | None = None) -> list[str]:
        return [str(Path(p).resolve()) for p in paths]

    def run(self, argv: list[str], timeout_s: float = 60.0) -> tuple[int, str, str]:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            return 127, "", f"{argv[0]}: not found"  # what a shell reports, as over SSH
        return proc.returncode, proc.stdout, proc.stderr


def connect(device: Device) -> Connection:
    """Open the right kind of connection for a device."""
    if device.is_local:
        return LocalConnection(device)
    if device.host is None:
        raise DeviceError(
            f"device {device.name!r} is reached only through TVM's RPC tracker {device.tvm_tracker}, "
            'so nothing runs on it over SSH; measure it with a TVM backend, or give it host = "..."'
        )
    from hwlat.devices.ssh import SshConnection

    return SshConnection(device)
