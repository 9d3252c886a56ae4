"""The ``hwlat`` command: the one place that knows all four packages. Parse, call, print.

One module per command group (profile/measure, devices, table, train/predict/validate,
search/quickstart, db, quantize/compress); options shared by several commands live in ``options``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hwlat.cli import compress, db, devices, options, predictors, profile, search, tables
from hwlat.errors import EXIT_ERROR, EXIT_INTERRUPTED, HwlatError
from hwlat.profiler.progress import ProgressLogHandler

COMMAND_GROUPS = (profile, devices, tables, predictors, search, db, compress)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see EXIT CODES in ``hwlat --help``)."""
    logging.basicConfig(
        level=logging.WARNING, format="hwlat: %(message)s", handlers=[ProgressLogHandler(sys.stderr)]
    )
    # paramiko logs every failed handshake with a traceback from its transport thread; hwlat
    # reports each SSH failure itself as one line (devices/ssh.py).
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    try:
        args = build_parser().parse_args(argv)  # a bad argument is a ConfigError, like any bad input
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("hwlat: interrupted; everything measured so far is stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except HwlatError as exc:
        return _error(str(exc))
    except OSError as exc:  # files and folders the user named: missing, unreadable, disk full
        return _error(_os_message(exc))


def _error(message: str) -> int:
    print(f"hwlat: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_ERROR


def _os_message(exc: OSError) -> str:
    if exc.filename is None:
        return str(exc)
    fixes = {
        "FileNotFoundError": "check the path",
        "IsADirectoryError": "pass a file, not a folder",
        "NotADirectoryError": "check the path",
        "PermissionError": "check the file's permissions or pick another path",
    }
    fix = fixes.get(type(exc).__name__, "free some space or pick another path" if exc.errno == 28 else "")
    return f"{exc.filename}: {exc.strerror or exc}" + (f" ({fix})" if fix else "")


EPILOG = """exit codes:
  0    done
  1    done, and the result is a failure (ops failed, a winner over its budget, a device check failed)
  2    the command could not run: one line 'hwlat: error: <what> (<how to fix>)' says why
  130  interrupted (Ctrl-C); everything measured so far is stored
"""


def build_parser() -> argparse.ArgumentParser:
    parser = options.ArgumentParser(
        prog="hwlat",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="How long does this network take on that device? Measure ops and models on "
        "devices, build latency predictors, and search networks under latency budgets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser
