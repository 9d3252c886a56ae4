"""Net: a network written once, giving both its kernels (OpSpecs) and a torch module.

A space describes an architecture by calling ``Net`` methods (``conv``, ``add``, ...) in
execution order. From that one description come

* ``kernels()``: the OpSpecs the runtime executes after its fusions, the way the exported
  ONNX graph reads once batch-norm is folded into the conv before it and an activation
  whose only input is a conv's output (and who is that output's only user) joins the conv;
* ``to_torch()``: an ``nn.Module`` (convs carry BatchNorm, eval mode) whose legacy ONNX
  export has exactly those kernels.

Like the exporter (and ONNX Runtime), a net merges identical weight-free layers on the same
inputs (common subexpressions) and drops layers the output does not depend on.

Writing the network once is what keeps ``ops(arch)`` and ``to_onnx(arch)`` from drifting.
"""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

from hwlat.predictors.models.memory import Footprint, footprint_of
from hwlat.profiler.opspec import OpSpec


class Tensor(NamedTuple):
    id: int
    shape: tuple[int, ...]  # NCHW, or (N, C) after ``linear``


class Layer(NamedTuple):
    """One layer in execution order. ``kind`` is conv, act, add, mul, scale, affine, avgpool,
    gap, shuffle or linear; ``params`` holds what that kind needs."""

    kind: str
    inputs: tuple[int, ...]
    output: int
    in_shape: tuple[int, ...]
    params: tuple  # (name, value) pairs

    def param(self, name: str):
        return dict(self.params)[name]


# Element-wise layers the runtime runs in place (fused into their producer) when nothing else reads
# their input.
_IN_PLACE = frozenset({"act", "scale", "affine"})
# Layers without weights: two with the same inputs and parameters compute the same tensor.
_WEIGHT_FREE = frozenset({"act", "add", "mul", "avgpool", "gap", "shuffle"})


