"""NAS-Bench-201's cell space (Dong & Yang, ICLR 2020): 5 ops on the 6 edges of a 4-node cell.

Macro structure as in NAS-Bench-201 (C=16, N=5, CIFAR 32x32 input, 10 classes): a 3x3 conv
to 16 channels with BN; 5 cells; a residual reduction block to 32 channels; 5 cells; one to
64; 5 cells; BN and ReLU; global pooling; a linear classifier. Every cell has the same
genotype. Edge ops: none, skip_connect, nor_conv_1x1 and nor_conv_3x3 (ReLU -> conv -> BN),
avg_pool_3x3. The reduction block is ReLU-Conv3x3(s2)-BN, ReLU-Conv3x3-BN, plus a 2x2 average
pool and a 1x1 conv on the shortcut.

How it is deployed (what ``ops`` and ``to_onnx`` both show):
* a ``none`` edge runs nothing; a node whose every input edge is ``none`` is zero, computed as
  the cell input times a zero constant (one Mul), so the edges leaving it still run as in
  NAS-Bench-201;
* identical weight-free layers on the same input (the ReLUs of conv edges leaving one node,
  two pools of one node) are one, and what node 3 does not depend on is not run, as the
  exporter and ONNX Runtime do it;
* the final BN has no conv before it to fold into, so it runs as a per-channel Mul and Add.

The 15,625 genotypes are kept as they are, with NAS-Bench-201's edge order, so that every
tuple maps to one NAS-Bench-201 entry (``to_genotype``/``from_genotype``); isomorphic cells are
not merged. A conv that ends one cell can absorb the ReLU that starts the next, so a whole
stage of 5 cells (with the stem for the first) is one lookup-table slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from hwlat.search.spaces.base import Arch, Decision, InvalidArchError, SearchSpace, Slot, hwc, ofa_key

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from) in genotype-string order
CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
NUM_CLASSES = 10


class Nb201Space(SearchSpace):
    name = "nb201"

    def __init__(self, resolutions: Sequence[int] = (32,), num_classes: int = NUM_CLASSES) -> None:
        decisions = [Decision("resolution", tuple(int(r) for r in resolutions))]
        decisions += [Decision(f"node{to}.in{frm}", OPS) for to, frm in EDGES]
        edges = tuple(range(1, 1 + len(EDGES)))
        slots = []
        for s, channels in enumerate(CHANNELS):
            if s:
                slots.append(Slot(f"reduction{s}", (0,), _reduction(channels), _reduction_key))
            stem = s == 0
            slots.append(Slot(f"stage{s + 1}", (0, *edges), _stage(channels, stem), _stage_key(stem)))
        slots.append(Slot("head", (0,), _head(num_classes), lambda i, o, v: ofa_key("Logits", i, o[1])))
        super().__init__(decisions, slots)

    def size(self) -> int:
        return len(self.resolutions) * len(OPS) ** len(EDGES)

    def to_genotype(self, arch: Sequence[int]) -> str:
        """NAS-Bench-201's string, e.g. ``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...|``."""
        self.validate(arch)
        return genotype_string(tuple(OPS[i] for i in arch[1:]))

    def from_genotype(self, genotype: str, resolution: int | None = None) -> Arch:
        nodes = genotype.strip().strip("|").split("|+|")
        edges = [item.split("~") for node in nodes for item in node.split("|")]
        expected = [str(frm) for _, frm in EDGES]
        if len(nodes) != 3 or [frm for _, frm in edges] != expected:
            raise InvalidArchError(
                f"{genotype!r} is not a NAS-Bench-201 genotype; expected the form "
                "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
            )
        r = self.decisions[0].index_of(resolution if resolution is not None else self.resolutions[0])
        return (r, *(d.index_of(op) for d, (op, _) in zip(self.decisions[1:], edges, strict=True)))


def genotype_string(ops: tuple[str, ...]) -> str:
    nodes = []
    for to in (1, 2, 3):
        nodes.append("|".join(f"{ops[e]}~{frm}" for e, (t, frm) in enumerate(EDGES) if t == to))
    return "|" + "|+|".join(nodes) + "|"


def cell(net, x, ops: tuple[str, ...]):
    """One cell: node j is the sum of its incoming edges' outputs; returns node 3."""
    nodes = [x]
    zero = None
    for to in (1, 2, 3):
        terms = []
        for e, (t, frm) in enumerate(EDGES):
            if t != to or ops[e] == "none":
                continue
            src = nodes[frm]
            if ops[e] == "skip_connect":
                terms.append(src)
            elif ops[e] == "avg_pool_3x3":
                terms.append(net.avgpool(src, 3, 1, 1))
            else:
                kernel = 1 if ops[e] == "nor_conv_1x1" else 3
                terms.append(net.conv(net.act(src, "relu"), x.shape[1], kernel))
        if not terms:
            zero = zero or net.scale(x, 0.0)
            terms = [zero]
        nodes.append(reduce(net.add, terms))
    return nodes[3]


def _stage(channels: int, stem: bool):
    def build(net, x, values):
        if stem:
            x = net.conv(x, channels, 3)
        for _ in range(CELLS_PER_STAGE):
            x = cell(net, x, values[1:])
        return x

    return build


def _stage_key(stem: bool):
    def key(in_shape, out_shape, values):
        return (
            f"Cells-input:{hwc(in_shape)}-output:{hwc(out_shape)}-stem:{int(stem)}"
            f"-cells:{CELLS_PER_STAGE}-genotype:{genotype_string(values[1:])}"
        )

    return key


def _reduction(channels: int):
    def build(net, x, values):
        a = net.conv(net.act(x, "relu"), channels, 3, stride=2)
        a = net.conv(net.act(a, "relu"), channels, 3)
        shortcut = net.conv(net.avgpool(x, 2, 2, 0), channels, 1, bn=False)
        return net.add(shortcut, a)

    return build


def _reduction_key(in_shape, out_shape, values):
    return ofa_key("ResBlock", in_shape, out_shape, stride=2)


def _head(num_classes: int):
    def build(net, x, values):
        return net.linear(net.gap(net.act(net.affine(x), "relu")), num_classes)

    return build
