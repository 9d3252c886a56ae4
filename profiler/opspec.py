"""OpSpec: a frozen description of one kernel as a runtime executes it.

The canonical key is the primary key of every table, so it is human-readable,
lists every field that matters for the op type in a fixed order, and round-trips
(``OpSpec.from_key(spec.key) == spec``).

Spatial sizes (kernel, stride, padding, dilation) are one integer for the square case and an
``(h, w)`` pair otherwise (a 1x7 conv: ``k:1x7``); ``kernel_hw`` and friends always give pairs.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from hwlat.errors import HwlatError

OP_TYPES = (
    "conv",
    "deconv",  # ConvTranspose
    "gemm",  # a linear layer: Gemm on (N, C), MatMul + Add on (N, ..., C) (channels last)
    "maxpool",
    "avgpool",
    "globalavgpool",
    "globalmaxpool",
    "add",
    "mul",
    "concat",
    "split",
    "slice",  # a channel (or row, column: ``axis``) range of a tensor (a Slice, or a Gather)
    "shuffle",
    "act",
    "bn",  # a BatchNormalization no conv absorbs (pre-activation networks)
    "layernorm",  # over the last axis
    "instancenorm",  # each channel over the axes after it (InstanceNorm; GroupNorm's core, 3-D)
    "softmax",  # over the last axis
    "pad",
    "resize",
    "transpose",
    "quantize",
    "dequantize",
    "reduce",  # over the channels of a 4-D tensor, to (N, 1, H, W): CBAM's maps, a 2-D layer norm's
    "pixelshuffle",  # channels to an s x s block of pixels ("up", DepthToSpace) or back ("down")
)
ACTIVATIONS = (
    "none",
    "relu",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "swish",
    "sigmoid",
    "gelu",
    "mish",
    "tanh",
    "leakyrelu",
    "elu",
    "erf",  # the pieces of GELU and Mish that a quantized network runs apart (Q/DQ between them)
    "softplus",
    "prelu",  # a learned slope per channel (face recognition, super-resolution networks)
    # Element-wise math that hand-written norms and attention use (``x.pow(2)``, ``sqrt``, ...),
    # and two rarer activations; ONNX Runtime runs each as a node of its own (probed).
    "sqrt",
    "square",  # Pow with exponent 2
    "exp",
    "log",
    "abs",
    "neg",
    "reciprocal",
    "selu",
    "celu",
)
# The smaller operand of an element-wise add or mul on (N, C, H, W): the same shape, one value
# per channel (N, C, 1, 1), per pixel (N, 1, H, W: a spatial attention map, a 2-D layer norm's
# statistics), per channel and row (N, C, H, 1) or per channel and column (N, C, 1, W: coordinate
# attention). Tensors of other ranks broadcast "none" or "channel" only.
BROADCASTS = ("none", "channel", "pixel", "row", "column")
PAD_MODES = ("constant", "reflect", "edge")
RESIZE_MODES = ("nearest", "linear")
REDUCE_MODES = ("mean", "max", "sum")
PIXEL_SHUFFLE_MODES = ("up", "down")  # torch's PixelShuffle, PixelUnshuffle
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
    "slice",
    "shuffle",
    "transpose",
    "act",
    "quantize",
    "dequantize",
)
# An activation an 8-bit conv or gemm needs no kernel for: the quantization range clips it.
RANGE_ACTIVATIONS = ("relu", "relu6")
# Activations ONNX Runtime has an 8-bit kernel for (QLinearSigmoid, QLinearLeakyRelu).
QLINEAR_ACTIVATIONS = ("sigmoid", "leakyrelu")

# Which fields appear in the key of each op type, in key order. "in" is always first.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("out", "k", "s", "p", "d", "g", "bias", "act"),
    "deconv": ("out", "k", "s", "p", "g", "bias", "act"),
    "gemm": ("out", "bias", "act"),
    "maxpool": ("k", "s", "p"),
    "avgpool": ("k", "s", "p"),
    "globalavgpool": (),
    "globalmaxpool": (),
    "add": ("bcast",),
    "mul": ("bcast",),
    "concat": ("parts",),
    "split": ("parts",),
    "slice": ("out",),
    "shuffle": ("g",),
    "act": ("act",),
    "bn": (),
    "layernorm": (),
    "instancenorm": (),
    "softmax": (),
    "pad": ("p", "mode"),
    "resize": ("s", "mode"),
    "transpose": ("perm",),
    "quantize": (),  # float32 -> dtype
    "dequantize": (),  # dtype -> float32
    "reduce": ("mode",),
    "pixelshuffle": ("s", "mode"),
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
    "perm": "perm",
    "mode": "mode",
    "dtype": "dtype",
    "w": "weights",
    "axis": "axis",
}
# Fields a key shows only when they differ from their default, so that adding one kept every
# existing key (and the measurements stored under it) as it was.
_OPTIONAL_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("w",),
    # The axis a concat, split or slice works along: 1 (channels), or 2 or 3 (rows, columns: the
    # pooled maps of coordinate attention).
    "concat": ("axis",),
    "split": ("axis",),
    "slice": ("axis",),
}
# How a conv's weights reach it. "constant": constants of the kernel's dtype (float32, or the
# 8-bit weights ORT's quantizer writes, per output channel). "dequantized": a float32 conv whose
# weights (and bias) are 8-bit constants dequantized on every run, which is how ONNX Runtime runs
# an int8 conv it does not fuse (on x86, one next to a branching tensor), in the plain NCHW
# layout (its NCHWc transform needs constant weights). "runtime": an 8-bit conv whose float32
# weights ORT quantizes itself (its WeightBiasQuantization pass, per tensor), which is how a conv
# left float32 between 8-bit layers runs.
WEIGHT_SOURCES = ("constant", "dequantized", "runtime")
_PAIRS = ("kernel", "stride", "padding", "dilation")  # an int, or (h, w)
# The input ranks each op accepts (NCHW ops 4; linear layers and element-wise ops also the
# (N, C) and (N, ..., C) tensors of classifiers and channels-last blocks).
_RANKS: dict[str, tuple[int, ...]] = {
    "gemm": (2, 3, 4),
    "add": (2, 3, 4),
    "mul": (2, 3, 4),
    "act": (2, 3, 4),
    "bn": (2, 4),  # (N, C): a BatchNorm1d after a linear layer (face embeddings)
    "layernorm": (2, 3, 4),
    "instancenorm": (3, 4),
    "softmax": (2, 3, 4),
    "transpose": (3, 4),
    "quantize": (2, 4),
    "dequantize": (2, 4),
}


# Ops whose output has their input's shape.
_SAME_SHAPE_OPS = (
    "quantize",
    "dequantize",
    "add",
    "mul",
    "act",
    "bn",
    "layernorm",
    "instancenorm",
    "softmax",
)


_DEFAULT_MODES = {"pad": "constant", "resize": "nearest", "reduce": "mean", "pixelshuffle": "up"}


class InvalidOpSpecError(HwlatError):
    """An OpSpec (or its key or JSON) does not describe a valid kernel."""


def broadcast_operand(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the second operand of an add or mul with broadcast ``kind`` onto ``shape``:
    one value per channel (NCHW: (N, C, 1, 1); channels last: (C,)), per pixel (N, 1, H, W), per
    channel and row (N, C, H, 1) or per channel and column (N, C, 1, W)."""
    if kind == "none":
        return shape
    if kind == "channel" and len(shape) != 4:
        return (shape[-1],)
    n, c, h, w = shape
    return {"channel": (n, c, 1, 1), "pixel": (n, 1, h, w), "row": (n, c, h, 1), "column": (n, c, 1, w)}[kind]


