"""Random kernel configurations in the ranges CNNs use, for training kernel regressors.

Each draw builds a short op pattern (a conv, a residual ``conv -> add -> relu``, a
``concat -> shuffle -> split``, an SE block, a factorised or dilated conv, a transposed conv,
a channels-last norm or linear layer, a pad, slice or upsampling, ...) and groups it with the backend's fusion
rules, so the kernels sampled are the kernels the splitter produces for real networks.
Channel counts are mostly multiples of 8 with a quarter arbitrary (ONNX Runtime switches
convolution layouts on channel alignment, so the odd ones must be seen too).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.opspec import INT_DTYPES, InvalidOpSpecError, OpSpec

MAX_FLOPS = 2e9  # keeps one measurement under a few hundred ms on a small CPU
ACTIVATIONS = (
    "none",
    "relu",
    "relu6",
    "hardswish",
    "swish",
    "hardsigmoid",
    "sigmoid",
    "gelu",
    "mish",
    "leakyrelu",
    "elu",
    "tanh",
    "prelu",
)
_ACT_WEIGHTS = (4, 4, 2, 2, 2, 0.5, 0.5, 1, 0.5, 0.5, 0.3, 0.2, 0.3)


@dataclass
class KernelSampler:
    """Draws kernels; ``weights`` maps pattern names (see ``PATTERNS``) to relative frequency."""

    rules: FusionRules
    random_state: int | None = None
    weights: dict[str, float] | None = None
    dtypes: tuple[str, ...] = ("float32",)  # each draw runs in one of these (8-bit: QDQ kernels)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.random_state)

    def sample(self, n: int) -> list[Kernel]:
        """``n`` distinct kernels (a pattern that fuses into fewer kernels gives all of them), then
        the weight twins of their 8-bit convs (``weight_twins``)."""
        weights = self.weights or DEFAULT_WEIGHTS
        names = list(weights)
        p = np.array([weights[k] for k in names], dtype=float)
        p /= p.sum()
        found: dict[Kernel, None] = {}
        attempts = 0
        while len(found) < n and attempts < 50 * n:
            attempts += 1
            pattern = PATTERNS[names[self._rng.choice(len(names), p=p)]]
            dtype = str(self._rng.choice(self.dtypes))
            try:
                ops = pattern(self._rng)
                if dtype != "float32":
                    ops = in_8_bits(ops, dtype, self._rng)
            except InvalidOpSpecError:
                continue
            if not ops:
                continue
            if any(op.flops > MAX_FLOPS for op in ops):
                continue
            for kernel in self.rules.group(ops):
                found.setdefault(kernel)
        drawn = list(found)[:n]
        return list(dict.fromkeys(drawn + [twin for k in drawn for twin in weight_twins(k)]))


def channels(rng: np.random.Generator, lo: int = 8, hi: int = 1024) -> int:
    value = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if rng.random() < 0.75:
        return max(8, int(round(value / 8)) * 8)
    return max(3, int(round(value)))


def resolution(rng: np.random.Generator, hi: int = 112) -> int:
    """A feature map's side: a CNN's usual sizes, or any size down to the 2x2 and 3x3 of a
    network's last stage at 64-96 px input."""
    if rng.random() < 0.6:
        return int(rng.choice([r for r in (7, 14, 28, 56, 112, 224) if r <= hi]))
    return int(rng.integers(2, hi + 1))


def activation(rng: np.random.Generator) -> str:
    p = np.array(_ACT_WEIGHTS) / sum(_ACT_WEIGHTS)
    return str(rng.choice(ACTIVATIONS, p=p))


def _conv(rng: np.random.Generator) -> list[OpSpec]:
    k = int(rng.choice([1, 1, 3, 3, 5, 7]))
    hw = resolution(rng)
    s = 2 if rng.random() < 0.2 and hw >= 4 else 1
    return [
        OpSpec(
            "conv",
            (1, channels(rng), hw, hw),
            out_channels=channels(rng),
            kernel=k,
            stride=s,
            padding=k // 2,
            activation=activation(rng),
            bias=bool(rng.random() < 0.9),
        )
    ]


