"""Once-for-All's MobileNetV3 space (Cai et al., ICLR 2020).

Configuration from OFA's ``OFAMobileNetV3`` (width multiplier 1.0): a 3x3 stride-2 conv to
16 channels (hardswish), a fixed 3x3 block 16 -> 16 without expansion (ReLU, residual), then
five stages of widths 24, 40, 80, 112, 160, first strides 2, 2, 2, 1, 2, activations ReLU,
ReLU, hardswish, hardswish, hardswish and squeeze-and-excite in stages 2, 4 and 5; then a
1x1 conv to 960 (hardswish), global pooling, a 1x1 conv to 1280 without BN or bias
(hardswish) and a 1000-way classifier.

Searchable: each stage's depth {2, 3, 4}, each block's kernel {3, 5, 7} and expansion
{3, 4, 6} (middle channels make_divisible(round(in x e), 8); SE reduces to
make_divisible(middle // 4, 8)), and the input resolution {160, 176, 192, 208, 224}.
Blocks beyond a stage's depth do not run; their kernel and expansion are 0 in the tuple.
OFA pools with two ReduceMean; here it is a GlobalAveragePool (the same result).
"""

from __future__ import annotations

from collections.abc import Sequence

from hwlat.search.spaces.base import Decision, SearchSpace, Slot, ofa_key
from hwlat.search.spaces.blocks import inverted_residual, make_divisible

STEM_CHANNELS = 16
FIRST_BLOCK_CHANNELS = 16
STAGES = (  # width, first stride, activation, squeeze-and-excite
    (24, 2, "relu", False),
    (40, 2, "relu", True),
    (80, 2, "hardswish", False),
    (112, 1, "hardswish", True),
    (160, 2, "hardswish", True),
)
FINAL_EXPAND_CHANNELS = 960
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
RESOLUTIONS = (160, 176, 192, 208, 224)


class OfaMbv3Space(SearchSpace):
    name = "ofa_mbv3"

    def __init__(self, resolutions: Sequence[int] = RESOLUTIONS) -> None:
        decisions = [Decision("resolution", tuple(int(r) for r in resolutions))]
        slots = [
            Slot("stem", (0,), _stem, lambda i, o, v: ofa_key("Conv", i, o)),
            Slot("first_block", (0,), _first_block, _first_block_key),
        ]
        self.depth_decisions: list[int] = []
        self.block_decisions: list[list[tuple[int, int]]] = []  # per stage: (kernel, expand) indices
        for s, (width, stride, act, se) in enumerate(STAGES, 1):
            depth = len(decisions)
            decisions.append(Decision(f"stage{s}.depth", DEPTHS))
            self.depth_decisions.append(depth)
            stage = []
            for b in range(max(DEPTHS)):
                k, e = len(decisions), len(decisions) + 1
                decisions += [
                    Decision(f"stage{s}.block{b}.kernel", KERNELS),
                    Decision(f"stage{s}.block{b}.expand", EXPANDS),
                ]
                stage.append((k, e))
                # Blocks every depth keeps do not depend on the depth decision.
                deps = (0, k, e) if b < min(DEPTHS) else (0, depth, k, e)
                block = _Block(b, width, stride if b == 0 else 1, act, se)
                slots.append(Slot(f"stage{s}.block{b}", deps, block.build, block.key))
            self.block_decisions.append(stage)
        slots += [
            Slot("final_expand", (0,), _final_expand, lambda i, o, v: ofa_key("Conv_1", i, o)),
            Slot("pool", (0,), lambda net, x, v: net.gap(x), lambda i, o, v: ofa_key("AvgPool2D", i, o)),
            Slot("feature_mix", (0,), _feature_mix, lambda i, o, v: ofa_key("Conv_2", i, o)),
            Slot(
                "classifier",
                (0,),
                lambda net, x, v: net.linear(x, NUM_CLASSES),
                lambda i, o, v: ofa_key("Logits", i, o[1]),
            ),
        ]
        super().__init__(decisions, slots)

    def active(self, arch: Sequence[int]) -> list[bool]:
        on = [True] * len(self.decisions)
        for depth, stage in zip(self.depth_decisions, self.block_decisions, strict=True):
            for b, (k, e) in enumerate(stage):
                if b >= DEPTHS[arch[depth]]:
                    on[k] = on[e] = False
        return on

    def size(self) -> int:
        per_stage = sum((len(KERNELS) * len(EXPANDS)) ** d for d in DEPTHS)
        return len(self.resolutions) * per_stage ** len(STAGES)


class _Block:
    """One searchable block position; the last values are (kernel, expansion)."""

    def __init__(self, index: int, width: int, stride: int, act: str, se: bool) -> None:
        self.index, self.width, self.stride, self.act, self.se = index, width, stride, act, se

    def _runs(self, values: tuple) -> bool:
        return len(values) == 3 or self.index < values[1]

    def _mid(self, in_channels: int, expand: int) -> int:
        return make_divisible(round(in_channels * expand), 8)

    def build(self, net, x, values):
        if not self._runs(values):
            return x
        kernel, expand = values[-2:]
        mid = self._mid(x.shape[1], expand)
        return inverted_residual(
            net,
            x,
            self.width,
            kernel,
            self.stride,
            mid,
            self.act,
            se_mid=make_divisible(mid // 4, 8) if self.se else 0,
        )

    def key(self, in_shape, out_shape, values):
        if not self._runs(values):
            return None
        kernel, expand = values[-2:]
        return ofa_key(
            "expanded_conv",
            in_shape,
            out_shape,
            expand=self._mid(in_shape[1], expand),
            kernel=kernel,
            stride=self.stride,
            idskip=int(self.stride == 1 and in_shape[1] == self.width),
            se=int(self.se),
            hs=int(self.act == "hardswish"),
        )


def _stem(net, x, values):
    return net.conv(x, STEM_CHANNELS, 3, stride=2, act="hardswish")


def _first_block(net, x, values):
    return inverted_residual(net, x, FIRST_BLOCK_CHANNELS, 3, 1, mid=x.shape[1], act="relu", expand=False)


def _first_block_key(in_shape, out_shape, values):
    return ofa_key(
        "expanded_conv", in_shape, out_shape, expand=in_shape[1], kernel=3, stride=1, idskip=1, se=0, hs=0
    )


def _final_expand(net, x, values):
    return net.conv(x, FINAL_EXPAND_CHANNELS, 1, act="hardswish")


def _feature_mix(net, x, values):
    return net.conv(x, LAST_CHANNELS, 1, act="hardswish", bn=False, bias=False)
