"""Host keys of SSH devices: verified against known_hosts, or recorded on explicit opt-in.

An unknown host is refused with the exact command that trusts it; a changed key is
refused with the command that forgets the old one. Trust-on-first-use appends the
key to the device's known_hosts file the way ``ssh`` does (the file is never rewritten).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shlex
from pathlib import Path

import paramiko

from hwlat.devices.connection import DeviceError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"

log = logging.getLogger(__name__)


class HostKeyUnknown(DeviceError):
    """The device's host key is in no known_hosts file and trust_on_first_use is off."""


class HostKeyChanged(DeviceError):
    """The device offers another host key than the one recorded for it."""


def host_entry(host: str, port: int) -> str:
    """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def trust_command(host: str, port: int, known_hosts: Path) -> str:
    port_arg = f"-p {port} " if port != 22 else ""
    return f"ssh-keyscan {port_arg}{shlex.quote(host)} >> {shlex.quote(str(known_hosts))}"


def forget_command(host: str, port: int, known_hosts: Path) -> str:
    return f"ssh-keygen -R {shlex.quote(host_entry(host, port))} -f {shlex.quote(str(known_hosts))}"


def load_known_hosts(client: paramiko.SSHClient, known_hosts: Path) -> None:
    """System-wide keys plus the device's own file (either may be missing)."""
    if Path(SYSTEM_KNOWN_HOSTS).is_file():
        client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)
    if known_hosts.is_file():
        client.load_host_keys(str(known_hosts))


def record(known_hosts: Path, entry: str, key: paramiko.PKey) -> None:
    """Append one line, creating ~/.ssh (0700) and the file (0600) if needed."""
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(f"{entry} {key.get_name()} {key.get_base64()}\n")


class VerifyPolicy(paramiko.MissingHostKeyPolicy):
    """What to do with a host whose key no known_hosts file holds."""

    def __init__(self, device: str, host: str, port: int, known_hosts: Path, trust_on_first_use: bool):
        self.device, self.host, self.port = device, host, port
        self.known_hosts = known_hosts
        self.trust_on_first_use = trust_on_first_use

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.trust_on_first_use:
            raise HostKeyUnknown(
                f"device {self.device!r}: host key of {hostname} ({key.get_name()} {fingerprint(key)}) "
                f"is not in {self.known_hosts}; if that fingerprint is the device's, trust it with: "
                f"{trust_command(self.host, self.port, self.known_hosts)} "
                "(or set trust_on_first_use = true for this device)"
            )
        record(self.known_hosts, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "device %r: trusted %s on first use (%s %s), recorded in %s",
            self.device,
            hostname,
            key.get_name(),
            fingerprint(key),
            self.known_hosts,
        )


def changed(
    device: str, host: str, port: int, known_hosts: Path, exc: paramiko.BadHostKeyException
) -> HostKeyChanged:
    return HostKeyChanged(
        f"device {device!r}: host key of {host_entry(host, port)} changed (known: "
        f"{fingerprint(exc.expected_key)}, offered now: {exc.key.get_name()} {fingerprint(exc.key)}); "
        "someone may be intercepting the connection. If the device was reinstalled, forget the old "
        f"key with: {forget_command(host, port, known_hosts)} and connect again"
    )
