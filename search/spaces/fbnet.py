"""FBNet's space (Wu et al., CVPR 2019): 22 searchable layers with 9 candidate blocks each.

Macro-architecture from the paper's Table 1: a 3x3 stride-2 conv to 16 channels, then
searchable layers in stages of (width, layers, first stride) (16, 1, 1), (24, 4, 2),
(32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1), a 1x1 conv to 1984, global
pooling and a 1000-way classifier; ReLU throughout. Candidates (Table 2): k3_e1, k3_e1_g2,
k3_e3, k3_e6, k5_e1, k5_e1_g2, k5_e3, k5_e6 and skip. A block is 1x1 (group) conv + ReLU
[channel shuffle when g2], kxk depthwise + ReLU, 1x1 (group) conv, residual when the shape
is unchanged (the paper's Figure 3; the 1x1 expansion runs for e1 too). ``skip`` is an
identity where shapes allow it and otherwise, as in FBNet's code, a 1x1 conv + BN + ReLU
with the layer's stride.

Identity skips between equal shapes are moved to the end of their stage, so equal networks
are equal tuples; ``size()`` counts those networks (9**22 counts the raw decision tuples).
"""

from __future__ import annotations

from collections.abc import Sequence

from hwlat.search.spaces.base import Decision, SearchSpace, Slot, ofa_key
from hwlat.search.spaces.blocks import inverted_residual

STEM_CHANNELS = 16
STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))
HEAD_CHANNELS = 1984
NUM_CLASSES = 1000
BLOCKS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
SKIP = "skip"


class FbnetSpace(SearchSpace):
    name = "fbnet"

    def __init__(self, resolutions: Sequence[int] = (224,)) -> None:
        decisions = [Decision("resolution", tuple(int(r) for r in resolutions))]
        slots = [Slot("stem", (0,), _stem, lambda i, o, v: ofa_key("Conv", i, o))]
        self.identity_runs: list[list[int]] = []  # per stage: layers where skip is an identity
        in_channels = STEM_CHANNELS
        for s, (width, layers, stride) in enumerate(STAGES, 1):
            run = []
            for b in range(layers):
                name = f"stage{s}.block{b}"
                layer_stride = stride if b == 0 else 1
                if layer_stride == 1 and in_channels == width:
                    run.append(len(decisions))
                decisions.append(Decision(name, BLOCKS))
                layer = _Layer(width, layer_stride)
                slots.append(Slot(name, (0, len(decisions) - 1), layer.build, layer.key))
                in_channels = width
            self.identity_runs.append(run)
        slots += [
            Slot("head_conv", (0,), _head_conv, lambda i, o, v: ofa_key("Conv_1", i, o)),
            Slot(
                "classifier",
                (0,),
                lambda net, x, v: net.linear(net.gap(x), NUM_CLASSES),
                lambda i, o, v: ofa_key("Logits", i, o[1]),
            ),
        ]
        super().__init__(decisions, slots)

    def _canonical(self, arch: list[int]) -> list[int]:
        skip = BLOCKS.index(SKIP)
        for run in self.identity_runs:
            kept = [arch[i] for i in run if arch[i] != skip]
            for i, value in zip(run, kept + [skip] * (len(run) - len(kept)), strict=True):
                arch[i] = value
        return arch

    def size(self) -> int:
        # Outside identity runs every candidate is a different network; inside a run of L
        # layers only the sequence of non-skip blocks counts (length 0..L).
        non_skip = len(BLOCKS) - 1
        total = len(self.resolutions)
        for run in self.identity_runs:
            total *= sum(non_skip**d for d in range(len(run) + 1))
        other_layers = len(self.decisions) - 1 - sum(len(run) for run in self.identity_runs)
        return total * len(BLOCKS) ** other_layers


def parse_block(choice: str) -> tuple[int, int, int]:
    """``"k5_e1_g2"`` -> (kernel 5, expansion 1, groups 2)."""
    parts = choice.split("_")
    groups = int(parts[2][1:]) if len(parts) == 3 else 1
    return int(parts[0][1:]), int(parts[1][1:]), groups


class _Layer:
    def __init__(self, width: int, stride: int) -> None:
        self.width, self.stride = width, stride

    def _identity(self, in_shape: tuple) -> bool:
        return self.stride == 1 and in_shape[1] == self.width

    def build(self, net, x, values):
        if values[1] == SKIP:
            if self._identity(x.shape):
                return x
            return net.conv(x, self.width, 1, stride=self.stride, act="relu")
        kernel, expand, groups = parse_block(values[1])
        return inverted_residual(
            net, x, self.width, kernel, self.stride, mid=x.shape[1] * expand, act="relu", groups=groups
        )

    def key(self, in_shape, out_shape, values):
        if values[1] == SKIP:
            return (
                None if self._identity(in_shape) else ofa_key("Skip", in_shape, out_shape, stride=self.stride)
            )
        kernel, expand, groups = parse_block(values[1])
        return ofa_key(
            "expanded_conv",
            in_shape,
            out_shape,
            expand=expand,
            kernel=kernel,
            stride=self.stride,
            idskip=int(self._identity(in_shape)),
            group=groups,
        )


def _stem(net, x, values):
    return net.conv(x, STEM_CHANNELS, 3, stride=2, act="relu")


def _head_conv(net, x, values):
    return net.conv(x, HEAD_CHANNELS, 1, act="relu")
