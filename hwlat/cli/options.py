"""Options shared by several commands, each written once: store, inventory, devices, backend,
timing protocol, output path. Commands call ``add_*`` on their parser and the matching
reader on the parsed arguments."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from hwlat.devices.device import Device
from hwlat.devices.inventory import devices_with_label, resolve_device
from hwlat.errors import ConfigError
from hwlat.profiler.backends import HostBackend, get_backend
from hwlat.profiler.backends.tvm import DEFAULT_TUNE_TRIALS
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store, default_db


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose every refusal (a missing option, a number out of range) is one ConfigError,
    printed like any other error: one ``hwlat: error:`` line, exit 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}", f"see {self.prog} --help")


def integer(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (``--budget 0`` is refused, not run)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number >= {minimum}")
        return value

    return parse


def number(minimum: float = 0.0, above: bool = True, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (at least it, with ``above=False``) and at
    most ``maximum`` (``--latency-ms inf`` or ``nan`` is refused: no budget compares with them)."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    if maximum is not None:
        bound += f" and <= {maximum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low = value <= minimum if above else value < minimum
        if not math.isfinite(value) or low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a finite number {bound}")
        return value

    return parse


def add_db(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--db",
        help=f"the store: a SQLite file or postgresql://user@host/db (default $HWLAT_DB or {default_db()})",
    )


def open_store(args: argparse.Namespace, readonly: bool = False) -> Store:
    """The store named by ``--db``, with ``--no-wait`` applied to the campaigns that use it."""
    store = Store(args.db, readonly=readonly)
    store.wait_for_devices = not getattr(args, "no_wait", False)
    return store


def add_dtypes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtypes",
        default="float32",
        help="kernel dtypes to profile, comma-separated: float32, int8 (S8S8, the CPU default), uint8 "
        "(U8S8) (default float32); 8-bit kernels are what quantized (QDQ) networks run",
    )


def dtypes(args: argparse.Namespace) -> tuple[str, ...]:
    from hwlat.profiler.opspec import DTYPES

    chosen = tuple(dict.fromkeys(d.strip() for d in args.dtypes.split(",") if d.strip()))
    bad = [d for d in chosen if d not in DTYPES]
    if bad or not chosen:
        raise ConfigError(f"--dtypes {args.dtypes!r}: unknown {bad}", f"use some of {', '.join(DTYPES)}")
    return chosen


def add_safety_margin(p: argparse.ArgumentParser, budget: str) -> None:
    p.add_argument(
        "--safety-margin",
        type=number(0, above=False, maximum=100),
        metavar="PCT",
        help=f"search under {budget} less this percentage, so that measured winners meet the budget "
        "itself (default: the predictor's own, the 90th percentile of how much slower than predicted "
        "its calibration networks ran; 0 searches at the budget)",
    )


def safety_margin_pct(args: argparse.Namespace, predictor) -> float:
    """``--safety-margin``, or the predictor's own when it is not given."""
    return args.safety_margin if args.safety_margin is not None else predictor.safety_margin_pct()


def add_wait(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="exit at once if another campaign is timing on the device (default: wait for its lease)",
    )


def add_inventory(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--inventory", type=Path, help="device inventory (default $HWLAT_INVENTORY or ./devices.toml)"
    )


def add_out(
    p: argparse.ArgumentParser, help: str, required: bool = True, default: Path | None = None
) -> None:
    """``-o/--out`` for every command that writes a file or folder (``--output`` is an alias)."""
    p.add_argument(
        "-o", "--out", "--output", dest="out", type=Path, required=required, default=default, help=help
    )


def add_device(p: argparse.ArgumentParser, many: bool = False, help: str | None = None) -> None:
    if many:
        p.add_argument("--device", action="append", help=help or "device name (repeatable; default local)")
        p.add_argument("--label", help="every device carrying this inventory label")
    else:
        p.add_argument("--device", default="local", help=help or "device name (default local)")
    add_inventory(p)


def add_backend(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    tune_trials: bool = True,
    default: str | None = "ort",
) -> None:
    p.add_argument(
        "--backend",
        default=default,
        help="ort (ONNX Runtime), tvm (TVM, tuned) or tvm-untuned"
        + (f" (default {default})" if default else ""),
    )
    if tune_trials:
        p.add_argument(
            "--tune-trials",
            type=integer(1),
            metavar="N",
            help="with --backend tvm: MetaSchedule candidates per kernel, timed on the device "
            f"(default {DEFAULT_TUNE_TRIALS})",
        )


def add_protocol(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing protocol")
    g.add_argument("--repeat", type=integer(1), help="repeats per op (default 9)")
    g.add_argument("--min-repeat-ms", type=number(0), help="minimum length of one repeat (default 20)")
    g.add_argument("--cooldown-ms", type=number(0, above=False), help="pause after each op (default 0)")
    g.add_argument("--quick", action="store_true", help="a short, less precise protocol for smoke runs")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def protocol(args: argparse.Namespace) -> TimingProtocol:
    base = TimingProtocol.quick() if args.quick else TimingProtocol()
    overrides = {
        k: v
        for k, v in (
            ("repeat", args.repeat),
            ("min_repeat_ms", args.min_repeat_ms),
            ("cooldown_ms", args.cooldown_ms),
        )
        if v is not None
    }
    return TimingProtocol(**{**base.to_dict(), **overrides})


def backend(args: argparse.Namespace, device: Device) -> HostBackend:
    options = {"tune_trials": args.tune_trials} if getattr(args, "tune_trials", None) is not None else {}
    if options and args.backend != "tvm":
        raise ConfigError(f"--tune-trials applies to --backend tvm, not {args.backend!r}")
    return get_backend(args.backend, device, **options)


def devices(args: argparse.Namespace) -> list[Device]:
    """The devices named by ``--device`` (repeatable) and ``--label``; ``local`` if neither."""
    if args.label:
        found = devices_with_label(args.label, args.inventory)
        return found + [
            resolve_device(n, args.inventory) for n in args.device or [] if n not in {d.name for d in found}
        ]
    return [resolve_device(n, args.inventory) for n in dict.fromkeys(args.device or ["local"])]


def space(name: str, resolutions: list[int] | None = None):
    """The search space, built for the given input resolutions (default: the space's own set)."""
    from hwlat.search.spaces import get_space

    return get_space(name, resolutions=tuple(resolutions)) if resolutions else get_space(name)


def load_callable(spec: str):
    """``package.module:function`` -> the function (a user's accuracy or evaluation callable)."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"{spec!r} is not package.module:function", "name a function, e.g. mypkg.evals:accuracy"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} for {spec!r}: {exc}", "check the module is on PYTHONPATH"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{module_name} has no function {attr!r}", "check the name after the colon")
    return fn
