"""ModelSplitter: an ONNX CNN graph -> the kernels the backend really executes.

Three passes:
  1. *Fold static subgraphs* (profiler/onnx_models/graph.py): constants, and everything computed
     only from constants and tensor shapes (the legacy torch exporter's ``Shape -> Gather ->
     Div -> Slice`` for ``chunk``, Clip bounds, Reshape targets), are evaluated with numpy,
     as the runtime folds them at load time; they cost nothing.
  2. *Map nodes to ops* (OpSpecs). Conv (any kernel, stride, dilation, groups; ConvTranspose
     too) with its batch-norm, per-channel constant add/mul, a zero Pad before it (ONNX
     Runtime's PadFusion) and its activation (Relu, Clip(0, 6), HardSwish, HardSigmoid, Sigmoid,
     Tanh, LeakyRelu, Elu, PRelu, and the exporter's multi-node SiLU, GELU and Mish) is one conv,
     unless the fusion rules say the runtime runs that activation apart
     (``FusionRules.runs_apart``: then it is an activation op of its own);
     MatMul + bias is a gemm, on (N, C) or channels-last (N, ..., C) tensors; Slices of one
     tensor along channels are one split, or one slice; Reshape -> Transpose -> Reshape is a
     channel shuffle; BatchNormalization no conv absorbs, LayerNormalization, Softmax, Pad,
     Resize, Transpose and pooling are ops of their own; Flatten, Reshape, Squeeze and
     Unsqueeze are *glue* nodes (executed, but no compute: they cost the per-node overhead);
     Identity and Dropout vanish (ONNX Runtime removes them). A Slice or Gather that keeps
     every channel is a copy of the tensor, which ONNX Runtime runs, unless its EliminateSlice
     rule applies (a Slice from 0 to INT64_MAX), where it vanishes too.
  3. *Group ops into kernels* with the backend's measured fusion rules
     (predictors/kernels/fusion.py), and squeeze-and-excitation blocks (globalavgpool -> conv ->
     conv -> mul of the pooled tensor) into one kernel.

Ops it does not know are listed by type and node name in ``UnsupportedOpsError``; with
``strict=False`` each becomes a ``FallbackNode`` (its FLOPs and bytes, for the predictor's
roofline estimate), so that nothing is silently left out of the sum.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hwlat.errors import HwlatError
from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.profiler.kernel import InvalidKernelError, Kernel, op_class
from hwlat.profiler.onnx_models import load_model
from hwlat.profiler.onnx_models.graph import (
    ACTIVATION_OPS,
    BINARY_OPS,
    FREE_OPS,
    GraphError,
    OnnxGraph,
    attrs,
    axes_of,
    conv_out,
    slice_bounds,
)
from hwlat.profiler.opspec import (
    INT_DTYPES,
    RANGE_ACTIVATIONS,
    InvalidOpSpecError,
    OpSpec,
    broadcast_kind,
)

GLUE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


class UnsupportedOpsError(HwlatError):
    """The graph holds ops the splitter cannot map to kernels."""


class _Unmappable(Exception):
    """A node (or a pattern around it) that no kernel describes; recorded as unsupported."""


@dataclass
class SplitKernel:
    """One kernel and the ONNX nodes it came from."""

    kernel: Kernel
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class FallbackNode:
    """A node no kernel describes (``strict=False``): what a roofline estimate needs."""

    node: str
    op_type: str
    reason: str
    flops: int  # one operation per output element, the least such a node can do
    bytes_moved: int  # float32 inputs read plus outputs written (0 where a shape is unknown)


@dataclass
class SplitResult:
    kernels: list[SplitKernel]
    glue_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    fallback: list[FallbackNode] = field(default_factory=list)

    @property
    def ops(self) -> list[OpSpec]:
        return [op for k in self.kernels for op in k.kernel.ops]

    @property
    def eight_bit_nodes(self) -> set[str]:
        """The ONNX nodes the runtime runs in 8-bit kernels (a float32 conv between 8-bit layers
        that ORT quantizes itself among them)."""
        return {n for k in self.kernels if k.kernel.head.dtype in INT_DTYPES for n in k.nodes}

    @property
    def network(self) -> tuple[list[Kernel], int]:
        """(kernels, glue node count): what ``LatencyTable.predict`` and ``fit_overhead`` take."""
        return [k.kernel for k in self.kernels], len(self.glue_nodes)


@dataclass
class _Item:
    """One op (or glue node) after pass 2."""

    spec: OpSpec | None
    inputs: list[str]
    outputs: list[str]
    nodes: list[str]


class ModelSplitter:
    """Splits ONNX graphs into kernels; ``fusion_rules`` come from the backend's probe."""

    def __init__(self, fusion_rules: FusionRules | None = None, strict: bool = True) -> None:
        self.fusion_rules = fusion_rules
        self.strict = strict

    def split(self, model: onnx.ModelProto | str | Path) -> SplitResult:
        model = load_model(model)
        try:
            graph = OnnxGraph(model)
        except GraphError as exc:
            raise UnsupportedOpsError(str(exc)) from None
        mapper = _Mapper(graph, self.fusion_rules or FusionRules("none"))
        items = mapper.run()
        unsupported = sorted(set(mapper.unsupported))
        if unsupported and self.strict:
            raise UnsupportedOpsError(
                f"the model has ops hwlat cannot map to kernels: {'; '.join(unsupported)}",
                "supported: Conv (1-D, 2-D)/ConvTranspose, Gemm/MatMul, pooling, ReduceMean/Max/Sum, "
                "Add/Sub/Mul/Div, Concat, Split/Slice/Gather, channel shuffle, PixelShuffle/Unshuffle, "
                "BatchNormalization, "
                "LayerNormalization, InstanceNormalization (and GroupNorm), Softmax, Pad, Resize, "
                "Transpose, activations (Relu, Clip, HardSwish, HardSigmoid, Sigmoid, SiLU, GELU, Mish, "
                "Tanh, LeakyRelu, Elu, PRelu, Selu, Celu), Sqrt, Pow(x, 2), Exp, Log, Abs, Neg, "
                "Reciprocal and reshape-like nodes; pass --lenient (strict=False) to estimate the "
                "others on the device's roofline",
            )
        result = SplitResult(
            kernels=[],
            warnings=graph.warnings + mapper.warnings,
            unsupported=unsupported,
            fallback=mapper.fallback,
        )
        if unsupported:
            result.warnings.append(f"estimated on the roofline (unsupported): {'; '.join(unsupported)}")
        result.glue_nodes = [n for it in items if it.spec is None for n in it.nodes]
        result.kernels = _group(
            [it for it in items if it.spec is not None], graph, self.fusion_rules or FusionRules("none")
        )
        return result