class Net:
    """A network under construction."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input = Tensor(0, tuple(input_shape))
        self.layers: list[Layer] = []
        self.output: Tensor = self.input
        self._next_id = 1
        self._shapes = {0: self.input.shape}
        self._seen: dict[tuple, int] = {}  # weight-free (kind, inputs, params) -> output id

    # ----- layers -----------------------------------------------------------
    def conv(
        self,
        x: Tensor,
        out: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str = "none",
        bn: bool = True,
        bias: bool = False,
    ) -> Tensor:
        """Conv (padding kernel//2), then BatchNorm when ``bn``, then ``act``."""
        n, _, h, w = x.shape
        pad = kernel // 2
        shape = (n, out, (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1)
        return self._add(
            "conv",
            (x,),
            shape,
            out=out,
            kernel=kernel,
            stride=stride,
            groups=groups,
            act=act,
            bn=bn,
            bias=bias,
        )

    def act(self, x: Tensor, act: str) -> Tensor:
        return self._add("act", (x,), x.shape, act=act)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._add("add", (a, b), a.shape, bcast=_broadcast(a, b))

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        """``a * b``; ``b`` is ``a``'s shape or (N, C, 1, 1) (squeeze-and-excite)."""
        return self._add("mul", (a, b), a.shape, bcast=_broadcast(a, b))

    def scale(self, x: Tensor, value: float) -> Tensor:
        """``x`` times a per-channel constant (all channels ``value``): one channel-broadcast Mul."""
        return self._add("scale", (x,), x.shape, value=value)

    def affine(self, x: Tensor) -> Tensor:
        """BatchNorm with no conv before it to fold into: a per-channel Mul then Add."""
        return self._add("affine", (x,), x.shape)

    def avgpool(self, x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
        n, c, h, w = x.shape
        shape = (n, c, (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        return self._add("avgpool", (x,), shape, kernel=kernel, stride=stride, padding=padding)

    def gap(self, x: Tensor) -> Tensor:
        """Global average pooling, keeping (N, C, 1, 1)."""
        return self._add("gap", (x,), (*x.shape[:2], 1, 1))

    def shuffle(self, x: Tensor, groups: int) -> Tensor:
        """ShuffleNet's channel shuffle (Reshape, Transpose, Reshape)."""
        return self._add("shuffle", (x,), x.shape, groups=groups)

    def linear(self, x: Tensor, out: int) -> Tensor:
        """Flatten (free) and a fully connected layer with bias; ``x`` is (N, C, 1, 1)."""
        if x.shape[2:] != (1, 1):
            raise ValueError(f"linear needs a pooled (N, C, 1, 1) input, got {x.shape}")
        return self._add("linear", (x,), (x.shape[0], out), out=out)

    def finish(self, y: Tensor) -> Net:
        self.output = y
        return self

    def _add(self, kind: str, inputs: tuple[Tensor, ...], shape: tuple[int, ...], **params) -> Tensor:
        ids = tuple([t.id for t in inputs])
        items = tuple(params.items())
        if kind in _WEIGHT_FREE:
            seen = self._seen.get((kind, ids, items))
            if seen is not None:
                self.output = Tensor(seen, self._shapes[seen])
                return self.output
            self._seen[(kind, ids, items)] = self._next_id
        y = Tensor(self._next_id, shape)
        self._next_id += 1
        self._shapes[y.id] = shape
        self.layers.append(Layer(kind, ids, y.id, inputs[0].shape, items))
        self.output = y
        return y

    def live_layers(self) -> list[Layer]:
        """The layers the output depends on, in execution order."""
        needed = {self.output.id}
        live = []
        for layer in reversed(self.layers):
            if layer.output in needed:
                live.append(layer)
                needed.update(layer.inputs)
        return live[::-1]

    # ----- kernels ----------------------------------------------------------
    def kernels(self) -> list[OpSpec]:
        """The kernels in execution order, with activations folded into the conv before them."""
        layers = self.live_layers()
        uses: dict[int, int] = {}
        for layer in layers:
            for t in layer.inputs:
                uses[t] = uses.get(t, 0) + 1
        producer = {layer.output: layer for layer in layers}
        fused_act: dict[int, str] = {}  # conv output id -> activation folded into it
        for layer in layers:
            if layer.kind != "act":
                continue
            (src,) = layer.inputs
            conv = producer.get(src)
            if (
                conv is not None
                and conv.kind == "conv"
                and conv.param("act") == "none"
                and uses[src] == 1
                and src != self.output.id
            ):
                fused_act[src] = layer.param("act")
        out = []
        for layer in layers:
            if layer.kind == "act" and layer.inputs[0] in fused_act:
                continue
            out.extend(_specs(layer.kind, layer.in_shape, layer.params, fused_act.get(layer.output)))
        return out

    # ----- memory -----------------------------------------------------------
    def footprint(self) -> Footprint:
        """Weights and the activation peak of the net as exported (float32), counted as
        ``onnx_footprint`` counts the export: activations and per-channel scales whose input has
        no other reader write in place, and a conv whose only reader is a residual add is one
        step with it, writing into the other operand when the add is that operand's last
        reader (ORT's Sum fusion)."""
        layers = self.live_layers()
        uses: dict[int, int] = {}
        last_use: dict[int, int] = {}
        for i, layer in enumerate(layers):
            for t in layer.inputs:
                uses[t] = uses.get(t, 0) + 1
                last_use[t] = i
        producer = {layer.output: layer for layer in layers}
        sums: dict[int, tuple[Layer, int]] = {}
        for i, layer in enumerate(layers):
            if layer.kind != "add" or dict(layer.params)["bcast"] != "none":
                continue
            for c, other in (layer.inputs, layer.inputs[::-1]):
                conv = producer.get(c)
                if conv is not None and conv.kind == "conv" and uses[c] == 1 and c != other:
                    sums[i] = (conv, other)
                    break
        deferred = {id(conv) for conv, _ in sums.values()}
        alias: dict[int, int] = {}
        steps = []
        for i, layer in enumerate(layers):
            ins = [alias.get(t, t) for t in layer.inputs]
            if id(layer) in deferred:
                continue
            if layer.kind in _IN_PLACE and uses[layer.inputs[0]] == 1:
                alias[layer.output] = ins[0]
                continue
            outs = [layer.output]
            if i in sums:
                conv, other = sums[i]
                ins = [alias.get(t, t) for t in conv.inputs] + [alias.get(other, other)]
                if last_use[other] == i and other != self.input.id and layer.output != self.output.id:
                    alias[layer.output] = alias.get(other, other)
                    outs = []
            steps.append((f"{layer.kind}{i}", ins, outs))
        sizes = {t: 4 * math.prod(shape) for t, shape in self._shapes.items()}
        output = alias.get(self.output.id, self.output.id)
        weight_bytes = 4 * sum(op.params for op in self.kernels())
        return footprint_of(weight_bytes, steps, sizes, [self.input.id], [output])

    # ----- torch ------------------------------------------------------------
    def to_torch(self):
        """An eval-mode ``nn.Module`` running this net (see search/spaces/torch_layers.py)."""
        from hwlat.search.spaces.torch_layers import GraphModule

        return GraphModule(self).eval()


def _broadcast(a: Tensor, b: Tensor) -> str:
    if a.shape == b.shape:
        return "none"
    if b.shape == (*a.shape[:2], 1, 1):
        return "channel"
    raise ValueError(f"cannot broadcast {b.shape} onto {a.shape}: only equal shapes or (N, C, 1, 1)")


@cache
def _specs(kind: str, shape: tuple[int, ...], params: tuple, fused_act: str | None) -> tuple[OpSpec, ...]:
    """A layer's kernels. Cached: the same layers recur across architectures, and validating
    each OpSpec once keeps ``ops()`` and the table layout fast."""
    p = dict(params)
    if kind == "conv":
        return (
            OpSpec(
                "conv",
                shape,
                out_channels=p["out"],
                kernel=p["kernel"],
                stride=p["stride"],
                padding=p["kernel"] // 2,
                groups=p["groups"],
                bias=p["bn"] or p["bias"],
                activation=fused_act or p["act"],
            ),
        )
    if kind == "act":
        return (OpSpec("act", shape, activation=p["act"]),)
    if kind in ("add", "mul"):
        return (OpSpec(kind, shape, broadcast=p["bcast"]),)
    if kind == "scale":
        return (OpSpec("mul", shape, broadcast="channel"),)
    if kind == "affine":
        return (OpSpec("mul", shape, broadcast="channel"), OpSpec("add", shape, broadcast="channel"))
    if kind == "avgpool":
        return (OpSpec("avgpool", shape, kernel=p["kernel"], stride=p["stride"], padding=p["padding"]),)
    if kind == "gap":
        return (OpSpec("globalavgpool", shape),)
    if kind == "shuffle":
        return (OpSpec("shuffle", shape, groups=p["groups"]),)
    if kind == "linear":
        return (OpSpec("gemm", shape[:2], out_channels=p["out"]),)
    raise AssertionError(f"unknown layer kind {kind!r}")
