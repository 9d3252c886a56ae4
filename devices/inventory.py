"""The device inventory: a TOML file with one ``[devices.NAME]`` table per device.

See ``devices.example.toml`` at the repository root for every key. The device
``local`` always exists and needs no entry (an entry named ``local`` overrides its
threads, affinity and backends). A device handed out by TVM's RPC tracker has
``tvm_tracker`` and ``tvm_key`` (both or neither) and needs no ``host``; without one
it measures only with the TVM backends (profiler/backends/tvm/tracker.py).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path

from hwlat.devices.device import BACKENDS, LOCAL, Device, local_device
from hwlat.errors import HwlatError

DEFAULT_INVENTORY = "devices.toml"
INVENTORY_ENV = "HWLAT_INVENTORY"

# key -> (accepted python types, description used in error messages)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "host": ((str,), "a host name, address or ~/.ssh/config alias"),
    "port": ((int,), "an integer port"),
    "user": ((str,), "a user name"),
    "identity_file": ((str,), "a path to a private key"),
    "python": ((str,), 'the interpreter on the device, e.g. "python3"'),
    "workdir": ((str,), "a folder on the device"),
    "backends": ((list,), f"a list drawn from {list(BACKENDS)}"),
    "threads": ((int,), "a positive integer"),
    "cpu_affinity": ((list,), "a list of CPU indices, e.g. [0]"),
    "tvm_target": ((str, dict), 'a TVM target, e.g. "llvm -mcpu=cortex-a72" or an inline table'),
    "labels": ((list,), "a list of strings"),
    "graph_optimization": ((str,), 'one of "disable", "basic", "extended", "all"'),
    "memory_arena": ((bool,), "true or false"),
    "trust_on_first_use": ((bool,), "true or false"),
    "known_hosts": ((str,), "a path to a known_hosts file"),
    "connect_timeout_s": ((int, float), "a number of seconds, e.g. 15"),
    "tvm_tracker": ((str,), 'the address of TVM\'s RPC tracker, "host:port"'),
    "tvm_key": ((str,), "the key the device's RPC servers registered with (rpc_server --key)"),
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class InventoryError(HwlatError):
    """The inventory file is missing, malformed, or names a device it does not define."""


def default_inventory_path() -> Path:
    return Path(os.environ.get(INVENTORY_ENV, DEFAULT_INVENTORY))


def load_inventory(path: str | Path | None = None) -> dict[str, Device]:
    """All devices: ``local`` plus every entry of the file (a missing default file is fine)."""
    explicit = path is not None
    path = Path(path) if explicit else default_inventory_path()
    devices = {LOCAL: local_device()}
    if not path.exists():
        if explicit:
            raise InventoryError(
                f"inventory {path} does not exist; copy devices.example.toml "
                "there and edit it, or drop --inventory"
            )
        return devices
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise InventoryError(f"{path} is not a text file", "pass a TOML inventory") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"devices"}
    if unknown_top:
        raise InventoryError(
            f"{path}: unknown top-level table(s) {sorted(unknown_top)}; "
            "every device goes under [devices.NAME]"
        )
    tables = data.get("devices", {})
    if not isinstance(tables, dict):
        line = next((i for i, t in enumerate(text.splitlines(), 1) if t.lstrip().startswith("devices")), 1)
        raise InventoryError(
            f"{path}:{line}: 'devices' must hold one table per device, got {tables!r}",
            "write [devices.NAME] tables, as in devices.example.toml",
        )
    for name, table in tables.items():
        devices[name] = _device(path, text, name, table, devices[LOCAL])
    return devices


def resolve_device(name: str, inventory: str | Path | None = None) -> Device:
    devices = load_inventory(inventory)
    if name not in devices:
        where = inventory or default_inventory_path()
        raise InventoryError(
            f"no device named {name!r} in {where}; known: {', '.join(devices)}. "
            "Add a [devices.NAME] table (see devices.example.toml)"
        )
    return devices[name]


def devices_with_label(label: str, inventory: str | Path | None = None) -> list[Device]:
    found = [d for d in load_inventory(inventory).values() if label in d.labels]
    if not found:
        raise InventoryError(f'no device has label {label!r}; add labels = ["{label}"] to a device')
    return found


def _line_of(text: str, name: str, key: str | None = None) -> int:
    lines = text.splitlines()
    header = next(
        (i for i, line in enumerate(lines) if re.match(rf"^\s*\[devices\.\"?{re.escape(name)}\"?\]", line)),
        None,
    )
    if header is None:
        return 0
    if key is None:
        return header + 1
    for i in range(header + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return header + 1


def _device(path: Path, text: str, name: str, table: object, local: Device) -> Device:
    where = f"{path}:{_line_of(text, name)}"
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: devices.{name} must be a table ([devices.{name}])")
    if not _NAME.match(name):
        raise InventoryError(f"{where}: device name {name!r} may only use letters, digits, '.', '_', '-'")
    for key, value in table.items():
        at = f"{path}:{_line_of(text, name, key)}"
        if key not in _KEYS:
            raise InventoryError(
                f"{at}: unknown key {key!r} in devices.{name}; known keys: {', '.join(_KEYS)}"
            )
        types, desc = _KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InventoryError(
                f"{at}: devices.{name}.{key} = {value!r} has the wrong type; it must be {desc}"
            )
    _check_values(path, text, name, table)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    if name == LOCAL:
        for key in ("host", "tvm_tracker"):
            if key in fields:
                raise InventoryError(
                    f"{path}:{_line_of(text, name, key)}: 'local' is this machine and takes no {key}; "
                    "give the remote device another name"
                )
        return replace(local, **fields)
    if "host" not in fields and "tvm_tracker" not in fields:
        raise InventoryError(
            f'{where}: devices.{name} needs host = "..." (a remote device reached over SSH) or '
            'tvm_tracker = "host:port" with tvm_key (one handed out by TVM\'s RPC tracker), '
            "or call it 'local' to tune this machine's settings"
        )
    if "host" not in fields:  # reached only through the tracker: nothing runs over SSH
        fields.setdefault("backends", ("tvm",))
        if "ort" in fields["backends"]:
            raise InventoryError(
                f'{path}:{_line_of(text, name, "backends")}: devices.{name}.backends: "ort" needs '
                'host = "..." (its agent runs over SSH); a device reached only through the tracker '
                'measures with backends = ["tvm"]'
            )
    return Device(name=name, **fields)


def _check_values(path: Path, text: str, name: str, table: dict) -> None:
    def fail(key: str, msg: str) -> None:
        raise InventoryError(f"{path}:{_line_of(text, name, key)}: devices.{name}.{key}: {msg}")

    if "backends" in table:
        bad = [b for b in table["backends"] if b not in BACKENDS]
        if bad:
            fail("backends", f"unknown backend(s) {bad}; use {list(BACKENDS)}")
    if "threads" in table and table["threads"] < 1:
        fail("threads", "must be >= 1")
    if "port" in table and not 0 < table["port"] < 65536:
        fail("port", "must be between 1 and 65535")
    if "cpu_affinity" in table and not all(isinstance(c, int) and c >= 0 for c in table["cpu_affinity"]):
        fail("cpu_affinity", "must list non-negative CPU indices")
    if "labels" in table and not all(isinstance(v, str) for v in table["labels"]):
        fail("labels", "must list strings")
    if "connect_timeout_s" in table and not 0 < table["connect_timeout_s"] < math.inf:
        fail("connect_timeout_s", "must be a finite number of seconds > 0")
    if table.get("graph_optimization", "all") not in ("disable", "basic", "extended", "all"):
        fail("graph_optimization", "use one of disable, basic, extended, all")
    if "tvm_tracker" in table:
        host, colon, port = table["tvm_tracker"].rpartition(":")
        if not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            fail("tvm_tracker", f'{table["tvm_tracker"]!r} is not "host:port", e.g. "10.0.0.5:9190"')
    if "tvm_key" in table and not re.match(r"^[^\s:]+$", table["tvm_key"]):
        fail(
            "tvm_key", f"{table['tvm_key']!r} must be one word without ':' (what rpc_server --key was given)"
        )
    for key, other, why in (
        ("tvm_tracker", "tvm_key", "the key its RPC servers registered with"),
        ("tvm_key", "tvm_tracker", 'the tracker\'s "host:port"'),
    ):
        if key in table and other not in table:
            fail(key, f"needs {other} too ({why}); give both or neither")