def _shaped_conv(rng: np.random.Generator) -> list[OpSpec]:
    """Factorised (1xk or kx1), dilated, and rectangular-input convs, dense or depthwise."""
    hw = resolution(rng, 56)
    h, w = (hw, hw) if rng.random() < 0.7 else (hw, max(4, int(hw * rng.uniform(0.5, 1.5))))
    c = channels(rng, 8, 512)
    depthwise = rng.random() < 0.3
    kernel: int | tuple[int, int] = 3
    padding: int | tuple[int, int] = 1
    dilation = 1
    if rng.random() < 0.5:
        k = int(rng.choice([3, 5, 7]))
        kernel, padding = ((1, k), (0, k // 2)) if rng.random() < 0.5 else ((k, 1), (k // 2, 0))
    else:
        dilation = int(rng.choice([2, 3, 4, 6]))
        padding = dilation
    return [
        OpSpec(
            "conv",
            (1, c, h, w),
            out_channels=c if depthwise else channels(rng, 8, 512),
            kernel=kernel,
            padding=padding,
            dilation=dilation,
            groups=c if depthwise else 1,
            activation=activation(rng),
        )
    ]


def _deconv(rng: np.random.Generator) -> list[OpSpec]:
    hw = resolution(rng, 56)
    k, s = [(2, 2), (4, 2), (3, 1), (3, 2)][int(rng.integers(4))]
    p = 1 if (k, s) in ((4, 2), (3, 1)) else 0
    return [
        OpSpec(
            "deconv",
            (1, channels(rng, 8, 512), hw, hw),
            out_channels=channels(rng, 8, 256),
            kernel=k,
            stride=s,
            padding=p,
            activation=str(rng.choice(["none", "relu", "relu"])),
        )
    ]


def _channels_last(rng: np.random.Generator) -> list[OpSpec]:
    """A transformer-style block on (N, H, W, C) or (N, L, C): norm, linear, activation."""
    c = channels(rng, 16, 768)
    hw = resolution(rng, 56)
    shape = (1, hw, hw, c) if rng.random() < 0.5 else (1, hw * hw, c)
    choice = str(rng.choice(["layernorm", "gemm", "gemm", "softmax", "act", "add"]))
    if choice == "gemm":
        return [
            OpSpec("gemm", shape, out_channels=channels(rng, 16, 3072), activation=activation(rng)),
        ]
    if choice == "act":
        return [OpSpec("act", shape, activation=str(rng.choice(ACTIVATIONS[1:])))]
    if choice == "add":
        return [OpSpec("add", shape, broadcast=str(rng.choice(["none", "channel"])))]
    return [OpSpec(choice, shape)]


def _layout(rng: np.random.Generator) -> list[OpSpec]:
    """Data movement between blocks: transposes, channel slices, pads, upsampling."""
    hw = resolution(rng, 112)
    c = channels(rng, 8, 512)
    x = (1, c, hw, hw)
    choice = str(rng.choice(["transpose", "slice", "pad", "resize", "resize"]))
    if choice == "transpose":
        return [OpSpec("transpose", x, perm=(0, 2, 3, 1) if rng.random() < 0.7 else (0, 3, 1, 2))]
    if choice == "slice":
        # one draw in nine keeps every channel: a copy ONNX Runtime runs (a ghost module's x[:, :c])
        return [OpSpec("slice", x, out_channels=min(c, max(1, int(c * rng.uniform(0.2, 1.1)))))]
    if choice == "pad":
        return [
            OpSpec(
                "pad",
                x,
                padding=int(rng.choice([1, 1, 2, 3])),
                mode=str(rng.choice(["constant", "reflect", "edge"])),
            )
        ]
    return [
        OpSpec("resize", x, stride=int(rng.choice([2, 2, 4])), mode=str(rng.choice(["nearest", "linear"])))
    ]


def _norm(rng: np.random.Generator) -> list[OpSpec]:
    """A batch norm no conv absorbs (pre-activation networks), usually with its activation."""
    hw = resolution(rng)
    x = (1, channels(rng), hw, hw)
    ops = [OpSpec("bn", x)]
    if rng.random() < 0.7:
        ops.append(OpSpec("act", x, activation=str(rng.choice(["relu", "relu", "swish", "gelu"]))))
    return ops


def _instance_norm(rng: np.random.Generator) -> list[OpSpec]:
    """An instance norm, or a group norm's core as torch writes it: the norm over (N, groups,
    C / groups * H * W); its per-channel multiply and add are element-wise kernels."""
    hw, c = resolution(rng, 56), channels(rng, 16, 512)
    if rng.random() < 0.5:
        return [OpSpec("instancenorm", (1, c, hw, hw))]
    groups = int(rng.choice([g for g in (4, 8, 16, 32) if c % g == 0] or [1]))
    return [OpSpec("instancenorm", (1, groups, c // groups * hw * hw))]


def _stem(rng: np.random.Generator) -> list[OpSpec]:
    k = int(rng.choice([3, 5, 7]))
    hw = int(rng.choice([96, 128, 160, 192, 224, 256]))
    return [
        OpSpec(
            "conv",
            (1, 3, hw, hw),
            out_channels=channels(rng, 8, 96),
            kernel=k,
            stride=2,
            padding=k // 2,
            activation=activation(rng),
        )
    ]


def _dwconv(rng: np.random.Generator) -> list[OpSpec]:
    c = channels(rng, 8, 1536)
    k = int(rng.choice([3, 3, 5, 7]))
    hw = resolution(rng)
    s = 2 if rng.random() < 0.25 and hw >= 4 else 1
    return [
        OpSpec(
            "conv",
            (1, c, hw, hw),
            out_channels=c,
            kernel=k,
            stride=s,
            padding=k // 2,
            groups=c,
            activation=activation(rng),
        )
    ]


def _group_conv(rng: np.random.Generator) -> list[OpSpec]:
    g = int(rng.choice([2, 4, 8, 32]))
    c = g * max(1, channels(rng) // g)
    k = int(rng.choice([1, 3]))
    hw = resolution(rng, 56)
    return [
        OpSpec(
            "conv",
            (1, c, hw, hw),
            out_channels=c,
            kernel=k,
            padding=k // 2,
            groups=g,
            activation=activation(rng),
        )
    ]


def _residual(rng: np.random.Generator) -> list[OpSpec]:
    c_in, c, hw = channels(rng), channels(rng), resolution(rng)
    k = int(rng.choice([1, 1, 3]))
    x = (1, c, hw, hw)
    ops = [OpSpec("conv", (1, c_in, hw, hw), out_channels=c, kernel=k, padding=k // 2), OpSpec("add", x)]
    if rng.random() < 0.5:
        ops.append(OpSpec("act", x, activation="relu"))
    return ops


def _gemm(rng: np.random.Generator) -> list[OpSpec]:
    return [
        OpSpec(
            "gemm",
            (1, channels(rng, 16, 4096)),
            out_channels=int(rng.choice([10, 100, 1000, 1000, channels(rng, 16, 2048)])),
            activation=str(rng.choice(["none", "none", "relu", "hardswish"])),
        )
    ]


def _pool(rng: np.random.Generator) -> list[OpSpec]:
    k = int(rng.choice([2, 3, 3]))
    hw = resolution(rng)
    pad = int(k == 3 and rng.random() < 0.5)
    return [
        OpSpec(
            str(rng.choice(["maxpool", "maxpool", "avgpool"])),
            (1, channels(rng), hw, hw),
            kernel=min(k, hw),
            stride=int(rng.choice([1, 2, 2])),
            padding=pad,
        )
    ]


def _gap(rng: np.random.Generator) -> list[OpSpec]:
    op = "globalavgpool" if rng.random() < 0.8 else "globalmaxpool"
    return [OpSpec(op, (1, channels(rng, 16, 2048), resolution(rng, 56), resolution(rng, 56)))]


def _eltwise(rng: np.random.Generator) -> list[OpSpec]:
    hw = resolution(rng)
    x = (1, channels(rng), hw, hw)
    kind = str(rng.choice(["add", "mul", "act"]))
    if kind == "act":
        return [OpSpec("act", x, activation=str(rng.choice(ACTIVATIONS[1:])))]
    return [OpSpec(kind, x, broadcast=str(rng.choice(["none", "channel"])))]


def _concat(rng: np.random.Generator) -> list[OpSpec]:
    """Concats, with parts aligned to 16 channels in a third of the draws (NCHWc-capable)."""
    hw = resolution(rng)
    n = int(rng.choice([2, 2, 3, 4]))
    if rng.random() < 0.35:
        parts = tuple(16 * max(1, channels(rng, 16, 512) // 16) for _ in range(n))
    else:
        parts = tuple(channels(rng, 8, 512) for _ in range(n))
    return [OpSpec("concat", (1, sum(parts), hw, hw), parts=parts)]


def _split(rng: np.random.Generator) -> list[OpSpec]:
    hw = resolution(rng)
    half = channels(rng, 8, 512)
    return [OpSpec("split", (1, 2 * half, hw, hw), parts=(half, half))]


def _shuffle(rng: np.random.Generator) -> list[OpSpec]:
    hw = resolution(rng)
    g = int(rng.choice([2, 2, 4]))
    return [OpSpec("shuffle", (1, g * channels(rng, 8, 512), hw, hw), groups=g)]


def _shuffle_block(rng: np.random.Generator) -> list[OpSpec]:
    """ShuffleNetV2's concat -> shuffle (-> split of the next unit)."""
    hw = resolution(rng, 56)
    half = 2 * int(rng.integers(12, 260)) // 2
    x = (1, 2 * half, hw, hw)
    ops = [OpSpec("concat", x, parts=(half, half)), OpSpec("shuffle", x, groups=2)]
    if rng.random() < 0.75:
        ops.append(OpSpec("split", x, parts=(half, half)))
    return ops


def _se(rng: np.random.Generator) -> list[OpSpec]:
    c, hw = channels(rng, 16, 1536), resolution(rng, 56)
    r = max(8, int(c * float(rng.choice([0.0625, 0.125, 0.25]))))
    act = str(rng.choice(["relu", "swish"]))
    gate = str(rng.choice(["hardsigmoid", "sigmoid"]))
    return [
        OpSpec("globalavgpool", (1, c, hw, hw)),
        OpSpec("conv", (1, c, 1, 1), out_channels=r, activation=act),
        OpSpec("conv", (1, r, 1, 1), out_channels=c, activation=gate),
        OpSpec("mul", (1, c, hw, hw), broadcast="channel"),
    ]


def _attention(rng: np.random.Generator) -> list[OpSpec]:
    """The attention and norm blocks users add to CNNs, as the exporter writes them: CBAM's
    spatial map (channel mean and max -> 7x7 conv -> sigmoid -> a per-pixel gate), coordinate
    attention (row and column pools -> one conv -> split -> per-row and per-column gates), and a
    layer norm over channels written by hand (ConvNeXt's: mean, subtract, square, mean, sqrt,
    divide, scale and shift)."""
    hw, c = resolution(rng, 56), channels(rng, 16, 1024)
    x = (1, c, hw, hw)
    choice = str(rng.choice(["cbam", "coordinate", "layernorm"]))
    if choice == "cbam":
        m = (1, 2, hw, hw)
        return [
            OpSpec("reduce", x, mode="mean"),
            OpSpec("reduce", x, mode="max"),
            OpSpec("concat", m, parts=(1, 1)),
            OpSpec("conv", m, out_channels=1, kernel=7, padding=3, activation="sigmoid"),
            OpSpec("mul", x, broadcast="pixel"),
        ]
    if choice == "coordinate":
        mid = max(8, c // 32)
        pooled = (1, c, 2 * hw, 1)
        return [
            OpSpec("avgpool", x, kernel=(1, hw), stride=(1, hw)),
            OpSpec("avgpool", x, kernel=(hw, 1), stride=(hw, 1)),
            OpSpec("concat", pooled, parts=(hw, hw), axis=2),
            OpSpec("conv", pooled, out_channels=mid, activation="hardswish"),
            OpSpec("split", (1, mid, 2 * hw, 1), parts=(hw, hw), axis=2),
            OpSpec("conv", (1, mid, hw, 1), out_channels=c, activation="sigmoid"),
            OpSpec("conv", (1, mid, 1, hw), out_channels=c, activation="sigmoid"),
            OpSpec("mul", x, broadcast="row"),
            OpSpec("mul", x, broadcast="column"),
        ]
    stats = (1, 1, hw, hw)
    return [
        OpSpec("reduce", x, mode="mean"),
        OpSpec("add", x, broadcast="pixel"),
        OpSpec("act", x, activation="square"),
        OpSpec("reduce", x, mode="mean"),
        OpSpec("add", stats, broadcast="channel"),
        OpSpec("act", stats, activation="sqrt"),
        OpSpec("mul", x, broadcast="pixel"),
        OpSpec("mul", x, broadcast="channel"),
        OpSpec("add", x, broadcast="channel"),
    ]


MATH_ACTIVATIONS = ("sqrt", "square", "exp", "log", "abs", "neg", "reciprocal", "selu", "celu")


def _math(rng: np.random.Generator) -> list[OpSpec]:
    """Element-wise math and the rarer activations, on an image or a channels-last tensor."""
    c, hw = channels(rng), resolution(rng, 56)
    shape = (1, c, hw, hw) if rng.random() < 0.7 else (1, hw * hw, c)
    return [OpSpec("act", shape, activation=str(rng.choice(MATH_ACTIVATIONS)))]


def _pixel_shuffle(rng: np.random.Generator) -> list[OpSpec]:
    """A super-resolution upsampler (a conv to r*r times the channels, then PixelShuffle), or a
    PixelUnshuffle that folds pixels into channels."""
    r, hw = int(rng.choice([2, 2, 3, 4])), resolution(rng, 56)
    c = channels(rng, 3, 128)
    if rng.random() < 0.7:
        x = (1, c * r * r, hw, hw)
        return [
            OpSpec("conv", (1, channels(rng, 8, 256), hw, hw), out_channels=c * r * r, kernel=3, padding=1),
            OpSpec("pixelshuffle", x, stride=r, mode="up"),
        ]
    return [OpSpec("pixelshuffle", (1, c, hw * r, hw * r), stride=r, mode="down")]


def in_8_bits(ops: list[OpSpec], dtype: str, rng: np.random.Generator) -> list[OpSpec]:
    """The pattern as a quantized network runs it: each op's 8-bit kernel where one exists (a
    float-only op, e.g. a hardswish, is left out: in a network it runs between conversions),
    and sometimes a conversion at the region's edge (float32 -> 8 bits, or back)."""
    out = []
    for op in ops:
        try:
            out.append(op.as_dtype(dtype))
        except InvalidOpSpecError:
            if op.op in ("conv", "gemm"):  # its activation is the float-only part
                out.append(replace(op, activation="none").as_dtype(dtype))
    if out and rng.random() < 0.15:
        edge = out[0].input_shape if rng.random() < 0.5 else out[-1].output_shapes[0]
        out = [OpSpec(str(rng.choice(["quantize", "dequantize"])), edge, dtype=dtype)]
    return out


def weight_twins(kernel: Kernel) -> list[Kernel]:
    """For one 8-bit conv in four (chosen by its key, so that the random draws stay as they
    were), the same conv as ONNX Runtime runs it with its other weight sources: its float32
    weights quantized by the runtime (a layer left float32 between 8-bit ones), and for int8 the
    float32 conv with dequantized weights that an unfused S8S8 conv runs as (``OpSpec.weights``)."""
    head = kernel.head
    if len(kernel.ops) != 1 or head.op != "conv" or head.dtype not in INT_DTYPES:
        return []
    if zlib.crc32(kernel.key.encode()) % 4:
        return []
    twins = [Kernel((replace(head, weights="runtime"),))]
    if head.dtype == "int8":
        twins.append(Kernel((replace(head, dtype="float32", weights="dequantized"),)))
    return twins


PATTERNS: dict[str, Callable[[np.random.Generator], list[OpSpec]]] = {
    "conv": _conv,
    "stem": _stem,
    "dwconv": _dwconv,
    "group_conv": _group_conv,
    "residual": _residual,
    "gemm": _gemm,
    "pool": _pool,
    "globalavgpool": _gap,
    "eltwise": _eltwise,
    "concat": _concat,
    "split": _split,
    "shuffle": _shuffle,
    "shuffle_block": _shuffle_block,
    "se": _se,
    "shaped_conv": _shaped_conv,
    "deconv": _deconv,
    "channels_last": _channels_last,
    "layout": _layout,
    "norm": _norm,
    "instance_norm": _instance_norm,
    "attention": _attention,
    "math": _math,
    "pixel_shuffle": _pixel_shuffle,
}
DEFAULT_WEIGHTS = {
    "conv": 30,
    "stem": 3,
    "dwconv": 16,
    "group_conv": 2,
    "residual": 10,
    "gemm": 4,
    "pool": 5,
    "globalavgpool": 4,
    "eltwise": 5,
    "concat": 7,
    "split": 3,
    "shuffle": 3,
    "shuffle_block": 5,
    "se": 8,
    "shaped_conv": 5,
    "deconv": 2,
    "channels_last": 5,
    "layout": 4,
    "norm": 3,
    "instance_norm": 1,
    "attention": 3,
    "math": 1,
    "pixel_shuffle": 1,
}