def broadcast_kind(a: tuple[int, ...], b: tuple[int, ...]) -> str | None:
    """The broadcast kind of a tensor of shape ``b`` onto one of shape ``a`` (leading ones and
    a batch of one broadcast, as in numpy), or None when no kind describes it."""
    if len(a) != 4:  # channels last: (C,) onto (N, ..., C)
        if a == b:
            return "none"
        return "channel" if b[-1:] == a[-1:] and math.prod(b) == a[-1] else None
    b = (1,) * (4 - len(b)) + tuple(b)
    if b == tuple(a):
        return "none"
    if b[0] not in (1, a[0]):
        return None
    for kind in BROADCASTS[1:]:
        if broadcast_operand(kind, a)[1:] == b[1:]:
            return kind
    return None


@dataclass(frozen=True)
class OpSpec:
    """One kernel. Shapes are NCHW (``(N, ..., C)`` for linear layers and the ops of ``_RANKS``);
    dtype float32, or int8/uint8 for the kernels a quantized network runs (``INT8_OPS``).

    Only the fields listed for ``op`` in the key matter; the others keep their
    defaults so that two specs of the same kernel compare and hash equal. An 8-bit conv or
    gemm with a ReLU or ReLU6 is the same kernel as without it (the quantization range clips).
    ``weights`` says how a conv's weights reach it (``WEIGHT_SOURCES``).
    """

    op: str
    input_shape: tuple[int, ...]
    out_channels: int = 0
    kernel: int | tuple[int, int] = 1
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    bias: bool = True
    activation: str = "none"
    broadcast: str = "none"
    parts: tuple[int, ...] = field(default=())
    perm: tuple[int, ...] = field(default=())
    mode: str = "none"
    dtype: str = "float32"
    weights: str = "constant"
    axis: int = 1

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "parts", tuple(int(v) for v in self.parts))
        object.__setattr__(self, "perm", tuple(int(v) for v in self.perm))
        object.__setattr__(self, "bias", bool(self.bias))
        for name in _PAIRS:
            object.__setattr__(self, name, _pair_or_int(getattr(self, name)))
        if self.dtype in INT_DTYPES and self.op in ("conv", "gemm") and self.activation in RANGE_ACTIVATIONS:
            object.__setattr__(self, "activation", "none")
        if self.mode == "none" and self.op in _DEFAULT_MODES:
            object.__setattr__(self, "mode", _DEFAULT_MODES[self.op])
        if self.op not in OP_TYPES:
            raise InvalidOpSpecError(f"unknown op type {self.op!r}; known types: {', '.join(OP_TYPES)}")
        # Fields that do not matter for this op type go back to their defaults, so that
        # equal kernels hash equal whatever the caller passed.
        relevant = {_KEY_TO_ATTR[s] for s in _KEY_FIELDS[self.op] + _OPTIONAL_KEY_FIELDS.get(self.op, ())}
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
            items.append(f"{short}:{_format_value(short, getattr(self, _KEY_TO_ATTR[short]))}")
        for short in self._set_optional_fields():
            items.append(f"{short}:{_format_value(short, getattr(self, _KEY_TO_ATTR[short]))}")
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
        optional = {_KEY_TO_ATTR[s] for s in _OPTIONAL_KEY_FIELDS.get(op, ())}
        if not expected <= set(values) <= expected | optional:
            missing = sorted(expected - set(values))
            extra = sorted(set(values) - expected - optional)
            raise InvalidOpSpecError(
                f"key {key!r} for op {op!r} has missing fields {missing} / unexpected fields {extra}"
            )
        return cls(op=op, **values)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """Only the fields that matter for this op type (what JSONL files hold)."""
        attrs = ["op", "input_shape", *(_KEY_TO_ATTR[s] for s in _KEY_FIELDS[self.op])]
        attrs += [*(_KEY_TO_ATTR[s] for s in self._set_optional_fields()), "dtype"]
        data = asdict(self)
        return {a: list(data[a]) if isinstance(data[a], tuple) else data[a] for a in attrs}

    @classmethod
    def from_dict(cls, data: dict) -> OpSpec:
        if not isinstance(data, dict):
            raise InvalidOpSpecError(f"an OpSpec is a JSON object of fields, got {type(data).__name__}")
        if "key" in data and len(data) == 1:
            if not isinstance(data["key"], str):
                raise InvalidOpSpecError(f"an op key is text, got {type(data['key']).__name__}")
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

    def _set_optional_fields(self) -> list[str]:
        """The optional key fields (short names) that differ from their defaults."""
        defaults = {f.name: f.default for f in fields(self)}
        return [
            short
            for short in _OPTIONAL_KEY_FIELDS.get(self.op, ())
            if getattr(self, _KEY_TO_ATTR[short]) != defaults[_KEY_TO_ATTR[short]]
        ]

    # ----- spatial pairs ----------------------------------------------------
    @property
    def kernel_hw(self) -> tuple[int, int]:
        return _as_pair(self.kernel)

    @property
    def stride_hw(self) -> tuple[int, int]:
        return _as_pair(self.stride)

    @property
    def padding_hw(self) -> tuple[int, int]:
        return _as_pair(self.padding)

    @property
    def dilation_hw(self) -> tuple[int, int]:
        return _as_pair(self.dilation)

    # ----- shapes and costs -----------------------------------------------
    @property
    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        shape = self.input_shape
        n = shape[0]
        if self.op == "gemm":
            return ((*shape[:-1], self.out_channels),)
        if self.op == "transpose":
            return (tuple(shape[i] for i in self.perm),)
        if self.op in _SAME_SHAPE_OPS:
            return (shape,)
        _, c, h, w = shape
        if self.op == "conv":
            return ((n, self.out_channels, *self._spatial_out(h, w)),)
        if self.op == "deconv":
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_hw, self.stride_hw, self.padding_hw
            return ((n, self.out_channels, (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw),)
        if self.op in ("maxpool", "avgpool"):
            return ((n, c, *self._spatial_out(h, w)),)
        if self.op in ("globalavgpool", "globalmaxpool"):
            return ((n, c, 1, 1),)
        if self.op == "reduce":
            return ((n, 1, h, w),)
        if self.op == "split":
            return tuple(self._along_axis(p) for p in self.parts)
        if self.op == "slice":
            return (self._along_axis(self.out_channels),)
        if self.op == "pad":
            ph, pw = self.padding_hw
            return ((n, c, h + 2 * ph, w + 2 * pw),)
        if self.op == "resize":
            sh, sw = self.stride_hw
            return ((n, c, h * sh, w * sw),)
        if self.op == "pixelshuffle":
            s = self.stride_hw[0]
            if self.mode == "up":
                return ((n, c // (s * s), h * s, w * s),)
            return ((n, c * s * s, h // s, w // s),)
        return ((n, c, h, w),)  # concat, shuffle, bn

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        shape = self.input_shape
        if self.op in ("add", "mul"):
            return (shape, broadcast_operand(self.broadcast, shape))
        if self.op == "concat":
            return tuple(self._along_axis(p) for p in self.parts)
        return (shape,)

    def _along_axis(self, size: int) -> tuple[int, ...]:
        """The input shape with ``size`` along ``axis`` (a part of a concat, split or slice)."""
        return tuple(size if i == self.axis else d for i, d in enumerate(self.input_shape))

    def _spatial_out(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_hw,
            self.stride_hw,
            self.padding_hw,
            self.dilation_hw,
        )
        return (
            (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1,
            (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1,
        )

    @property
    def params(self) -> int:
        """Number of weights (batch-norm is folded into conv/gemm weights and bias)."""
        kh, kw = self.kernel_hw
        bias = self.out_channels if self.bias else 0
        if self.op == "conv":
            return self.out_channels * (self.input_shape[1] // self.groups) * kh * kw + bias
        if self.op == "deconv":
            return self.input_shape[1] * (self.out_channels // self.groups) * kh * kw + bias
        if self.op == "gemm":
            return self.out_channels * self.input_shape[-1] + bias
        if self.op == "bn":
            return 4 * self.input_shape[1]  # scale, bias, mean, variance
        if self.op == "layernorm":
            return 2 * self.input_shape[-1]
        if self.op == "instancenorm":
            return 2 * self.input_shape[1]
        return 0

    @property
    def flops(self) -> int:
        """Floating-point operations (a multiply-add counts as 2)."""
        out = _numel(self.output_shapes[0])
        inp = _numel(self.input_shape)
        act = out * _ACTIVATION_FLOPS[self.activation]
        bias = out if self.bias else 0
        kh, kw = self.kernel_hw
        if self.op == "conv":
            return 2 * out * (self.input_shape[1] // self.groups) * kh * kw + bias + act
        if self.op == "deconv":
            return 2 * inp * (self.out_channels // self.groups) * kh * kw + bias + act
        if self.op == "gemm":
            return 2 * out * self.input_shape[-1] + bias + act
        if self.op in ("maxpool", "avgpool"):
            return out * kh * kw
        if self.op in ("globalavgpool", "globalmaxpool", "reduce"):
            return inp
        if self.op in ("add", "mul"):
            return out
        if self.op == "act":
            return act
        if self.op == "bn":
            return 2 * out
        if self.op in ("layernorm", "instancenorm"):
            return 8 * out
        if self.op == "softmax":
            return 5 * out
        if self.op == "resize" and self.mode == "linear":
            return 4 * out
        return 0  # concat, split, slice, shuffle, pad, transpose, nearest resize only move data

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
        if dtype in INT_DTYPES and self.op in ("conv", "gemm") and activation in RANGE_ACTIVATIONS:
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
    "gelu": 8,
    "mish": 10,
    "tanh": 6,
    "leakyrelu": 2,
    "elu": 5,
    "erf": 6,
    "softplus": 4,
    "prelu": 2,
    "sqrt": 1,
    "square": 1,
    "exp": 4,
    "log": 4,
    "abs": 1,
    "neg": 1,
    "reciprocal": 1,
    "selu": 5,
    "celu": 5,
}


def _numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pair_or_int(value) -> int | tuple[int, int]:
    """An int for the square case, an (h, w) tuple otherwise."""
    if isinstance(value, (tuple, list)):
        h, w = (int(v) for v in value)
        return h if h == w else (h, w)
    return int(value)


def _format_value(short: str, value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, tuple):
        return ("x" if short in ("k", "s", "p", "d") else "+").join(str(v) for v in value)
    return str(value)


def _parse_value(short: str, raw: str, key: str) -> object:
    try:
        if short == "in":
            return tuple(int(v) for v in raw.split("x"))
        if short in ("parts", "perm"):
            return tuple(int(v) for v in raw.split("+"))
        if short in ("k", "s", "p", "d"):
            values = tuple(int(v) for v in raw.split("x"))
            if len(values) not in (1, 2):
                raise ValueError(raw)
            return values[0] if len(values) == 1 else values
        if short == "bias":
            if raw not in ("0", "1"):
                raise ValueError(raw)
            return raw == "1"
        if short in ("act", "bcast", "dtype", "mode", "w"):
            return raw
        return int(raw)
    except ValueError:
        raise InvalidOpSpecError(f"bad value {raw!r} for {short!r} in key {key!r}") from None


_INT_FIELDS = ("out_channels", "groups", "axis")


def _check_types(spec: OpSpec) -> None:
    """Sizes are whole numbers and names are strings: ``stride=2.5`` or ``input_shape=(1, 3.5, 8, 8)``
    is refused, not cut."""

    def integer(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidOpSpecError(f"invalid {spec.op} op: {name} must be an integer, got {value!r}")

    for name in ("op", "activation", "broadcast", "dtype", "mode", "weights"):
        if not isinstance(getattr(spec, name), str):
            raise InvalidOpSpecError(
                f"invalid {spec.op!r} op: {name} must be a string, got {getattr(spec, name)!r}"
            )
    if not isinstance(spec.bias, bool) and spec.bias not in (0, 1):
        raise InvalidOpSpecError(f"invalid {spec.op} op: bias must be true or false, got {spec.bias!r}")
    for name in _INT_FIELDS:
        integer(name, getattr(spec, name))
    for name in _PAIRS:
        value = getattr(spec, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if isinstance(value, (tuple, list)) and len(value) != 2:
            raise InvalidOpSpecError(
                f"invalid {spec.op} op: {name} must be an integer or (h, w), got {value!r}"
            )
        for v in values:
            integer(name, v)
    for name in ("input_shape", "parts", "perm"):
        value = getattr(spec, name)
        if not isinstance(value, (tuple, list)):
            raise InvalidOpSpecError(
                f"invalid {spec.op} op: {name} must be a list of integers, got {value!r}"
            )
        for v in value:
            integer(name, v)


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
    if spec.weights not in WEIGHT_SOURCES:
        fail(f"unknown weights {spec.weights!r}; use one of {', '.join(WEIGHT_SOURCES)}")
    if spec.weights == "dequantized" and spec.dtype != "float32":
        fail("weights 'dequantized' marks a float32 conv (an 8-bit conv reads its 8-bit weights)")
    if spec.weights == "runtime" and spec.dtype not in INT_DTYPES:
        fail("weights 'runtime' marks an 8-bit conv (the runtime quantizes its float32 weights)")
    if spec.dtype in INT_DTYPES and spec.op == "act" and spec.activation not in QLINEAR_ACTIVATIONS:
        fail(
            f"8-bit activations are {' and '.join(QLINEAR_ACTIVATIONS)} only ({spec.activation} is "
            "folded into the quantization range, or runs in float32)"
        )
    ranks = _RANKS.get(spec.op, (4,))
    if len(spec.input_shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        fail(f"input_shape {spec.input_shape} must have {want} dimensions (N, C, H, W for 4)")
    if spec.dtype in INT_DTYPES and spec.op == "gemm" and len(spec.input_shape) != 2:
        fail("an 8-bit gemm takes a (N, C) input")
    if any(v <= 0 for v in spec.input_shape):
        fail(f"input_shape {spec.input_shape} has a size <= 0; every dimension must be positive")
    if spec.activation not in ACTIVATIONS:
        fail(f"unknown activation {spec.activation!r}; use one of {', '.join(ACTIVATIONS)}")
    if spec.broadcast not in BROADCASTS:
        fail(f"unknown broadcast {spec.broadcast!r}; use one of {', '.join(BROADCASTS)}")
    if spec.broadcast not in ("none", "channel") and len(spec.input_shape) != 4:
        fail(f"broadcast {spec.broadcast!r} needs an (N, C, H, W) input, got {spec.input_shape}")
    for name in ("kernel", "stride", "dilation"):
        if min(_as_pair(getattr(spec, name))) <= 0:
            fail(f"{name}={getattr(spec, name)} must be positive")
    if spec.groups <= 0:
        fail(f"groups={spec.groups} must be positive")
    if min(spec.padding_hw) < 0:
        fail(f"padding={spec.padding} must be >= 0")
    if spec.op == "act" and spec.activation == "none":
        fail("a standalone activation needs act other than 'none'")
    if spec.op in ("conv", "deconv", "gemm", "slice") and spec.out_channels <= 0:
        fail(f"out_channels={spec.out_channels} must be positive")
    if spec.op in ("conv", "deconv"):
        cin = spec.input_shape[1]
        if cin % spec.groups or spec.out_channels % spec.groups:
            fail(
                f"groups={spec.groups} must divide both input channels ({cin}) "
                f"and output channels ({spec.out_channels})"
            )
    if spec.op in ("conv", "maxpool", "avgpool"):
        (kh, kw), (dh, dw), (ph, pw) = spec.kernel_hw, spec.dilation_hw, spec.padding_hw
        h, w = spec.input_shape[2:]
        span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if span_h > h + 2 * ph or span_w > w + 2 * pw:
            fail(
                f"kernel {spec.kernel} (dilated span {span_h}x{span_w}) is larger than the padded input "
                f"{h + 2 * ph}x{w + 2 * pw}; lower the kernel or raise padding"
            )
        if spec.op != "conv" and (ph * 2 > kh or pw * 2 > kw):
            fail(f"padding={spec.padding} must be at most half the kernel ({spec.kernel}) for pooling")
    if spec.op == "deconv" and min(spec.output_shapes[0][2:]) <= 0:
        fail(f"the transposed conv's output {spec.output_shapes[0]} is empty; lower the padding")
    if spec.axis not in (1, 2, 3):
        fail(f"axis={spec.axis} must be 1, 2 or 3 (channels, rows, columns)")
    size = spec.input_shape[spec.axis] if spec.axis < len(spec.input_shape) else 0
    if spec.op in ("concat", "split"):
        if len(spec.parts) < 2 or any(p <= 0 for p in spec.parts):
            fail(f"parts={spec.parts} needs at least two positive sizes")
        if sum(spec.parts) != size:
            fail(f"parts={spec.parts} sum to {sum(spec.parts)}, but axis {spec.axis} has size {size}")
    if spec.op == "slice" and spec.out_channels > size:
        fail(f"out={spec.out_channels} must be at most the {size} of axis {spec.axis}")
    if spec.op == "shuffle" and (spec.groups < 2 or spec.input_shape[1] % spec.groups):
        fail(f"groups={spec.groups} must be >= 2 and divide the channels ({spec.input_shape[1]})")
    if spec.op == "pad" and spec.mode not in PAD_MODES:
        fail(f"mode {spec.mode!r}: use one of {', '.join(PAD_MODES)}")
    if spec.op == "pad" and max(spec.padding_hw) == 0:
        fail("a pad of 0 is no op")
    if spec.op == "resize" and spec.mode not in RESIZE_MODES:
        fail(f"mode {spec.mode!r}: use one of {', '.join(RESIZE_MODES)}")
    if spec.op == "reduce" and spec.mode not in REDUCE_MODES:
        fail(f"mode {spec.mode!r}: use one of {', '.join(REDUCE_MODES)}")
    if spec.op == "pixelshuffle":
        (s, s_w), (c, h, w) = spec.stride_hw, spec.input_shape[1:]
        if spec.mode not in PIXEL_SHUFFLE_MODES:
            fail(f"mode {spec.mode!r}: use one of {', '.join(PIXEL_SHUFFLE_MODES)}")
        if s != s_w or s < 2:
            fail(f"s={spec.stride} must be one block size of at least 2")
        if spec.mode == "up" and c % (s * s):
            fail(f"{c} channels do not make {s}x{s} blocks; the channels must be a multiple of {s * s}")
        if spec.mode == "down" and (h % s or w % s):
            fail(f"a {h}x{w} map does not split into {s}x{s} blocks")
    if spec.op == "transpose" and sorted(spec.perm) != list(range(len(spec.input_shape))):
        fail(f"perm={spec.perm} must order the {len(spec.input_shape)} axes")


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
                # ValueError: a number of more digits than Python converts (over 4300)
                except (ValueError, RecursionError) as exc:
                    reason = (
                        exc.msg
                        if isinstance(exc, json.JSONDecodeError)
                        else "nested too deep"
                        if isinstance(exc, RecursionError)
                        else "a number with too many digits"
                    )
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