# ----- pass 2: nodes -> ops -----------------------------------------------------------------
class _Mapper:
    def __init__(self, graph: OnnxGraph, rules: FusionRules) -> None:
        self.g = graph
        self.rules = rules
        self.items: list[_Item] = []
        self.producer: dict[str, _Item] = {}
        self.alias: dict[str, str] = {}
        self.done: set[int] = set()
        self.unsupported: list[str] = []
        self.warnings: list[str] = []
        self.ceil_mode_nodes: list[str] = []
        self.unblocked_convs: list[str] = []  # float convs ORT runs without its NCHWc layout
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.data_nodes:
            for name in node.input:
                if name and not graph.is_static(name):
                    self.consumers.setdefault(name, []).append(node)
        # 8-bit constants (weights, biases, operands) a DequantizeLinear turns into float32:
        # folded into an 8-bit kernel, but run on every inference in front of a float32 op
        self.constant_dequantize = {
            n.output[0]: n
            for n in graph.nodes
            if n.op_type == "DequantizeLinear" and graph.is_static(n.input[0])
        }
        self.int8, self.fused_qdq = _quantized_regions(graph, self.consumers, self.constant_dequantize, rules)
        quantizes = [n for n in graph.data_nodes if n.op_type == "QuantizeLinear"]
        self.activation_dtype = _int_dtype(graph, quantizes[0]) if quantizes else "int8"
        self.fallback: list[FallbackNode] = []
        self.padded: dict[int, tuple[int, int, int, int]] = {}  # conv/pool -> the Pad folded into it
        self.patterns = _activation_patterns(graph, self.consumers)

    def run(self) -> list[_Item]:
        for node in self.g.data_nodes:
            if id(node) in self.done:
                continue
            try:
                self._map(node)
            except (_Unmappable, InvalidOpSpecError) as exc:
                self._unsupported(node, str(exc))
        if self.ceil_mode_nodes:
            self.warnings.append(
                f"{len(self.ceil_mode_nodes)} pooling nodes use ceil_mode, timed as floor "
                f"mode (one row and column less at most): {', '.join(self.ceil_mode_nodes)}"
            )
        if self.unblocked_convs:
            self.warnings.append(
                f"{len(self.unblocked_convs)} float32 convs read a weight or bias computed at run "
                "time (a DequantizeLinear's output): ONNX Runtime runs them without its blocked "
                "NCHWc layout, slower than their kernels are timed: " + ", ".join(self.unblocked_convs)
            )
        return self.items

    # -- helpers --
    def _unsupported(self, node: onnx.NodeProto, reason: str = "") -> None:
        name = node.name or "unnamed"
        self.unsupported.append(
            f"{node.op_type} ({name}: {reason})" if reason else f"{node.op_type} ({name})"
        )
        ins = [self.g.shapes.get(self._root(i)) for i in node.input if i and not self.g.is_static(i)]
        outs = [self.g.shapes.get(o) for o in node.output if o]
        known = [s for s in ins + outs if s is not None]
        self.fallback.append(
            FallbackNode(
                name,
                node.op_type,
                reason or "no kernel describes this op",
                sum(math.prod(s) for s in outs if s is not None),
                4 * sum(math.prod(s) for s in known),
            )
        )
        self.done.add(id(node))

    def _root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _free(self, node: onnx.NodeProto) -> bool:
        """Executed as nothing: Identity, Dropout, and quantize/dequantize fused into 8-bit kernels."""
        return node.op_type in FREE_OPS or id(node) in self.fused_qdq

    def _uses(self, name: str) -> int:
        """Data consumers of a tensor (through free nodes); a graph output counts as one."""
        count = 0
        for node in self.consumers.get(name, []):
            if self._free(node):
                count += self._uses(node.output[0])
            else:
                count += 1
        return count + (name in self.g.outputs)

    def _only_consumer(self, name: str) -> onnx.NodeProto | None:
        nodes = [n for n in self.consumers.get(name, [])]
        if len(nodes) == 1 and name not in self.g.outputs:
            node = nodes[0]
            return self._only_consumer(node.output[0]) if self._free(node) else node
        return None

    def _shape(self, name: str) -> tuple[int, ...]:
        return self._known(self._root(name)) if self._root(name) in self.g.shapes else self._known(name)

    def _known(self, name: str) -> tuple[int, ...]:
        """The tensor's inferred shape; unknown when its producer is not supported."""
        if name not in self.g.shapes:
            raise _Unmappable(f"the shape of tensor {name!r} is unknown (its producer is not supported)")
        return self.g.shapes[name]

    def _add(
        self, spec: OpSpec | None, inputs: list[str], outputs: list[str], nodes: list[onnx.NodeProto]
    ) -> _Item:
        dtypes = {self.int8[id(n)] for n in nodes if id(n) in self.int8}
        if spec is not None and dtypes:
            spec = dataclasses.replace(spec, dtype=dtypes.pop())  # an 8-bit kernel of a quantized network
        item = _Item(
            spec, [self._root(i) for i in inputs], list(outputs), [n.name or n.op_type for n in nodes]
        )
        self.items.append(item)
        for out in outputs:
            self.producer[out] = item
        for n in nodes:
            self.done.add(id(n))
        return item

    def _foldable(self, tensor: str, ops: tuple[str, ...] = ("conv", "gemm")) -> _Item | None:
        """The conv/gemm producing ``tensor`` if an epilogue can be folded into it."""
        item = self.producer.get(self._root(tensor))
        if item is None or item.spec is None or item.spec.op not in ops or len(item.outputs) != 1:
            return None
        return item if self._uses(self._root(tensor)) == 1 else None

    def _fold(self, item: _Item, spec: OpSpec, output: str, nodes: list[onnx.NodeProto]) -> None:
        del self.producer[item.outputs[0]]
        item.spec = spec
        item.outputs = [output]
        item.nodes += [n.name or n.op_type for n in nodes]
        self.producer[output] = item
        for n in nodes:
            self.done.add(id(n))

    # -- the mapping --
    def _map(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if self._free(node):
            self.alias[node.output[0]] = self._root(node.input[0])
            if len(node.output) > 1 and node.output[1]:
                self.alias[node.output[1]] = self._root(node.input[0])
            self.done.add(id(node))
            return
        if id(node) in self.patterns:
            self._map_pattern(node)
            return
        handler = getattr(self, f"_map_{op}", None)
        if op in ACTIVATION_OPS:
            handler = self._map_activation
        elif op in BINARY_OPS:
            handler = self._map_binary
        elif op in GLUE_OPS and handler is None:
            handler = self._map_glue
        if handler is None:
            self._unsupported(node)
            return
        handler(node)

    def _map_Conv(self, node: onnx.NodeProto) -> None:
        self._map_conv(node, "conv")

    def _map_ConvTranspose(self, node: onnx.NodeProto) -> None:
        a = attrs(node)
        if any(a.get("output_padding", [0, 0])) or "output_shape" in a:
            self.warnings.append(
                f"{node.name!r}: ConvTranspose output_padding/output_shape timed without the extra row"
            )
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Unmappable("dilated transposed convolutions are not supported")
        self._map_conv(node, "deconv")

    def _map_conv(self, node: onnx.NodeProto, op: str) -> None:
        x = self._shape(node.input[0])
        w = self._known(node.input[1])
        a = attrs(node)
        out = self._known(node.output[0])
        if len(x) == 3 and op == "conv":  # (a Pad is folded into 4-D convs only)
            # A Conv1d (ECA's channel attention, audio front ends): timed as a 2-D conv of one row.
            x, w, out = ((*s[:2], 1, s[2]) for s in (x, w, out))
            pads = a.get("pads", [0, 0])
            a = {
                **a,
                "strides": [1, *a.get("strides", [1])],
                "dilations": [1, *a.get("dilations", [1])],
                "pads": [0, pads[0], 0, pads[1]],
            }
        if len(x) != 4:
            raise _Unmappable(f"only 1-D and 2-D convolutions are supported, input is {x}")
        groups = a.get("group", 1)
        kernel, strides = tuple(w[2:]), tuple(a.get("strides", [1, 1]))
        dilations = tuple(a.get("dilations", [1, 1]))
        if op == "conv":
            pads = _add_pads(a.get("pads", [0, 0, 0, 0]), self.padded.get(id(node)))
            padding = _symmetric_pads(pads, x, kernel, strides, dilations, out)
            cout = w[0]
        else:
            pads = a.get("pads", [0, 0, 0, 0])
            padding = ((pads[0] + pads[2]) // 2, (pads[1] + pads[3]) // 2)
            cout = w[1] * groups
        dtype = self.int8.get(id(node), "float32")
        weights, parameter_dqs = "constant", []
        if op == "conv" and dtype in INT_DTYPES and node.input[1] not in self.constant_dequantize:
            if _runtime_weight_zero_point(self.g.value(node.input[1])) != 0:
                weights = "runtime"  # float32 weights ORT quantizes itself, off zero: slower
        elif op == "conv" and dtype == "float32" and node.input[1] in self.constant_dequantize:
            weights = "dequantized"  # an int8 conv ORT does not fuse: its DQs run in the kernel
            dequantize = self.constant_dequantize
            parameter_dqs = [dequantize[t] for t in node.input[1:3] if t in dequantize]
        spec = OpSpec(
            op,
            x,
            out_channels=cout,
            kernel=kernel,
            stride=strides,
            padding=padding,
            dilation=dilations if op == "conv" else 1,
            groups=groups,
            bias=len(node.input) > 2 and bool(node.input[2]),
            dtype=dtype,
            weights=weights,
        )
        if not parameter_dqs:
            self._dequantized_constants(node, list(node.input[1:3]))
        if (
            op == "conv"
            and dtype == "float32"
            and weights == "constant"
            and not all(_runtime_constant(t, self.g, self.constant_dequantize) for t in node.input[1:3] if t)
        ):
            self.unblocked_convs.append(node.name or "unnamed")
        self._add(spec, [node.input[0]], [node.output[0]], [node, *parameter_dqs])

    def _dequantized_constants(self, node: onnx.NodeProto, names: list[str]) -> None:
        """The DequantizeLinears of constants (a conv's or gemm's weight and bias, an add's
        operand): kernels of their own when ``node`` stays float32. Each is timed as a dequantize
        of the network's 8-bit activation type (a U8S8 network's weights are int8, its kernels
        uint8; dequantizing either costs the same, an int32 bias as little: its launch)."""
        if id(node) in self.int8:
            return
        for name in names:
            dq = self.constant_dequantize.get(name)
            if dq is not None:
                dtype = self.activation_dtype
                shape = _elementwise_shape(self._known(dq.input[0]))
                self._add(OpSpec("dequantize", shape, dtype=dtype), [], [], [dq])

    def _map_Pad(self, node: onnx.NodeProto) -> None:
        """A zero Pad read only by a conv or pooling is folded into it (ONNX Runtime's PadFusion,
        TVM's FoldExplicitPadding); any other Pad is an op of its own."""
        x = self._shape(node.input[0])
        a = attrs(node)
        pads = self.g.value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("pads")
        pads = [int(v) for v in np.ravel(pads)] if pads is not None else None
        if pads is None or len(x) != 4 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
            raise _Unmappable(f"only spatial padding of 4-D tensors is supported (pads {pads})")
        if min(pads) < 0:
            raise _Unmappable(f"negative pads {pads} crop the tensor")
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        value = self.g.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        zero = mode == "constant" and (value is None or float(np.ravel(value)[0]) == 0.0)
        reader = self._only_consumer(node.output[0])
        spatial = (pads[2], pads[3], pads[6], pads[7])
        if zero and reader is not None and reader.op_type in ("Conv", "MaxPool", "AveragePool"):
            self.padded[id(reader)] = spatial
            self.alias[node.output[0]] = self._root(node.input[0])
            self.done.add(id(node))
            return
        if mode not in ("constant", "reflect", "edge"):
            raise _Unmappable(f"pad mode {mode!r}")
        if pads[2] != pads[6] or pads[3] != pads[7]:
            self.warnings.append(f"{node.name!r}: asymmetric Pad {spatial} timed as symmetric")
        padding = ((pads[2] + pads[6] + 1) // 2, (pads[3] + pads[7] + 1) // 2)
        self._add(OpSpec("pad", x, padding=padding, mode=mode), [node.input[0]], [node.output[0]], [node])

    def _map_Resize(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        y = self._known(node.output[0])
        mode = attrs(node).get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if len(x) != 4 or y[:2] != x[:2] or y[2] % x[2] or y[3] % x[3]:
            raise _Unmappable(f"only whole-number spatial upsampling is supported ({x} -> {y})")
        if mode == "cubic":
            self.warnings.append(f"{node.name!r}: cubic Resize timed as linear")
            mode = "linear"
        spec = OpSpec("resize", x, stride=(y[2] // x[2], y[3] // x[3]), mode=mode)
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_Upsample(self, node: onnx.NodeProto) -> None:
        self._map_Resize(node)

    def _map_QuantizeLinear(self, node: onnx.NodeProto) -> None:
        """A quantize not fused into an 8-bit kernel: float32 entering an 8-bit region."""
        spec = OpSpec(
            "quantize", _elementwise_shape(self._shape(node.input[0])), dtype=_int_dtype(self.g, node)
        )
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_DequantizeLinear(self, node: onnx.NodeProto) -> None:
        """A dequantize not fused into an 8-bit kernel: an 8-bit tensor leaving for float32 ops.
        ONNX Runtime gives each reader its own copy of a DequantizeLinear, so one read by several
        float32 ops runs once for each."""
        spec = OpSpec(
            "dequantize", _elementwise_shape(self._shape(node.input[0])), dtype=_int_dtype(self.g, node)
        )
        self._add(spec, [node.input[0]], [node.output[0]], [node])
        float_readers = [
            r
            for r in self.consumers.get(node.output[0], [])
            if id(r) not in self.int8 and r.op_type != "QuantizeLinear"
        ]
        for _ in float_readers[1:]:
            self._add(spec, [], [], [])

    def _map_BatchNormalization(self, node: onnx.NodeProto) -> None:
        item = self._foldable(node.input[0], ("conv", "deconv"))
        if item is not None and item.spec.activation == "none":
            self._fold(item, dataclasses.replace(item.spec, bias=True), node.output[0], [node])
            return
        self._dequantized_constants(node, list(node.input[1:]))
        self._add(OpSpec("bn", self._shape(node.input[0])), [node.input[0]], [node.output[0]], [node])

    def _map_LayerNormalization(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        if attrs(node).get("axis", -1) % len(x) != len(x) - 1:
            raise _Unmappable("only a layer norm over the last axis is supported")
        self._add(OpSpec("layernorm", x), [node.input[0]], [node.output[0]], [node])

    def _map_InstanceNormalization(self, node: onnx.NodeProto) -> None:
        """InstanceNorm2d, and the core of GroupNorm, which torch writes as a reshape to
        (N, groups, rest), this, a reshape back and a per-channel multiply and add."""
        x = self._shape(node.input[0])
        self._add(OpSpec("instancenorm", x), [node.input[0]], [node.output[0]], [node])

    def _map_Softmax(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        if attrs(node).get("axis", -1) % len(x) != len(x) - 1:
            self.warnings.append(
                f"{node.name!r}: {node.op_type} over axis {attrs(node)['axis']} timed as last"
            )
        self._add(OpSpec("softmax", x), [node.input[0]], [node.output[0]], [node])

    def _map_LogSoftmax(self, node: onnx.NodeProto) -> None:
        self._map_Softmax(node)

    def _map_Transpose(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        perm = tuple(attrs(node).get("perm", reversed(range(len(x)))))
        if len(x) == 2 or all(x[p] == 1 or p == i for i, p in enumerate(perm)):
            self._map_glue(node)  # moves no data (or a 2-D view): executed as a copy at most
            return
        self._add(OpSpec("transpose", x, perm=perm), [node.input[0]], [node.output[0]], [node])

    def _map_activation(self, node: onnx.NodeProto) -> None:
        """Fold into the conv/gemm before it when that conv feeds nothing else; ``x * sigmoid(x)``
        is swish and ``x * hardsigmoid(x)`` hardswish (two nodes, one activation)."""
        src = self._root(node.input[0])
        gate = self._only_consumer(node.output[0])
        readers = [n for n in self.consumers.get(src, []) if n is not node]
        in_8_bits = id(node) in self.int8
        if in_8_bits and node.op_type in ("Relu", "Clip") and not self._foldable(src):
            self.alias[node.output[0]] = src  # clipped by the quantization range: no kernel
            self.done.add(id(node))
            return
        gated = (
            not in_8_bits  # an 8-bit sigmoid and mul stay two kernels
            and node.op_type in ("Sigmoid", "HardSigmoid")
            and gate is not None
            and gate.op_type == "Mul"
            and readers == [gate]
            and src in map(self._root, gate.input)
        )
        if gated:
            activation = "swish" if node.op_type == "Sigmoid" else "hardswish"
            self._activation(src, activation, [node, gate], gate.output[0])
        else:
            self._activation(src, self._activation_name(node), [node], node.output[0])

    def _map_Pow(self, node: onnx.NodeProto) -> None:
        """``x.pow(2)`` (a variance, an L2 norm) is the ``square`` activation."""
        exponent = self.g.value(node.input[1]) if self.g.is_static(node.input[1]) else None
        if exponent is None or exponent.size != 1 or float(exponent.ravel()[0]) != 2.0:
            raise _Unmappable("only a power of 2 (x.pow(2)) is supported")
        self._activation(self._root(node.input[0]), "square", [node], node.output[0])

    def _map_pattern(self, node: onnx.NodeProto) -> None:
        """A multi-node activation the exporter writes (GELU's erf form, Mish)."""
        activation, nodes = self.patterns[id(node)]
        self._activation(self._root(node.input[0]), activation, nodes, nodes[-1].output[0])

    def _activation(self, src: str, activation: str, nodes: list[onnx.NodeProto], output: str) -> None:
        item = self.producer.get(src)
        if (
            item is not None
            and item.spec is not None
            and item.spec.op in ("conv", "deconv", "gemm")
            and item.spec.activation == "none"
            and len(item.outputs) == 1
            and self._uses(src) == sum(src in map(self._root, n.input) for n in nodes)
            and (
                activation in RANGE_ACTIVATIONS  # an 8-bit conv is followed by its 8-bit sigmoid
                if item.spec.dtype in INT_DTYPES
                else not self.rules.runs_apart(dataclasses.replace(item.spec, activation=activation))
            )
        ):  # a float32 conv keeps the activations the runtime runs inside it
            self._fold(item, dataclasses.replace(item.spec, activation=activation), output, nodes)
            return
        self._add(OpSpec("act", self._shape(src), activation=activation), [src], [output], nodes)

    def _activation_name(self, node: onnx.NodeProto) -> str:
        op = node.op_type
        if op == "Clip":
            lo, hi = _clip_bounds(node, self.g)
            if lo == 0.0 and hi is None:
                return "relu"
            if (lo, hi) != (0.0, 6.0):
                self.warnings.append(f"Clip({lo}, {hi}) at {node.name!r} is timed as relu6")
            return "relu6"
        return _ACTIVATION_NAMES[op]

    def _map_Gemm(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        w = self._known(node.input[1])
        a = attrs(node)
        if len(x) != 2 or a.get("transA"):
            raise _Unmappable(f"Gemm needs a 2-D (N, C) input without transA, got {x}")
        out = w[0] if a.get("transB") else w[1]
        spec = OpSpec("gemm", x, out_channels=out, bias=len(node.input) > 2 and bool(node.input[2]))
        self._dequantized_constants(node, list(node.input[1:3]))
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_MatMul(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        if not self.g.is_static(node.input[1]) or len(self._known(node.input[1])) != 2:
            raise _Unmappable(
                "only a linear layer (MatMul by a 2-D weight) is supported, not two activations"
            )
        spec = OpSpec("gemm", x, out_channels=self._known(node.input[1])[1], bias=False)
        self._dequantized_constants(node, list(node.input[1:3]))
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_pool(self, node: onnx.NodeProto, op: str) -> None:
        x = self._shape(node.input[0])
        a = attrs(node)
        if len(x) != 4:
            raise _Unmappable(f"only 2-D pooling (4-D tensors) is supported, input is {x}")
        kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
        pads = _add_pads(a.get("pads", [0, 0, 0, 0]), self.padded.get(id(node)))
        out = self._known(node.output[0])
        padding = _symmetric_pads(pads, x, kernel, strides, (1, 1), out)
        padding = tuple(min(p, k // 2) for p, k in zip(padding, kernel, strict=True))
        if a.get("ceil_mode"):
            self.ceil_mode_nodes.append(node.name or node.op_type)
        spec = OpSpec(op, x, kernel=kernel, stride=strides, padding=padding)
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_MaxPool(self, node: onnx.NodeProto) -> None:
        self._map_pool(node, "maxpool")

    def _map_AveragePool(self, node: onnx.NodeProto) -> None:
        self._map_pool(node, "avgpool")

    def _map_GlobalAveragePool(self, node: onnx.NodeProto) -> None:
        self._add(
            OpSpec("globalavgpool", self._shape(node.input[0])), [node.input[0]], [node.output[0]], [node]
        )

    def _map_GlobalMaxPool(self, node: onnx.NodeProto) -> None:
        self._add(
            OpSpec("globalmaxpool", self._shape(node.input[0])), [node.input[0]], [node.output[0]], [node]
        )

    def _map_ReduceMean(self, node: onnx.NodeProto) -> None:
        self._map_reduce(node, "mean")

    def _map_ReduceMax(self, node: onnx.NodeProto) -> None:
        self._map_reduce(node, "max")

    def _map_ReduceSum(self, node: onnx.NodeProto) -> None:
        self._map_reduce(node, "sum")

    def _map_reduce(self, node: onnx.NodeProto, mode: str) -> None:
        """Over H and W: a global pool (a sum costs what a mean does); over channels: a
        ``reduce`` kernel (CBAM's and a 2-D layer norm's maps); over H or W alone: a pool of a
        full column or row (coordinate attention's ``x.mean(3)``)."""
        x = self._shape(node.input[0])
        axes = sorted(
            ax % len(x) for ax in axes_of([None, *(self.g.value(i) for i in node.input[1:])], attrs(node))
        )
        if len(x) != 4 or axes not in ([1], [2], [3], [2, 3]):
            raise _Unmappable(f"only a reduction of a 4-D tensor over C, H, W or H and W is supported {axes}")
        ins, outs = [node.input[0]], [node.output[0]]
        if axes == [1]:
            self._add(OpSpec("reduce", x, mode=mode), ins, outs, [node])
        elif axes == [2, 3]:
            self._add(OpSpec("globalmaxpool" if mode == "max" else "globalavgpool", x), ins, outs, [node])
        else:
            kernel = (x[2], 1) if axes == [2] else (1, x[3])
            self._add(OpSpec("maxpool" if mode == "max" else "avgpool", x, kernel=kernel), ins, outs, [node])

    def _map_binary(self, node: onnx.NodeProto) -> None:
        kind = BINARY_OPS[node.op_type]
        ins = [i for i in node.input]
        static = [self.g.is_static(i) for i in ins]
        if all(static):
            raise _Unmappable("both inputs are constant")
        if any(static):
            data = ins[static.index(False)]
            item = self._foldable(data, ("conv", "deconv"))
            const = self.g.shapes.get(ins[static.index(True)], ())
            if (
                item is not None
                and item.spec.activation == "none"
                and math.prod(const) <= self._shape(data)[1]
            ):
                self._fold(item, dataclasses.replace(item.spec, bias=True), node.output[0], [node])
                return
            if item is None:
                gemm = self._foldable(data, ("gemm",))
                if gemm is not None and kind == "add" and not gemm.spec.bias:
                    self._fold(gemm, dataclasses.replace(gemm.spec, bias=True), node.output[0], [node])
                    return
            shape = self._shape(data)
            bcast = "none" if math.prod(const) == math.prod(shape) else "channel"
            self._dequantized_constants(node, [ins[static.index(True)]])
            self._add(OpSpec(kind, shape, broadcast=bcast), [data], [node.output[0]], [node])
            return
        a, b = (self._shape(i) for i in ins)
        if len(a) < len(b) or (len(a) == len(b) and math.prod(a) < math.prod(b)):
            ins, (a, b) = ins[::-1], (b, a)
        bcast = broadcast_kind(a, b)
        if bcast is None:
            raise _Unmappable(
                f"broadcast of {b} onto {a} (only the same shape, or one value per channel, per "
                "pixel, or per channel and row or column)"
            )
        self._add(OpSpec(kind, a, broadcast=bcast), ins, [node.output[0]], [node])

    def _map_Concat(self, node: onnx.NodeProto) -> None:
        shapes = [self._shape(i) for i in node.input]
        axis = attrs(node)["axis"] % len(shapes[0])
        if len(shapes[0]) != 4 or axis == 0:
            raise _Unmappable(f"only a concat of 4-D tensors along C, H or W is supported (axis {axis})")
        if len(shapes) == 1:
            self.alias[node.output[0]] = self._root(node.input[0])
            self.done.add(id(node))
            return
        parts = tuple(s[axis] for s in shapes)
        joined = tuple(sum(parts) if i == axis else d for i, d in enumerate(shapes[0]))
        self._add(
            OpSpec("concat", joined, parts=parts, axis=axis), list(node.input), [node.output[0]], [node]
        )

    def _map_Split(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        outs = [self._known(o) for o in node.output]
        axis = attrs(node).get("axis", 0) % max(len(x), 1)
        if len(x) != 4 or axis == 0:
            raise _Unmappable(f"only a split of a 4-D tensor along C, H or W is supported ({x} -> {outs})")
        parts = tuple(o[axis] for o in outs)
        self._add(OpSpec("split", x, parts=parts, axis=axis), [node.input[0]], list(node.output), [node])

    def _map_Slice(self, node: onnx.NodeProto) -> None:
        """Slices of one tensor along one axis (channels, or rows or columns) that cover it are
        one split; a lone range is a slice; a slice that keeps the whole tensor (``x[:, :c]`` of
        c channels) is a copy, or nothing where ONNX Runtime removes it (``_runtime_removes_slice``)."""
        src = self._root(node.input[0])
        x = self._shape(src)
        if self._known(node.output[0]) == x:
            if self._runtime_removes_slice(node):
                self.alias[node.output[0]] = src
                self.done.add(id(node))
            else:
                self._add(OpSpec("slice", x, out_channels=x[1]), [src], [node.output[0]], [node])
            return

        def sliced_axes(n: onnx.NodeProto) -> list[int]:
            out = self.g.shapes.get(n.output[0], ())
            return [i for i, (a, b) in enumerate(zip(x, out, strict=True)) if a != b] if len(out) == 4 else []

        axes = sliced_axes(node) if len(x) == 4 else []
        if len(axes) != 1 or axes[0] == 0:
            raise _Unmappable(f"only slices of a 4-D tensor along one of C, H, W are supported (input {x})")
        axis = axes[0]
        readers = self.consumers.get(node.input[0], []) + self.consumers.get(src, [])  # (through a fused DQ)
        unique = list({id(n): n for n in readers}.values())
        slices = [
            n for n in unique if n.op_type == "Slice" and id(n) not in self.done and sliced_axes(n) == axes
        ]
        parts = [self._known(n.output[0])[axis] for n in slices]
        if len(slices) == 1:
            self._add(OpSpec("slice", x, out_channels=parts[0], axis=axis), [src], [node.output[0]], [node])
            return
        if sum(parts) < x[axis]:
            parts.append(x[axis] - sum(parts))
        if len(parts) < 2 or sum(parts) != x[axis]:
            raise _Unmappable(f"slices {parts} of the {x[axis]} along axis {axis} are not a split")
        self._add(
            OpSpec("split", x, parts=tuple(parts), axis=axis), [src], [n.output[0] for n in slices], slices
        )

    def _runtime_removes_slice(self, node: onnx.NodeProto) -> bool:
        """ONNX Runtime's EliminateSlice: only a Slice from 0 to INT64_MAX with step 1 on every
        axis, not a graph output (onnxruntime's ``slice_elimination.cc``, checked against the
        graphs ORT 1.32 optimises); a Slice of a whole tensor with its true end (the exporter's
        ``x[:, :c]``) is run as a copy."""
        if node.output[0] in self.g.outputs:
            return False
        ins = [None, *(self.g.value(i) for i in node.input[1:])]
        if any(v is None for name, v in zip(node.input[1:], ins[1:], strict=True) if name):
            return False  # a bound computed at run time
        starts, ends, _, steps = slice_bounds(ins, attrs(node))
        return (
            len(starts) > 0
            and all(int(v) == 0 for v in np.ravel(starts))
            and all(int(v) >= 2**63 - 1 for v in np.ravel(ends))
            and all(int(v) == 1 for v in np.ravel(steps))
        )

    def _map_Gather(self, node: onnx.NodeProto) -> None:
        """``x[:, [i, i+1, ...]]``: a channel range taken by index is a slice."""
        x = self._shape(node.input[0])
        index = self.g.value(node.input[1])
        axis = attrs(node).get("axis", 0) % max(len(x), 1)
        if index is None or len(x) != 4 or axis != 1 or index.ndim != 1:
            raise _Unmappable("only a Gather of constant channel indices of a 4-D tensor is supported")
        if len(index) and not np.array_equal(np.diff(index), np.ones(len(index) - 1)):
            self.warnings.append(f"{node.name!r}: Gather of scattered channels timed as a slice")
        self._add(OpSpec("slice", x, out_channels=len(index)), [node.input[0]], [node.output[0]], [node])

    def _map_DepthToSpace(self, node: onnx.NodeProto) -> None:
        """PixelShuffle (CRD; TensorFlow's DCR order moves the same bytes)."""
        self._map_pixelshuffle(node, "up")

    def _map_SpaceToDepth(self, node: onnx.NodeProto) -> None:
        self._map_pixelshuffle(node, "down")

    def _map_pixelshuffle(self, node: onnx.NodeProto, mode: str) -> None:
        spec = OpSpec("pixelshuffle", self._shape(node.input[0]), stride=attrs(node)["blocksize"], mode=mode)
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_Reshape(self, node: onnx.NodeProto) -> None:
        """A channel shuffle or a PixelUnshuffle (reshape -> transpose -> reshape, as torch writes
        them) is one kernel; any other reshape is glue."""
        x = self._shape(node.input[0])
        y = self.g.shapes.get(node.output[0], ())
        transpose = self._only_consumer(node.output[0])
        back = self._only_consumer(transpose.output[0]) if transpose is not None else None
        unshuffle = (
            len(x) == 4
            and len(y) == 6
            and y[3] == y[5]
            and transpose is not None
            and transpose.op_type == "Transpose"
            and list(attrs(transpose).get("perm", [])) == [0, 1, 3, 5, 2, 4]
            and back is not None
            and back.op_type == "Reshape"
        )
        if unshuffle:
            spec = OpSpec("pixelshuffle", x, stride=y[3], mode="down")
            if self.g.shapes.get(back.output[0]) == spec.output_shapes[0]:
                self._add(spec, [node.input[0]], [back.output[0]], [node, transpose, back])
                return
        if not (
            len(x) == 4
            and len(y) == 5
            and transpose is not None
            and transpose.op_type == "Transpose"
            and list(attrs(transpose).get("perm", [])) == [0, 2, 1, 3, 4]
            and back is not None
        ):
            self._map_glue(node)
            return
        spec = OpSpec("shuffle", x, groups=y[1])
        if back.op_type == "Reshape" and self.g.shapes.get(back.output[0]) == x:
            self._add(spec, [node.input[0]], [back.output[0]], [node, transpose, back])
        elif back.op_type == "DequantizeLinear" and id(transpose) in self.int8:
            # an 8-bit shuffle leaving for float32 before the reshape back: the dequantize and
            # the reshape come after it
            self._add(spec, [node.input[0]], [transpose.output[0]], [node, transpose])
        else:
            self._map_glue(node)

    def _map_glue(self, node: onnx.NodeProto) -> None:
        self._add(None, [node.input[0]], list(node.output), [node])


def _add_pads(pads: list[int], extra: tuple[int, int, int, int] | None) -> list[int]:
    """A node's pads plus those of a Pad folded into it (both ONNX order: begins, then ends)."""
    return list(pads) if extra is None else [p + e for p, e in zip(pads, extra, strict=True)]


def _symmetric_pads(
    pads: list[int],
    x: tuple[int, ...],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    out: tuple[int, ...],
) -> tuple[int, int]:
    """Per axis, the symmetric padding that gives the node's output size (asymmetric pads, as
    TensorFlow-style "same" padding writes them, rounded)."""
    found = []
    for axis in (0, 1):
        size, k, s, d = x[2 + axis], kernel[axis], strides[axis], dilations[axis]
        match = [p for p in range(0, k + 1) if conv_out(size, k, s, 2 * p, d) == out[2 + axis]]
        found.append(match[0] if match else (pads[axis] + pads[axis + 2] + 1) // 2)
    return found[0], found[1]


_ACTIVATION_NAMES = {
    "Relu": "relu",
    "HardSwish": "hardswish",
    "HardSigmoid": "hardsigmoid",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LeakyRelu": "leakyrelu",
    "Elu": "elu",
    "Gelu": "gelu",
    "Mish": "mish",
    "Erf": "erf",
    "Softplus": "softplus",
    "PRelu": "prelu",
    "Sqrt": "sqrt",
    "Exp": "exp",
    "Log": "log",
    "Abs": "abs",
    "Neg": "neg",
    "Reciprocal": "reciprocal",
    "Selu": "selu",
    "Celu": "celu",
}


def _activation_patterns(
    graph: OnnxGraph, consumers: dict[str, list[onnx.NodeProto]]
) -> dict[int, tuple[str, list[onnx.NodeProto]]]:
    """Multi-node activations as torch's exporter writes them, keyed by their first node:
    GELU ``x / sqrt2 -> Erf -> + 1 -> * x -> * 0.5`` and Mish ``Softplus -> Tanh -> * x``."""

    def only(name: str, op_type: str) -> onnx.NodeProto | None:
        readers = consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None

    def const(node: onnx.NodeProto, value: float) -> bool:
        values = [graph.value(i) for i in node.input if graph.is_static(i)]
        return len(values) == 1 and values[0].size == 1 and abs(float(values[0].ravel()[0]) - value) < 1e-3

    found: dict[int, tuple[str, list[onnx.NodeProto]]] = {}
    for node in graph.data_nodes:
        if node.op_type == "Div" and const(node, 2**0.5) and not graph.is_static(node.input[0]):
            x = node.input[0]
            erf = only(node.output[0], "Erf")
            add = erf and only(erf.output[0], "Add")
            mul = add and const(add, 1.0) and only(add.output[0], "Mul")
            half = mul and x in mul.input and only(mul.output[0], "Mul")
            if half and const(half, 0.5):
                found[id(node)] = ("gelu", [node, erf, add, mul, half])
        elif node.op_type == "Softplus":
            tanh = only(node.output[0], "Tanh")
            mul = tanh and only(tanh.output[0], "Mul")
            if mul and node.input[0] in mul.input:
                found[id(node)] = ("mish", [node, tanh, mul])
    return found


# ----- quantized (QDQ) networks -----------------------------------------------------------------
# Ops ONNX Runtime replaces, with the DQ before and the Q after them, by one QLinear kernel ...
_QLINEAR_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Concat",
        "AveragePool",
        "GlobalAveragePool",
        "Sigmoid",
        "LeakyRelu",
    }
)
# ... and ops it runs on the 8-bit tensor itself, dropping the DQ before and the Q after them.
_WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})  # 8-bit only with 8-bit weights (below)
# ... and those whose float32 weights ONNX Runtime quantizes itself (its WeightBiasQuantization)
_RUNTIME_QUANTIZED_OPS = frozenset({"Conv", "Gemm"})
_DROP_QDQ_OPS = frozenset(
    {"MaxPool", "Split", "Slice", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Relu", "Clip"}
)


def _quantized_regions(
    graph: OnnxGraph,
    consumers: dict[str, list[onnx.NodeProto]],
    constant_dequantize: dict[str, onnx.NodeProto],
    rules: FusionRules,
) -> tuple[dict[int, str], set[int]]:
    """Which ops run in 8 bits (id -> int8/uint8), and which Q/DQ nodes are fused into them.

    An op runs in 8 bits when every data input comes from a DequantizeLinear and every reader
    of its outputs is a QuantizeLinear, and the device's runtime fuses that pattern: ONNX
    Runtime turns DQ -> op -> Q into one QLinear kernel (or drops the DQ and Q around a pooling
    or reshape). Whether it does when one of the op's 8-bit tensors has several readers is
    the device's, measured (``FusionRules.qdq_fuses``): on x86 ORT fuses uint8 only and turns
    an int8 Q -> DQ pair into uint8 only where the Q has one reader, so an int8 conv next to
    a branching tensor runs as a float conv between DequantizeLinear and QuantizeLinear.

    A QuantizeLinear after an 8-bit op (or after a DequantizeLinear: a pair that cancels) is
    part of it; one after a float op is a real kernel (float32 entering 8 bits). A
    DequantizeLinear read only by 8-bit ops or quantizes is fused; one read by a float op is a
    real kernel.
    """
    producer = {out: n for n in graph.data_nodes for out in n.output}

    def kind(name: str) -> str:
        node = producer.get(name)
        return node.op_type if node is not None else ""

    def readers(name: str) -> int:
        """Nodes (and graph outputs) reading a tensor, through the DequantizeLinears on it."""
        count = int(name in graph.outputs)
        for node in consumers.get(name, []):
            count += readers(node.output[0]) if node.op_type == "DequantizeLinear" else 1
        return count

    def branches(quantized: str) -> bool:
        """An 8-bit tensor that is not one quantize read by one node."""
        return kind(quantized) != "QuantizeLinear" or readers(quantized) != 1

    int8: dict[int, str] = {}
    for node in graph.data_nodes:
        if node.op_type not in _QLINEAR_OPS | _DROP_QDQ_OPS:
            continue
        if node.op_type in _WEIGHTED_OPS and not _weights_run_8bit(node, graph, constant_dequantize):
            continue
        data_inputs = [i for i in node.input if i and not graph.is_static(i)]
        outputs, clips = [], []
        for reader in (r for o in node.output if o for r in consumers.get(o, [])):
            if _clip_before_quantize(reader, graph, consumers):  # ORT drops it: the Q clips
                clips.append(reader)
                outputs += consumers[reader.output[0]]
            else:
                outputs.append(reader)
        if not (
            data_inputs
            and all(kind(i) == "DequantizeLinear" for i in data_inputs)
            and outputs
            and all(r.op_type == "QuantizeLinear" for r in outputs)
            and not any(o in graph.outputs for o in node.output)
        ):
            continue
        dtype = _int_dtype(graph, producer[data_inputs[0]])
        tensors = [producer[i].input[0] for i in data_inputs] + [q.output[0] for q in outputs]
        branching = [branches(t) for t in tensors]
        if node.op_type in BINARY_OPS:  # a constant operand's lone DQ is not a pair ORT converts
            branching += [True for i in node.input if i in constant_dequantize]
        if node.op_type in _QLINEAR_OPS:
            fused = rules.qdq_fuses(dtype, branching=any(branching))
        else:  # the DQ and Q it drops must be alike: all of them converted, or none
            fused = all(branching) or not any(branching) or rules.qdq_fuses(dtype, branching=True)
        if fused:
            for op in (node, *clips):
                int8[id(op)] = dtype
    fused_qdq: set[int] = set()
    for node in graph.data_nodes:
        if node.op_type == "QuantizeLinear":
            source = producer.get(node.input[0])
            if source is not None and (id(source) in int8 or source.op_type == "DequantizeLinear"):
                fused_qdq.add(id(node))
        elif node.op_type == "DequantizeLinear" and not graph.is_static(node.input[0]):
            dq_readers = consumers.get(node.output[0], [])
            if (
                dq_readers
                and node.output[0] not in graph.outputs
                and all(id(r) in int8 or r.op_type == "QuantizeLinear" for r in dq_readers)
            ):
                fused_qdq.add(id(node))
    return int8, fused_qdq


def _clip_bounds(node: onnx.NodeProto, graph: OnnxGraph) -> tuple[float | None, float | None]:
    """A Clip's (min, max), None where unbounded."""
    a = attrs(node)
    lo = graph.value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
    hi = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
    return (None if lo is None else float(np.ravel(lo)[0]), None if hi is None else float(np.ravel(hi)[0]))


def _clip_before_quantize(
    node: onnx.NodeProto, graph: OnnxGraph, consumers: dict[str, list[onnx.NodeProto]]
) -> bool:
    """A Relu or Clip whose one reader is a QuantizeLinear whose range lies within the clip:
    ONNX Runtime removes it (ReluQuantFusion, ClipQuantFusion), since quantizing clips as much.
    This is how a float32 layer before a quantized one ends: conv -> Relu -> Q."""
    readers = consumers.get(node.output[0], [])
    if node.op_type not in ("Relu", "Clip") or node.output[0] in graph.outputs or len(readers) != 1:
        return False
    quantize = readers[0]
    if quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3 or not quantize.input[2]:
        return False
    scale, zero = graph.value(quantize.input[1]), graph.value(quantize.input[2])
    if scale is None or zero is None or np.size(scale) != 1:
        return False
    limits = np.iinfo(zero.dtype)
    step, offset = float(np.ravel(scale)[0]), int(np.ravel(zero)[0])
    lower, upper = step * (limits.min - offset), step * (limits.max - offset)
    lo, hi = (0.0, None) if node.op_type == "Relu" else _clip_bounds(node, graph)
    tolerance = 1e-6 * max(abs(lower), abs(upper), 1.0)
    return (lo is None or lo <= lower + tolerance) and (hi is None or upper <= hi + tolerance)


def _weights_run_8bit(
    node: onnx.NodeProto, graph: OnnxGraph, constant_dequantize: dict[str, onnx.NodeProto]
) -> bool:
    """Whether a conv's, gemm's or matmul's weights can run in 8 bits: they come quantized (a
    DequantizeLinear of a constant), or they are float32 constants that ONNX Runtime quantizes
    itself when the op reads a dequantized input (its WeightBiasQuantization pass, per-tensor
    int8): so a Conv or Gemm "left float32" between 8-bit layers still runs as QLinearConv. ORT
    does that only for a Conv or Gemm whose bias is absent or a float constant;
    a bias computed at run time (the DequantizeLinear of a bias the quantizer shared with a
    quantized layer) keeps the layer float32."""
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight in constant_dequantize:
        return True
    bias = node.input[2] if len(node.input) > 2 else ""
    return (
        node.op_type in _RUNTIME_QUANTIZED_OPS
        and _runtime_constant(weight, graph, constant_dequantize)
        and (not bias or _runtime_constant(bias, graph, constant_dequantize))
    )


def _runtime_weight_zero_point(weights: np.ndarray) -> int:
    """The int8 zero point ONNX Runtime's WeightBiasQuantization gives float32 weights (its
    ``GetQuantizationParameter``: asymmetric, per tensor, in float32). A conv whose weights get
    a zero point other than 0 runs a slower MLAS path (1.2-1.6x in the harness); at 0 it runs as
    fast as the quantizer's own 8-bit conv, so the weights' values, not only their shape, decide."""
    w = np.asarray(weights, np.float32)
    lo, hi = np.float32(min(w.min(), 0.0)), np.float32(max(w.max(), 0.0))
    scale = np.float32(1.0) if hi == lo else (hi - lo) / np.float32(255.0)
    return int(np.round(np.clip(np.float32(-128.0) - lo / scale, -128, 127)))  # half to even


def _runtime_constant(name: str, graph: OnnxGraph, constant_dequantize: dict[str, onnx.NodeProto]) -> bool:
    """A tensor ONNX Runtime holds as an initializer: constant, and not a DequantizeLinear's
    output (ORT's constant folding leaves those, to keep the QDQ pattern)."""
    return bool(name) and graph.is_static(name) and name not in constant_dequantize


def _elementwise_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A tensor's shape as the 2-D or 4-D shape an elementwise op's OpSpec takes (same size)."""
    if len(shape) in (2, 4):
        return shape
    if len(shape) < 2:
        return (1, math.prod(shape))
    if len(shape) == 3:
        return (*shape, 1)
    return (shape[0], math.prod(shape[1:-2]), shape[-2], shape[-1])


def _int_dtype(graph: OnnxGraph, node: onnx.NodeProto) -> str:
    """int8 or uint8, from a Q/DQ node's zero point (ONNX's default is uint8)."""
    zero = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return "int8" if zero is not None and zero.dtype == np.int8 else "uint8"


# ----- pass 3: ops -> kernels ---------------------------------------------------------------
def _group(items: list[_Item], graph: OnnxGraph, rules: FusionRules) -> list[SplitKernel]:
    users: dict[str, list[_Item]] = {}
    for it in items:
        for name in it.inputs:
            users.setdefault(name, []).append(it)
    producer = {out: it for it in items for out in it.outputs}
    claimed: set[int] = set()
    groups: list[list[_Item]] = []
    group_of: dict[int, list[_Item]] = {}

    def single_user(name: str) -> _Item | None:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and name not in graph.outputs else None

    for it in items:
        if id(it) in claimed:
            continue
        se = _se_chain(it, single_user)
        if se is not None:
            groups.append(se)
            claimed.update(id(x) for x in se)
            continue
        joined = False
        for name in it.inputs:
            prev = producer.get(name)
            group = group_of.get(id(prev)) if prev is not None else None
            if (
                group is None
                or group[-1] is not prev
                or len(prev.outputs) != 1
                or single_user(name) is not it
            ):
                continue
            signature = "|".join(op_class(x.spec) for x in group)
            if not rules.fuses(signature, op_class(it.spec)):
                continue
            try:
                Kernel(tuple(x.spec for x in group) + (it.spec,))
            except InvalidKernelError:
                continue
            group.append(it)
            group_of[id(it)] = group
            joined = True
            break
        if not joined:
            group = [it]
            groups.append(group)
            group_of[id(it)] = group
    return [
        SplitKernel(Kernel(tuple(x.spec for x in g)), tuple(n for x in g for n in x.nodes)) for g in groups
    ]


def _se_chain(it: _Item, single_user) -> list[_Item] | None:
    if it.spec.op != "globalavgpool":
        return None
    chain = [it]
    for _ in range(2):
        nxt = single_user(chain[-1].outputs[0])
        if nxt is None or nxt.spec is None or nxt.spec.op != "conv":
            return None
        chain.append(nxt)
    mul = single_user(chain[-1].outputs[0])
    if (
        mul is None
        or mul.spec is None
        or mul.spec.op != "mul"
        or mul.spec.broadcast != "channel"
        or mul.inputs[0] != it.inputs[0]
    ):
        return None
    chain.append(mul)
    try:
        Kernel(tuple(x.spec for x in chain))
    except InvalidKernelError:
        return None
    return chain
