"""One root for every error hwlat reports to its user.

The CLI catches ``HwlatError`` (and the operating system's file errors) and prints one line,
``hwlat: error: <what> (<how to fix>)``, then exits with ``EXIT_ERROR``. Anything else that
escapes is a bug in hwlat and keeps its traceback. Each package defines the specific
subclasses it raises (``DeviceError``, ``InvalidOpSpecError``, ``StoreError``,
``UnsupportedOpsError``, ...); the ones several packages share live here.
"""

from __future__ import annotations

# Exit codes of the hwlat command besides 0 (done).
EXIT_FAILED = 1  # the command ran, and its result is a failure (ops failed, a winner over budget, ...)
EXIT_ERROR = 2  # the command could not run: bad input, an unreachable device, a bad file
EXIT_INTERRUPTED = 130  # Ctrl-C; what was measured is stored


class HwlatError(Exception):
    """An error the user can fix; ``fix`` says how (appended in parentheses when given)."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.fix})" if self.fix else message


class ConfigError(HwlatError):
    """A setting or argument out of its range, or two that do not go together."""


class ModelFileError(HwlatError):
    """A path that does not hold a readable ONNX model."""


class PredictorFormatError(HwlatError):
    """A predictor file that is not a (compatible) hwlat predictor."""
