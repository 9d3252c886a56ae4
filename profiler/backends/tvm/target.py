"""A device's TVM target: the inventory's ``tvm_target`` turned into the dict TVM 0.27 accepts.

TVM 0.27 takes targets only as dicts (``{"kind": "llvm", "mcpu": ...}``); the inventory
may still say ``"llvm -mcpu=cortex-a72"`` or ``"llvm -mtriple=aarch64-linux-gnu -mattr=+neon"``,
so strings are converted here, each option to the type TVM declares for it. One key is
hwlat's own, not TVM's: ``cc``, the C++ compiler that links libraries for a foreign
architecture (default: Debian's ``<arch>-linux-gnu-g++``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import shutil

from hwlat.devices.device import Device
from hwlat.errors import HwlatError

HWLAT_KEYS = ("cc",)
# Debian's cross toolchains, by the architecture that starts an LLVM triple.
_DEBIAN_CROSS = {
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armv7": "arm-linux-gnueabihf",
    "armv7a": "arm-linux-gnueabihf",
    "arm": "arm-linux-gnueabihf",
    "riscv64": "riscv64-linux-gnu",
}
_MACHINE_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}


class TvmTargetError(HwlatError):
    """A device's tvm_target is unusable, or its cross compiler is missing."""


def device_target(device: Device) -> dict:
    """The device's target as a dict (hwlat keys included); ``num-cores`` defaults to its threads.

    The local device defaults to this machine's CPU; a remote device must name its target,
    because compiling for the wrong architecture only fails later, on the device.
    """
    spec = device.tvm_target
    if spec is None:
        if not device.is_local:
            raise TvmTargetError(
                f"device {device.name!r} has no tvm_target; add one to its inventory entry, e.g. "
                f'tvm_target = "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon" '
                f"(`hwlat devices check {device.name}` shows its architecture and CPU)"
            )
        from tvm.target.codegen import llvm_get_system_cpu

        spec = {"kind": "llvm", "mcpu": llvm_get_system_cpu()}
    target = parse_target(spec, device.name) if isinstance(spec, str) else _typed(dict(spec), device.name)
    if target.get("kind") != "llvm":
        raise TvmTargetError(
            f"device {device.name!r}: tvm_target kind {target.get('kind')!r} is not "
            "supported; hwlat measures CPUs through TVM's llvm target"
        )
    if device.is_local and target.get("mcpu") == "native":  # TVM ignores "native"; name the CPU
        from tvm.target.codegen import llvm_get_system_cpu

        target["mcpu"] = llvm_get_system_cpu()
    target.setdefault("num-cores", device.threads)
    tvm_target(target, device.name)  # fail now, with the device's name, not deep in a compile
    return target


def parse_target(text: str, where: str = "tvm_target") -> dict:
    """``"llvm -mcpu=cortex-a72 -mattr=+neon,+dotprod"`` -> ``{"kind": "llvm", "mcpu": ..., ...}``."""
    words = shlex.split(text)
    if not words or words[0].startswith("-"):
        raise TvmTargetError(f'{where}: target {text!r} must start with its kind, e.g. "llvm -mcpu=..."')
    target: dict = {"kind": words[0]}
    for word in words[1:]:
        name, eq, value = word.lstrip("-").partition("=")
        if not word.startswith("-") or not name:
            raise TvmTargetError(
                f"{where}: cannot read {word!r} in target {text!r}; write options as -name=value"
            )
        target[name] = value if eq else "true"
    return _typed(target, where)


def tvm_target(target: dict, where: str = "tvm_target"):
    """A ``tvm.target.Target`` from a hwlat target dict (hwlat's own keys left out)."""
    import tvm

    try:
        return tvm.target.Target({k: v for k, v in target.items() if k not in HWLAT_KEYS})
    except (ValueError, RuntimeError) as exc:
        raise TvmTargetError(f"{where}: TVM rejects target {target}: {str(exc).splitlines()[0]}") from None


def target_id(target: dict) -> str:
    """A short, readable, stable name for a target, e.g. ``llvm-znver4-1c-3f2a9c1e``."""
    canonical = json.dumps(target, sort_keys=True)
    parts = [
        target.get("kind", "llvm"),
        target.get("mtriple", "").split("-")[0],
        target.get("mcpu", ""),
        f"{target.get('num-cores', '')}c",
    ]
    readable = "-".join(p for p in parts if p and p != "c")
    return f"{readable}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def cross_compiler(target: dict) -> str | None:
    """The compiler that links for ``target``: None for this machine's architecture.

    Raises TvmTargetError, with the package to install, when the compiler is missing.
    """
    arch = target.get("mtriple", "").split("-")[0]
    host = _MACHINE_ALIASES.get(platform.machine(), platform.machine())
    if "cc" not in target and (not arch or _MACHINE_ALIASES.get(arch, arch) == host):
        return None
    triple = _DEBIAN_CROSS.get(arch, target.get("mtriple", ""))
    cc = target.get("cc") or f"{triple}-g++"
    if shutil.which(cc) is None:
        raise TvmTargetError(
            f"the cross compiler {cc!r} for target {target.get('mtriple')!r} is not installed; on "
            f"Debian/Ubuntu: apt-get install -y g++-{triple}, or name another compiler with "
            f'cc = "..." in the device\'s tvm_target table'
        )
    return cc


def _typed(target: dict, where: str) -> dict:
    """Convert string option values to the types TVM declares for the target's kind."""
    import tvm

    kind = target.get("kind")
    try:
        options = tvm.target.TargetKind.options_from_name(kind)
    except (ValueError, RuntimeError, TypeError):
        raise TvmTargetError(f'{where}: unknown TVM target kind {kind!r}; use "llvm"') from None
    for name, value in list(target.items()):
        if not isinstance(value, str) or name in HWLAT_KEYS:
            continue
        declared = options.get(name, "str")
        try:
            if declared.startswith("Array"):
                target[name] = [v for v in value.split(",") if v]
            elif declared == "int":
                target[name] = int(value)
            elif declared == "bool":
                target[name] = {"true": True, "1": True, "false": False, "0": False}[value.lower()]
        except (ValueError, KeyError):
            raise TvmTargetError(f"{where}: target option {name}={value!r} must be {declared}") from None
    return target
