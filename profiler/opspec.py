"""OpSpec: a frozen description of one kernel as a runtime executes it.

The canonical key is the primary key of every table, so it is human-readable,
lists every field that matters for the op type in a fixed order, and round-trips
(``OpSpec.from_key(spec.key) == spec``).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from hwlat.errors import HwlatError

OP_TYPES = (
    "conv",
    "gemm",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "add",
    "mul",
    "concat",
    "split",
    "shuffle",
    "act",
    "quantize",
    "dequantize",
)
ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "swish", "sigmoid")
BROADCASTS = ("none", "channel")
# float32, or 8-bit as ONNX Runtime's static quantizer writes it (QDQ): "int8" is S8S8 (int8
# activations and weights, the CPU default), "uint8" is U8S8 (uint8 activations, int8 weights;
# it saturates on x86 CPUs without VNNI).
DTYPES = ("float32", "int8", "uint8")
INT_DTYPES = ("int8", "uint8")
BYTES_PER_ELEMENT = {"float32": 4, "int8": 1, "uint8": 1}
# Ops that run on 8-bit tensors in a quantized network (ORT's QLinear kernels, or int8 layout
# ops); quantize/dequantize convert between float32 and 8 bits at the edges of such a region.
INT8_OPS = (
    "conv",
    "gemm",
    "maxpool",
    "avgpool",
    "globalavgpool",
    "add",
    "mul",
    "concat",
    "split",
    "shuffle",
    "act",
    "quantize",
    "dequantize",
)
# An activation an 8-bit conv or gemm needs no kernel for: the quantization range clips it.
_RANGE_ACTIVATIONS = ("relu", "relu6")

# Which fields appear in the key of each op type, in key order. "in" is always first.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("out", "k", "s", "p", "d", "g", "bias", "act"),
    "gemm": ("out", "bias", "act"),
    "maxpool": ("k", "s", "p"),
    "avgpool": ("k", "s", "p"),
    "globalavgpool": (),
    "add": ("bcast",),
    "mul": ("bcast",),
    "concat": ("parts",),
    "split": ("parts",),
    "shuffle": ("g",),
    "act": ("act",),
    "quantize": (),  # float32 -> dtype
    "dequantize": (),  # dtype -> float32
}
# Short key names -> dataclass attribute names.
_KEY_TO_ATTR = {
    "in": "input_shape",
    "out": "out_channels",
    "k": "kernel",
    "s": "stride",
    "p": "padding",
    "d": "dilation",
    "g": "groups",
    "bias": "bias",
    "act": "activation",
    "bcast": "broadcast",
    "parts": "parts",
    "dtype": "dtype",
}


class InvalidOpSpecError(HwlatError):
    """An OpSpec (or its key or JSON) does not describe a valid kernel."""


@dataclass(frozen=True)
class OpSpec:
    """One kernel. Shapes are NCHW (``(N, C)`` for gemm); dtype float32, or int8/uint8 for the
    kernels a quantized network runs (``INT8_OPS``).

    Only the fields listed for ``op`` in the key matter; the others keep their
    defaults so that two specs of the same kernel compare and hash equal. An 8-bit conv or
    gemm with a ReLU or ReLU6 is the same kernel as without it (the quantization range clips).
    """

    op: str
    input_shape: tuple[int, ...]
    out_channels: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    activation: str = "none"
    broadcast: str = "none"
    parts: tuple[int, ...] = field(default=())
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_integers(self)
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "parts", tuple(int(v) for v in self.parts))
        object.__setattr__(self, "bias", bool(self.bias))
        if self.dtype in INT_DTYPES and self.op in ("conv", "gemm") and self.activation in _RANGE_ACTIVATIONS:
            object.__setattr__(self, "activation", "none")
        if self.op not in OP_TYPES:
            raise InvalidOpSpecError(f"unknown op type {self.op!r}; known types: {', '.join(OP_TYPES)}")
        # Fields that do not matter for this op type go back to their defaults, so that
        # equal kernels hash equal whatever the caller passed.
        relevant = {_KEY_TO_ATTR[s] for s in _KEY_FIELDS[self.op]}
        for f in fields(self):
            if f.name not in relevant and f.name not in ("op", "input_shape", "dtype"):
                default = f.default if f.default_factory is MISSING else f.default_factory()
                object.__setattr__(self, f.name, default)
        _validate(self)

    # ----- identity -------------------------------------------------------
    @property
    def key(self) -> str:
        items = ["in:" + "x".join(str(v) for v in self.input_shape)]
        for short in _KEY_FIELDS[self.op]:
            items.append(f"{short}:{_format_value(getattr(self, _KEY_TO_ATTR[short]))}")
        items.append(f"dtype:{self.dtype}")
        return "-".join([self.op, *items])

    @classmethod
    def from_key(cls, key: str) -> OpSpec:
        op, _, rest = key.partition("-")
        if op not in OP_TYPES:
            raise InvalidOpSpecError(
                f"unknown op type {op!r} in key {key!r}; known types: {', '.join(OP_TYPES)}"
            )
        values: dict[str, object] = {}
        for item in rest.split("-") if rest else []:
            short, sep, raw = item.partition(":")
            if not sep or short not in _KEY_TO_ATTR:
                raise InvalidOpSpecError(
                    f"cannot parse {item!r} in key {key!r}: expected NAME:VALUE "
                    f"with NAME one of {', '.join(_KEY_TO_ATTR)}"
                )
            values[_KEY_TO_ATTR[short]] = _parse_value(short, raw, key)
        expected = {"input_shape", "dtype", *(_KEY_TO_ATTR[s] for s in _KEY_FIELDS[op])}
        if set(values) != expected:
            missing = sorted(expected - set(values))
            extra = sorted(set(values) - expected)
            raise InvalidOpSpecError(
                f"key {key!r} for op {op!r} has missing fields {missing} / unexpected fields {extra}"
            )
        return cls(op=op, **values)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """Only the fields that matter for this op type (what JSONL files hold)."""
        attrs = ["op", "input_shape", *(_KEY_TO_ATTR[s] for s in _KEY_FIELDS[self.op]), "dtype"]
        data = asdict(self)
        return {a: list(data[a]) if isinstance(data[a], tuple) else data[a] for a in attrs}

    @classmethod
    def from_dict(cls, data: dict) -> OpSpec:
        if not isinstance(data, dict):
            raise InvalidOpSpecError(f"an OpSpec is a JSON object of fields, got {type(data).__name__}")
        if "key" in data and len(data) == 1:
            return cls.from_key(data["key"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOpSpecError(f"unknown OpSpec fields {unknown}; known fields: {sorted(known)}")
        if "op" not in data or "input_shape" not in data:
            raise InvalidOpSpecError(f"an OpSpec needs 'op' and 'input_shape', got {data!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidOpSpecError(f"bad OpSpec {data!r}: {exc}") from None

    # ----- shapes and costs -----------------------------------------------
    @property
    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        n = self.input_shape[0]
        if self.op == "gemm":
            return ((n, self.out_channels),)
        if self.op in ("quantize", "dequantize"):
            return (self.input_shape,)
        _, c, h, w = self.input_shape
        if self.op == "conv":
            return ((n, self.out_channels, *self._spatial_out(h, w)),)
        if self.op in ("maxpool", "avgpool"):
            return ((n, c, *self._spatial_out(h, w)),)
        if self.op == "globalavgpool":
            return ((n, c, 1, 1),)
        if self.op == "concat":
            return ((n, c, h, w),)
        if self.op == "split":
            return tuple((n, p, h, w) for p in self.parts)
        return ((n, c, h, w),)

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        n, c, *hw = self.input_shape
        if self.op in ("add", "mul"):
            other = (n, c, 1, 1) if self.broadcast == "channel" else self.input_shape
            return (self.input_shape, other)
        if self.op == "concat":
            return tuple((n, p, *hw) for p in self.parts)
        return (self.input_shape,)

    def _spatial_out(self, h: int, w: int) -> tuple[int, int]:
        span = self.dilation * (self.kernel - 1) + 1
        return (
            (h + 2 * self.padding - span) // self.stride + 1,
            (w + 2 * self.padding - span) // self.stride + 1,
        )

    @property
    def params(self) -> int:
        """Number of weights (batch-norm is folded into conv/gemm weights and bias)."""
        if self.op == "conv":
            cin = self.input_shape[1]
            return self.out_channels * (cin // self.groups) * self.kernel**2 + (
                self.out_channels if self.bias else 0
            )
        if self.op == "gemm":
            return self.out_channels * self.input_shape[1] + (self.out_channels if self.bias else 0)
        return 0

    @property
    def flops(self) -> int:
        """Floating-point operations (a multiply-add counts as 2)."""
        out = _numel(self.output_shapes[0])
        act = out * _ACTIVATION_FLOPS[self.activation]
        if self.op == "conv":
            macs = out * (self.input_shape[1] // self.groups) * self.kernel**2
            return 2 * macs + (out if self.bias else 0) + act
        if self.op == "gemm":
            return 2 * out * self.input_shape[1] + (out if self.bias else 0) + act
        if self.op in ("maxpool", "avgpool"):
            return out * self.kernel**2
        if self.op == "globalavgpool":
            return _numel(self.input_shape)
        if self.op in ("add", "mul"):
            return out
        if self.op == "act":
            return act
        return 0  # concat, split, shuffle only move data

    @property
    def bytes_moved(self) -> int:
        """Bytes read (inputs, weights) plus bytes written (outputs), without cache reuse."""
        inputs = sum(_numel(s) for s in self.input_shapes)
        outputs = sum(_numel(s) for s in self.output_shapes)
        width = BYTES_PER_ELEMENT[self.dtype]
        if self.op == "quantize":
            return inputs * 4 + outputs * width
        if self.op == "dequantize":
            return inputs * width + outputs * 4
        return (inputs + self.params + outputs) * width

    def as_dtype(self, dtype: str) -> OpSpec:
        """The same op in ``dtype``, as a quantized network runs it; InvalidOpSpecError when it has
        no such kernel (an 8-bit hardswish runs in float32 between a dequantize and a quantize)."""
        if dtype == self.dtype:
            return self
        activation = self.activation
        if dtype in INT_DTYPES and self.op in ("conv", "gemm") and activation in _RANGE_ACTIVATIONS:
            activation = "none"
        return replace(self, dtype=dtype, activation=activation)

    def __str__(self) -> str:
        return self.key


_ACTIVATION_FLOPS = {
    "none": 0,
    "relu": 1,
    "relu6": 2,
    "hardswish": 5,
    "hardsigmoid": 4,
    "swish": 5,
    "sigmoid": 4,
}


def _numel(shape: Iterable[int]) -> int:
    total = 1
    for v in shape:
        total *= v
    return total


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, tuple):
        return "+".join(str(v) for v in value)
    return str(value)


def _parse_value(short: str, raw: str, key: str) -> object:
    try:
        if short == "in":
            return tuple(int(v) for v in raw.split("x"))
        if short == "parts":
            return tuple(int(v) for v in raw.split("+"))
        if short == "bias":
            if raw not in ("0", "1"):
                raise ValueError(raw)
            return raw == "1"
        if short in ("act", "bcast", "dtype"):
            return raw
        return int(raw)
    except ValueError:
        raise InvalidOpSpecError(f"bad value {raw!r} for {short!r} in key {key!r}") from None


_INT_FIELDS = ("out_channels", "kernel", "stride", "padding", "dilation", "groups")


def _check_integers(spec: OpSpec) -> None:
    """Sizes are whole numbers: ``stride=2.5`` or ``input_shape=(1, 3.5, 8, 8)`` is refused, not cut."""
    if not isinstance(spec.bias, bool) and spec.bias not in (0, 1):
        raise InvalidOpSpecError(f"invalid {spec.op} op: bias must be true or false, got {spec.bias!r}")
    for name in ("op", "activation", "broadcast", "dtype"):
        if not isinstance(getattr(spec, name), str):
            raise InvalidOpSpecError(
                f"invalid {spec.op!r} op: {name} must be a string, got {getattr(spec, name)!r}"
            )
    values = [(name, getattr(spec, name)) for name in _INT_FIELDS]
    if not isinstance(spec.input_shape, (tuple, list)):
        raise InvalidOpSpecError(f"invalid {spec.op} op: input_shape must be a list of integers")
    values += [("input_shape", v) for v in spec.input_shape] + [("parts", v) for v in spec.parts]
    for name, value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidOpSpecError(f"invalid {spec.op} op: {name} must be an integer, got {value!r}")


def _validate(spec: OpSpec) -> None:
    def fail(msg: str) -> None:
        raise InvalidOpSpecError(f"invalid {spec.op} op: {msg}")

    if spec.dtype not in DTYPES:
        fail(f"dtype {spec.dtype!r} is not supported; use one of {DTYPES}")
    if spec.dtype in INT_DTYPES and spec.op not in INT8_OPS:
        fail(f"there is no {spec.dtype} {spec.op} kernel; 8-bit ops are {', '.join(INT8_OPS)}")
    if spec.op in ("quantize", "dequantize") and spec.dtype not in INT_DTYPES:
        fail(f"{spec.op} converts between float32 and 8 bits: dtype must be one of {INT_DTYPES}")
    if spec.dtype in INT_DTYPES and spec.op in ("conv", "gemm") and spec.activation != "none":
        fail(
            f"an 8-bit {spec.op} cannot carry {spec.activation}: ONNX Runtime runs it in float32 "
            "between a dequantize and a quantize (give it as its own float32 act op)"
        )
    if spec.dtype in INT_DTYPES and spec.op == "act" and spec.activation != "sigmoid":
        fail(
            f"8-bit activations are sigmoid only ({spec.activation} is folded into the quantization "
            "range, or runs in float32)"
        )
    rank = 2 if spec.op == "gemm" else 4
    if spec.op in ("quantize", "dequantize") and len(spec.input_shape) in (2, 4):
        rank = len(spec.input_shape)  # conversions happen before and after a classifier too
    if len(spec.input_shape) != rank:
        fail(
            f"input_shape {spec.input_shape} must have {rank} dimensions "
            f"({'N, C' if rank == 2 else 'N, C, H, W'})"
        )
    if any(v <= 0 for v in spec.input_shape):
        fail(f"input_shape {spec.input_shape} has a size <= 0; every dimension must be positive")
    if spec.activation not in ACTIVATIONS:
        fail(f"unknown activation {spec.activation!r}; use one of {', '.join(ACTIVATIONS)}")
    if spec.broadcast not in BROADCASTS:
        fail(f"unknown broadcast {spec.broadcast!r}; use one of {', '.join(BROADCASTS)}")
    for name in ("kernel", "stride", "dilation", "groups"):
        if getattr(spec, name) <= 0:
            fail(f"{name}={getattr(spec, name)} must be positive")
    if spec.padding < 0:
        fail(f"padding={spec.padding} must be >= 0")
    if spec.op == "act" and spec.activation == "none":
        fail("a standalone activation needs act other than 'none'")
    if spec.op in ("conv", "gemm") and spec.out_channels <= 0:
        fail(f"out_channels={spec.out_channels} must be positive")
    if spec.op == "conv":
        cin = spec.input_shape[1]
        if cin % spec.groups or spec.out_channels % spec.groups:
            fail(
                f"groups={spec.groups} must divide both input channels ({cin}) "
                f"and output channels ({spec.out_channels})"
            )
    if spec.op in ("conv", "maxpool", "avgpool"):
        span = spec.dilation * (spec.kernel - 1) + 1
        h, w = spec.input_shape[2:]
        if span > min(h, w) + 2 * spec.padding:
            fail(
                f"kernel {spec.kernel} (dilated span {span}) is larger than the padded input "
                f"{h + 2 * spec.padding}x{w + 2 * spec.padding}; lower the kernel or raise padding"
            )
        if spec.op != "conv" and spec.padding * 2 > spec.kernel:
            fail(f"padding={spec.padding} must be at most half the kernel ({spec.kernel}) for pooling")
    if spec.op in ("concat", "split"):
        if len(spec.parts) < 2 or any(p <= 0 for p in spec.parts):
            fail(f"parts={spec.parts} needs at least two positive channel counts")
        if sum(spec.parts) != spec.input_shape[1]:
            fail(
                f"parts={spec.parts} sum to {sum(spec.parts)}, but the channel count is {spec.input_shape[1]}"
            )
    if spec.op == "shuffle" and (spec.groups < 2 or spec.input_shape[1] % spec.groups):
        fail(f"groups={spec.groups} must be >= 2 and divide the channels ({spec.input_shape[1]})")


# ----- JSON lines ---------------------------------------------------------
def read_jsonl(path: str | Path, invalid: list[str] | None = None) -> list[OpSpec]:
    """Read OpSpecs, one JSON object per line (fields, or {"key": ...}); blank lines and # comments skip.

    A bad line raises InvalidOpSpecError naming the file and line, or, when ``invalid`` is a
    list, is appended to it as such a message and skipped (a campaign measures the rest).
    """
    specs = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                try:
                    data = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
                    raise InvalidOpSpecError(
                        f"not valid JSON ({reason}); each line must be one JSON object"
                    ) from None
                specs.append(OpSpec.from_dict(data))
            except InvalidOpSpecError as exc:
                error = InvalidOpSpecError(f"{path}:{lineno}: {exc}")
                if invalid is None:
                    raise error from None
                invalid.append(str(error))
    return specs


def write_jsonl(specs: Iterable[OpSpec], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for spec in specs:
            fh.write(json.dumps(spec.to_dict()) + "\n")


def unique(specs: Iterable[OpSpec]) -> Iterator[OpSpec]:
    """Specs in first-seen order, without repeats."""
    seen: set[OpSpec] = set()
    for spec in specs:
        if spec not in seen:
            seen.add(spec)
            yield spec
