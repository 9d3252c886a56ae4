"""AgentSession: the host's side of the measuring agent's JSON-lines conversation."""

from __future__ import annotations

import json
from pathlib import Path

from hwlat.devices.connection import (
    Connection,
    ConnectionLost,
    DeviceError,
    ProcessKilledError,
    RemoteProcess,
    RuntimeMissing,
)
from hwlat.devices.device import Device

AGENT_FILE = Path(__file__).with_name("agent.py")
_PIP_NAMES = {"tvm": "apache-tvm"}  # import name -> what to pip install


class AgentCrashed(RuntimeError):
    """The agent process ended while working; the message holds its last stderr lines.

    ``killed``: it ended without a word (a signal: the OOM killer, a kill), which a missing
    module or a bad interpreter never does; starting it again may well work."""

    def __init__(self, message: str, killed: bool = False) -> None:
        super().__init__(message)
        self.killed = killed


class AgentTimeout(RuntimeError):
    """The agent did not answer in time."""


def agent_start_error(device: Device, exc: Exception) -> DeviceError:
    """Why the agent could not start, as a one-line DeviceError (RuntimeMissing for imports)."""
    message = str(exc)
    if "No module named" in message:
        module = message.split("No module named", 1)[1].split("|")[0].strip(" :'\"")
        return RuntimeMissing(
            f"device {device.name!r}: the agent cannot import {module!r} with "
            f"{device.python}; install it there ({device.python} -m pip install "
            f"{_PIP_NAMES.get(module, module)}) or set 'python' to an interpreter "
            "that has numpy and the runtime"
        )
    return DeviceError(
        f"device {device.name!r}: the agent did not start: {message}; run `hwlat devices check {device.name}`"
    )


class AgentSession:
    """One running agent on one device, configured for one backend.

    ``configure`` carries the device settings (threads, affinity), the timing protocol
    and the canary; the agent answers each ``measure`` with one result object.
    """

    def __init__(self, connection: Connection, config: dict, hello_timeout_s: float = 120.0) -> None:
        self.connection = connection
        self.config = config
        self.hello_timeout_s = hello_timeout_s
        self.process: RemoteProcess | None = None
        self.hello: dict = {}
        self.configured: dict = {}

    def start_hello(self) -> dict:
        """Upload and start the agent; return its hello (versions and host facts)."""
        device = self.connection.device
        (agent_path,) = self.connection.stage([AGENT_FILE])
        try:
            self.process = self.connection.start([device.python, "-u", agent_path])
        except ProcessKilledError as exc:  # as if it had died a moment later, after its hello
            raise AgentCrashed(f"agent process died while starting ({exc})", killed=True) from None
        self.hello = self._ask({"cmd": "hello"}, self.hello_timeout_s)
        if self.hello.get("type") != "hello":
            raise AgentCrashed(
                f"device {device.name!r}: the agent did not start: {self.hello.get('error_msg', self.hello)}"
            )
        return self.hello

    def start(self) -> AgentSession:
        """Start the agent and configure it for the backend, protocol and canary."""
        device = self.connection.device
        self.start_hello()
        config = dict(self.config)
        if config.get("canary_model"):
            (config["canary_model"],) = self.connection.stage([Path(config["canary_model"])])
        self.configured = self._ask({"cmd": "configure", **config}, self.hello_timeout_s)
        if self.configured.get("type") != "configured":
            raise AgentCrashed(
                f"device {device.name!r}: the agent refused its configuration: "
                f"{self.configured.get('error_msg')}"
            )
        return self

    def measure(self, key: str, artifact: Path, timeout_s: float, cmd: str = "measure") -> dict:
        (remote,) = self.connection.stage([artifact])
        return self._ask({"cmd": cmd, "key": key, "model": remote}, timeout_s)

    def kill(self) -> None:
        """From another thread (Ctrl-C): end the agent at once; its op in flight is lost."""
        process = self.process
        if process is not None:
            process.kill()

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self.process.write_line(json.dumps({"cmd": "exit"}))
        except ConnectionLost:
            pass
        self.process.kill()
        self.process = None

    def __enter__(self) -> AgentSession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _ask(self, message: dict, timeout_s: float) -> dict:
        assert self.process is not None, "start() the session first"
        self.process.write_line(json.dumps(message))
        try:
            line = self.process.read_line(timeout_s)
        except TimeoutError:
            raise AgentTimeout(f"agent gave no answer to {message['cmd']} within {timeout_s:.0f} s") from None
        if line is None:
            if not self.connection.is_alive():
                raise ConnectionLost(f"connection to {self.connection.device.name!r} dropped")
            tail = self.process.stderr_tail().strip().splitlines()[-5:]
            raise AgentCrashed(
                "agent process died"
                + (": " + " | ".join(tail) if tail else " without a message (killed or crashed)"),
                killed=not tail,
            )
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise AgentCrashed(f"agent printed something that is not JSON: {line[:200]!r}") from None
