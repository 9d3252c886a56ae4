"""ProxylessNAS's space (Cai et al., ICLR 2019): a MobileNetV2 backbone with searchable blocks.

Configuration from the ProxylessNAS search code (``imagenet_arch_search.py``,
``SuperProxylessNASNets``): a 3x3 stride-2 conv to 32 channels, a fixed MBConv1 3x3 block
to 16, six stages of widths 24, 40, 80, 96, 192, 320 with 4, 4, 4, 4, 4, 1 blocks and first
strides 2, 2, 2, 1, 2, 1, a 1x1 conv to 1280 and a 1000-way classifier; ReLU6 throughout.
Each searchable block is an MBConv with kernel {3, 5, 7} x expansion {3, 6} (middle channels
round(in x e)), or "zero" (the block is skipped) where it is not the first of its stage.

Skipped blocks are identities between equal shapes, so a stage's kept blocks are moved to
its front: [A, zero, B, zero] and [A, B, zero, zero] are the same network and the same tuple.
"""

from __future__ import annotations

from collections.abc import Sequence

from hwlat.search.spaces.base import Decision, SearchSpace, Slot, ofa_key
from hwlat.search.spaces.blocks import inverted_residual

STEM_CHANNELS = 32
FIRST_BLOCK_CHANNELS = 16
STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))  # width, blocks, stride
LAST_CHANNELS = 1280
NUM_CLASSES = 1000
BLOCKS = ("mb_k3_e3", "mb_k3_e6", "mb_k5_e3", "mb_k5_e6", "mb_k7_e3", "mb_k7_e6")
ZERO = "zero"
ACT = "relu6"


class ProxylessSpace(SearchSpace):
    name = "proxyless"

    def __init__(self, resolutions: Sequence[int] = (224,)) -> None:
        decisions = [Decision("resolution", tuple(int(r) for r in resolutions))]
        slots = [
            Slot("stem", (0,), _stem, lambda i, o, v: ofa_key("Conv", i, o)),
            Slot("first_block", (0,), _first_block, _first_block_key),
        ]
        self.stage_decisions: list[list[int]] = []
        for s, (width, blocks, stride) in enumerate(STAGES, 1):
            indices = []
            for b in range(blocks):
                name = f"stage{s}.block{b}"
                indices.append(len(decisions))
                decisions.append(Decision(name, BLOCKS if b == 0 else (*BLOCKS, ZERO)))
                block_stride = stride if b == 0 else 1
                slots.append(
                    Slot(
                        name,
                        (0, indices[-1]),
                        _block_builder(width, block_stride),
                        _block_key(width, block_stride),
                    )
                )
            self.stage_decisions.append(indices)
        slots += [
            Slot("feature_mix", (0,), _feature_mix, lambda i, o, v: ofa_key("Conv_1", i, o)),
            Slot("classifier", (0,), _classifier, lambda i, o, v: ofa_key("Logits", i, o[1])),
        ]
        super().__init__(decisions, slots)

    def _canonical(self, arch: list[int]) -> list[int]:
        zero = len(BLOCKS)
        for indices in self.stage_decisions:
            kept = [arch[i] for i in indices if arch[i] != zero]
            for i, value in zip(indices, kept + [zero] * (len(indices) - len(kept)), strict=True):
                arch[i] = value
        return arch

    def size(self) -> int:
        total = len(self.resolutions)
        for _, blocks, _ in STAGES:
            total *= len(BLOCKS) * sum(len(BLOCKS) ** d for d in range(blocks))
        return total


def parse_block(choice: str) -> tuple[int, int]:
    """``"mb_k5_e3"`` -> (kernel 5, expansion 3)."""
    _, k, e = choice.split("_")
    return int(k[1:]), int(e[1:])


def _stem(net, x, values):
    return net.conv(x, STEM_CHANNELS, 3, stride=2, act=ACT)


def _first_block(net, x, values):
    return inverted_residual(net, x, FIRST_BLOCK_CHANNELS, 3, 1, mid=x.shape[1], act=ACT, expand=False)


def _first_block_key(in_shape, out_shape, values):
    return ofa_key("expanded_conv", in_shape, out_shape, expand=1, kernel=3, stride=1, idskip=0)


def _block_builder(width: int, stride: int):
    def build(net, x, values):
        if values[1] == ZERO:
            return x
        kernel, expand = parse_block(values[1])
        return inverted_residual(net, x, width, kernel, stride, mid=round(x.shape[1] * expand), act=ACT)

    return build


def _block_key(width: int, stride: int):
    def key(in_shape, out_shape, values):
        if values[1] == ZERO:
            return None
        kernel, expand = parse_block(values[1])
        idskip = int(stride == 1 and in_shape[1] == width)
        return ofa_key(
            "expanded_conv", in_shape, out_shape, expand=expand, kernel=kernel, stride=stride, idskip=idskip
        )

    return key


def _feature_mix(net, x, values):
    return net.conv(x, LAST_CHANNELS, 1, act=ACT)


def _classifier(net, x, values):
    return net.linear(net.gap(x), NUM_CLASSES)
