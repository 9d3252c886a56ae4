"""ModelSplitter: an ONNX CNN graph -> the kernels the backend really executes.

Three passes:
  1. *Fold static subgraphs.* Constants, and everything computed only from constants and
     tensor shapes (the legacy torch exporter's ``Shape -> Gather -> Div -> Slice`` for
     ``chunk``, Clip bounds, Reshape targets), are evaluated here with numpy, as the
     runtime folds them at load time; they cost nothing.
  2. *Map nodes to ops* (OpSpecs). Conv with its batch-norm, per-channel constant add/mul
     and activation (Relu, Clip(0, 6), HardSwish, HardSigmoid, Sigmoid, and Sigmoid-Mul
     swish) is one conv; MatMul + bias is a gemm; two Slices of one tensor along channels
     are one split; Reshape -> Transpose -> Reshape is a channel shuffle; Flatten, Reshape,
     Squeeze, Unsqueeze and Softmax are *glue* nodes (executed, but no compute: they cost
     the per-node overhead); Identity and Dropout vanish.
  3. *Group ops into kernels* with the backend's measured fusion rules
     (predictors/fusion.py), and squeeze-and-excitation blocks (globalavgpool -> conv ->
     conv -> mul of the pooled tensor) into one kernel.

Ops it does not know are listed by type and node name in ``UnsupportedOpsError`` (or in
``SplitResult.warnings`` with ``strict=False``, where they are left out of the sum).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from profiler.opspec import InvalidOpSpecError, OpSpec

from .fusion import FusionRules
from .kernel import InvalidKernelError, Kernel, op_class

ACTIVATION_OPS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid")
GLUE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax")
FREE_OPS = ("Identity", "Dropout")
BINARY_OPS = {"Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul"}


class UnsupportedOpsError(ValueError):
    """The graph holds ops the splitter cannot map to kernels."""


@dataclass
class SplitKernel:
    """One kernel and the ONNX nodes it came from."""

    kernel: Kernel
    nodes: tuple[str, ...]


@dataclass
class SplitResult:
    kernels: list[SplitKernel]
    glue_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def ops(self) -> list[OpSpec]:
        return [op for k in self.kernels for op in k.kernel.ops]


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
        if not isinstance(model, onnx.ModelProto):
            path = Path(model)
            if not path.exists():
                raise FileNotFoundError(f"ONNX model {path} does not exist")
            model = onnx.load(str(path))
        graph = _Graph(model)
        mapper = _Mapper(graph)
        items = mapper.run()
        unsupported = sorted(set(mapper.unsupported))
        if unsupported and self.strict:
            raise UnsupportedOpsError(
                f"the model has ops hwlat cannot map to kernels: {'; '.join(unsupported)}. "
                "Supported: Conv, Gemm/MatMul, pooling, Add/Mul, Concat, Split/Slice, channel "
                "shuffle, activations (Relu, Clip, HardSwish, HardSigmoid, Sigmoid, swish), "
                "BatchNormalization and reshape-like nodes; pass strict=False to predict without them")
        result = SplitResult(kernels=[], warnings=graph.warnings + mapper.warnings,
                             unsupported=unsupported)
        if unsupported:
            result.warnings.append(f"left out (unsupported): {'; '.join(unsupported)}")
        result.glue_nodes = [n for it in items if it.spec is None for n in it.nodes]
        result.kernels = _group([it for it in items if it.spec is not None], graph,
                                self.fusion_rules or FusionRules("none"))
        return result


# ----- pass 1: static folding and shapes ----------------------------------------------------
class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.warnings: list[str] = []
        self.initializers = {t.name: t for t in g.initializer}
        self.values: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in g.initializer}
        for inp in g.input:
            if inp.name in self.initializers:
                continue
            dims = []
            for d in inp.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                else:
                    dims.append(1)
                    self.warnings.append(f"input {inp.name!r}: symbolic dimension "
                                         f"{d.dim_param or '?'} taken as 1")
            self.shapes[inp.name] = tuple(dims)
        self.outputs = {o.name for o in g.output}
        self.nodes = _toposort(g)
        self.static: set[str] = set(self.initializers)
        self.data_nodes: list[onnx.NodeProto] = []
        for node in self.nodes:
            self._visit(node)

    def value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        if name in self.initializers:
            self.values[name] = numpy_helper.to_array(self.initializers[name])
            return self.values[name]
        return None

    def is_static(self, name: str) -> bool:
        return name == "" or name in self.static

    def _visit(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self._set_static(node.output[0], _constant_value(node))
            return
        if node.op_type == "Shape" and node.input[0] in self.shapes:
            shape = self.shapes[node.input[0]]
            attrs = _attrs(node)
            self._set_static(node.output[0],
                             np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64))
            return
        if all(self.is_static(i) for i in node.input) and node.op_type in _STATIC_EVAL:
            ins = [self.value(i) if i else None for i in node.input]
            try:
                outs = _STATIC_EVAL[node.op_type](ins, _attrs(node))
            except Exception as exc:  # a malformed constant subgraph: say where
                raise UnsupportedOpsError(f"cannot fold the constant node {node.name or node.op_type!r} "
                                          f"({node.op_type}): {exc}") from None
            for name, value in zip(node.output, outs, strict=False):
                self._set_static(name, np.asarray(value))
            return
        self.data_nodes.append(node)
        try:
            shapes = _infer_shapes(node, self)
        except (KeyError, ValueError, TypeError, IndexError):
            shapes = None
        for i, name in enumerate(node.output):
            if shapes is not None and i < len(shapes) and shapes[i] is not None:
                self.shapes[name] = tuple(int(v) for v in shapes[i])

    def _set_static(self, name: str, value: np.ndarray) -> None:
        self.values[name] = value
        self.shapes[name] = tuple(value.shape)
        self.static.add(name)


def _toposort(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where producers come first (exporters usually write them so)."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise UnsupportedOpsError(f"the graph has a cycle or inputs nothing produces: {missing}")
        pending = rest
    return ordered


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"].t)
    for name, dtype in (("value_float", np.float32), ("value_int", np.int64),
                        ("value_floats", np.float32), ("value_ints", np.int64)):
        if name in attrs:
            return np.asarray(onnx.helper.get_attribute_value(attrs[name]), dtype=dtype)
    raise UnsupportedOpsError(f"Constant node {node.name!r} has no value attribute hwlat can read")


def _axes(ins: list, attrs: dict) -> list[int]:
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in np.asarray(ins[1]).ravel()]
    return [int(a) for a in attrs.get("axes", [])]


def _slice(x: np.ndarray, ins: list, attrs: dict) -> np.ndarray:
    starts, ends = (ins[1], ins[2]) if len(ins) > 2 else (attrs["starts"], attrs["ends"])
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else attrs.get("axes", range(len(starts)))
    steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(np.ravel(starts), np.ravel(ends), np.ravel(axes), np.ravel(steps), strict=False):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _reshape_target(shape: tuple[int, ...], target: Sequence[int]) -> tuple[int, ...]:
    dims = [shape[i] if int(t) == 0 else int(t) for i, t in enumerate(target)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(shape) // max(known, 1)
    return tuple(dims)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.asarray(a).dtype, np.integer) and np.issubdtype(np.asarray(b).dtype, np.integer):
        return np.trunc(np.asarray(a) / np.asarray(b)).astype(np.asarray(a).dtype)
    return np.asarray(a) / np.asarray(b)


_STATIC_EVAL = {
    "Identity": lambda i, a: [i[0]],
    "Cast": lambda i, a: [np.asarray(i[0]).astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))],
    "Gather": lambda i, a: [np.take(i[0], i[1], axis=a.get("axis", 0))],
    "Unsqueeze": lambda i, a: [np.expand_dims(i[0], tuple(_axes(i, a)))],
    "Squeeze": lambda i, a: [np.squeeze(i[0], tuple(_axes(i, a)) or None)],
    "Concat": lambda i, a: [np.concatenate([np.atleast_1d(v) for v in i], axis=a["axis"])],
    "Add": lambda i, a: [np.add(i[0], i[1])],
    "Sub": lambda i, a: [np.subtract(i[0], i[1])],
    "Mul": lambda i, a: [np.multiply(i[0], i[1])],
    "Div": lambda i, a: [_div(i[0], i[1])],
    "Neg": lambda i, a: [np.negative(i[0])],
    "Floor": lambda i, a: [np.floor(i[0])],
    "Ceil": lambda i, a: [np.ceil(i[0])],
    "Min": lambda i, a: [np.minimum.reduce(i)],
    "Max": lambda i, a: [np.maximum.reduce(i)],
    "Equal": lambda i, a: [np.equal(i[0], i[1])],
    "Where": lambda i, a: [np.where(i[0], i[1], i[2])],
    "Slice": lambda i, a: [_slice(i[0], i, a)],
    "Reshape": lambda i, a: [np.reshape(i[0], _reshape_target(np.shape(i[0]), i[1]))],
    "Transpose": lambda i, a: [np.transpose(i[0], a.get("perm"))],
    "ConstantOfShape": lambda i, a: [np.full(tuple(int(v) for v in i[0]),
                                             numpy_helper.to_array(a["value"]).ravel()[0]
                                             if "value" in a else 0.0)],
    "Range": lambda i, a: [np.arange(i[0], i[1], i[2])],
    "ReduceProd": lambda i, a: [np.prod(i[0], keepdims=bool(a.get("keepdims", 1)))],
}


def _conv_out(size: int, k: int, s: int, pad: int, d: int, ceil: bool = False) -> int:
    span = d * (k - 1) + 1
    q = (size + pad - span) / s
    return int(math.ceil(q) if ceil else math.floor(q)) + 1


def _spatial(node: onnx.NodeProto, shape: tuple[int, ...], kernel: Sequence[int]) -> tuple[int, int]:
    a = _attrs(node)
    strides = a.get("strides", [1, 1])
    dil = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    if a.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER", "SAME_UPPER", "SAME_LOWER"):
        return (math.ceil(shape[2] / strides[0]), math.ceil(shape[3] / strides[1]))
    ceil = bool(a.get("ceil_mode", 0))
    return (_conv_out(shape[2], kernel[0], strides[0], pads[0] + pads[2], dil[0], ceil),
            _conv_out(shape[3], kernel[1], strides[1], pads[1] + pads[3], dil[1], ceil))


def _infer_shapes(node: onnx.NodeProto, g: _Graph) -> list[tuple[int, ...] | None]:
    op = node.op_type
    x = g.shapes[node.input[0]] if node.input else ()
    a = _attrs(node)
    if op == "Conv":
        w = g.shapes[node.input[1]]
        return [(x[0], w[0], *_spatial(node, x, w[2:]))]
    if op in ("MaxPool", "AveragePool"):
        return [(x[0], x[1], *_spatial(node, x, a["kernel_shape"]))]
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return [(x[0], x[1], 1, 1)]
    if op in ("ReduceMean", "ReduceMax"):
        axes = [ax % len(x) for ax in _axes([None, *(g.value(i) for i in node.input[1:])], a)]
        keep = a.get("keepdims", 1)
        return [tuple((1 if i in axes else d) for i, d in enumerate(x) if keep or i not in axes)]
    if op == "Gemm":
        w = g.shapes[node.input[1]]
        return [(x[1] if a.get("transA") else x[0], w[0] if a.get("transB") else w[1])]
    if op == "MatMul":
        w = g.shapes[node.input[1]]
        return [(*x[:-1], w[-1])]
    if op in BINARY_OPS or op in ("Pow", "Max", "Min"):
        return [tuple(np.broadcast_shapes(*(g.shapes[i] for i in node.input)))]
    if op in ACTIVATION_OPS or op in FREE_OPS or op in ("BatchNormalization", "Softmax", "LogSoftmax",
                                                        "LeakyRelu", "Tanh", "Elu", "PRelu", "Erf"):
        return [x]
    if op == "Concat":
        axis = a["axis"] % len(x)
        shapes = [g.shapes[i] for i in node.input]
        return [tuple(sum(s[axis] for s in shapes) if i == axis else d for i, d in enumerate(x))]
    if op == "Split":
        axis = a.get("axis", 0) % len(x)
        sizes = g.value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("split")
        if sizes is None:
            n = a.get("num_outputs", len(node.output))
            sizes = [x[axis] // n] * n
        return [tuple(int(s) if i == axis else d for i, d in enumerate(x)) for s in np.ravel(sizes)]
    if op == "Slice":
        ins = [np.empty(x, dtype=np.uint8), *(g.value(i) if i else None for i in node.input[1:])]
        return [_slice(ins[0], ins, a).shape]
    if op == "Reshape":
        return [_reshape_target(x, g.value(node.input[1]))]
    if op == "Flatten":
        axis = a.get("axis", 1) % len(x)
        return [(math.prod(x[:axis]), math.prod(x[axis:]))]
    if op == "Transpose":
        perm = a.get("perm", list(reversed(range(len(x)))))
        return [tuple(x[p] for p in perm)]
    if op in ("Squeeze", "Unsqueeze"):
        axes = _axes([None, *(g.value(i) for i in node.input[1:])], a)
        dummy = np.empty(x, dtype=np.uint8)
        if op == "Squeeze":
            return [np.squeeze(dummy, tuple(axes) or None).shape]
        return [np.expand_dims(dummy, tuple(axes)).shape]
    return [None] * len(node.output)


# ----- pass 2: nodes -> ops -----------------------------------------------------------------
class _Mapper:
    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.items: list[_Item] = []
        self.producer: dict[str, _Item] = {}
        self.alias: dict[str, str] = {}
        self.done: set[int] = set()
        self.unsupported: list[str] = []
        self.warnings: list[str] = []
        self.ceil_mode_nodes: list[str] = []
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.data_nodes:
            for name in node.input:
                if name and not graph.is_static(name):
                    self.consumers.setdefault(name, []).append(node)

    def run(self) -> list[_Item]:
        for node in self.g.data_nodes:
            if id(node) in self.done:
                continue
            try:
                self._map(node)
            except (InvalidOpSpecError, KeyError, ValueError, TypeError, IndexError) as exc:
                if isinstance(exc, UnsupportedOpsError):
                    raise
                self.unsupported.append(f"{node.op_type} ({node.name or 'unnamed'}: {exc})")
        if self.ceil_mode_nodes:
            self.warnings.append(f"{len(self.ceil_mode_nodes)} pooling nodes use ceil_mode, timed as floor "
                                 f"mode (one row and column less at most): {', '.join(self.ceil_mode_nodes)}")
        return self.items

    # -- helpers --
    def _root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def _uses(self, name: str) -> int:
        """Data consumers of a tensor (through Identity/Dropout); a graph output counts as one."""
        count = 0
        for node in self.consumers.get(name, []):
            if node.op_type in FREE_OPS:
                count += self._uses(node.output[0])
            else:
                count += 1
        return count + (name in self.g.outputs)

    def _only_consumer(self, name: str) -> onnx.NodeProto | None:
        nodes = [n for n in self.consumers.get(name, [])]
        if len(nodes) == 1 and name not in self.g.outputs:
            node = nodes[0]
            return self._only_consumer(node.output[0]) if node.op_type in FREE_OPS else node
        return None

    def _shape(self, name: str) -> tuple[int, ...]:
        return self.g.shapes[self._root(name)] if self._root(name) in self.g.shapes else self.g.shapes[name]

    def _add(self, spec: OpSpec | None, inputs: list[str], outputs: list[str],
             nodes: list[onnx.NodeProto]) -> _Item:
        item = _Item(spec, [self._root(i) for i in inputs], list(outputs),
                     [n.name or n.op_type for n in nodes])
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
        if op in FREE_OPS:
            self.alias[node.output[0]] = self._root(node.input[0])
            if len(node.output) > 1 and node.output[1]:
                self.alias[node.output[1]] = self._root(node.input[0])
            self.done.add(id(node))
            return
        handler = getattr(self, f"_map_{op}", None)
        if op in ACTIVATION_OPS:
            handler = self._map_activation
        elif op in BINARY_OPS:
            handler = self._map_binary
        elif op in GLUE_OPS and handler is None:
            handler = self._map_glue
        if handler is None:
            self.unsupported.append(f"{op} ({node.name or 'unnamed'})")
            self.done.add(id(node))
            return
        handler(node)

    def _map_Conv(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        w = self.g.shapes[node.input[1]]
        a = _attrs(node)
        if len(x) != 4:
            raise ValueError(f"only 2-D convolutions (4-D tensors) are supported, input is {x}")
        if w[2] != w[3]:
            raise ValueError(f"non-square kernel {w[2]}x{w[3]}")
        strides = a.get("strides", [1, 1])
        out = self.g.shapes[node.output[0]]
        pad = _symmetric_pad(a, x, w[2], strides[0], a.get("dilations", [1, 1])[0], out)
        spec = OpSpec("conv", x, out_channels=w[0], kernel=w[2], stride=strides[0], padding=pad,
                      dilation=a.get("dilations", [1, 1])[0], groups=a.get("group", 1),
                      bias=len(node.input) > 2 and bool(node.input[2]))
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_BatchNormalization(self, node: onnx.NodeProto) -> None:
        item = self._foldable(node.input[0], ("conv",))
        if item is not None:
            self._fold(item, dataclasses.replace(item.spec, bias=True), node.output[0], [node])
            return
        shape = self._shape(node.input[0])
        self._add(OpSpec("mul", shape, broadcast="channel"), [node.input[0]], [node.output[0]], [node])

    def _map_activation(self, node: onnx.NodeProto) -> None:
        """Fold into the conv/gemm before it when that conv feeds nothing else; ``x * sigmoid(x)``
        is swish and ``x * hardsigmoid(x)`` hardswish (two nodes, one activation)."""
        src = self._root(node.input[0])
        gate = self._only_consumer(node.output[0])
        readers = [n for n in self.consumers.get(src, []) if n is not node]
        gated = (node.op_type in ("Sigmoid", "HardSigmoid") and gate is not None
                 and gate.op_type == "Mul" and readers == [gate]
                 and src in map(self._root, gate.input))
        if gated:
            activation = "swish" if node.op_type == "Sigmoid" else "hardswish"
            nodes, output = [node, gate], gate.output[0]
        else:
            activation, nodes, output = self._activation_name(node), [node], node.output[0]
        item = self.producer.get(src)
        if (item is not None and item.spec is not None and item.spec.op in ("conv", "gemm")
                and item.spec.activation == "none" and len(item.outputs) == 1
                and self._uses(src) == len(nodes)):
            self._fold(item, dataclasses.replace(item.spec, activation=activation), output, nodes)
            return
        self._add(OpSpec("act", self._shape(src), activation=activation), [src], [output], nodes)

    def _activation_name(self, node: onnx.NodeProto) -> str:
        op = node.op_type
        if op == "Clip":
            a = _attrs(node)
            lo = self.g.value(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
            hi = self.g.value(node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
            lo = None if lo is None else float(np.ravel(lo)[0])
            hi = None if hi is None else float(np.ravel(hi)[0])
            if lo == 0.0 and hi is None:
                return "relu"
            if (lo, hi) != (0.0, 6.0):
                self.warnings.append(f"Clip({lo}, {hi}) at {node.name!r} is timed as relu6")
            return "relu6"
        return {"Relu": "relu", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid",
                "Sigmoid": "sigmoid"}[op]

    def _map_Gemm(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        w = self.g.shapes[node.input[1]]
        a = _attrs(node)
        if len(x) != 2 or a.get("transA"):
            raise ValueError(f"Gemm needs a 2-D (N, C) input without transA, got {x}")
        out = w[0] if a.get("transB") else w[1]
        spec = OpSpec("gemm", x, out_channels=out, bias=len(node.input) > 2 and bool(node.input[2]))
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_MatMul(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        if not self.g.is_static(node.input[1]) or len(x) != 2 or len(self.g.shapes[node.input[1]]) != 2:
            raise ValueError("only MatMul of a 2-D activation by a 2-D weight is supported")
        spec = OpSpec("gemm", x, out_channels=self.g.shapes[node.input[1]][1], bias=False)
        self._add(spec, [node.input[0]], [node.output[0]], [node])

    def _map_pool(self, node: onnx.NodeProto, op: str) -> None:
        x = self._shape(node.input[0])
        a = _attrs(node)
        k = a["kernel_shape"]
        if len(x) != 4 or k[0] != k[1]:
            raise ValueError(f"only square 2-D pooling is supported (kernel {k}, input {x})")
        s = a.get("strides", [1, 1])[0]
        pad = _symmetric_pad(a, x, k[0], s, 1, self.g.shapes[node.output[0]])
        pad = min(pad, k[0] // 2)
        if a.get("ceil_mode"):
            self.ceil_mode_nodes.append(node.name or node.op_type)
        self._add(OpSpec(op, x, kernel=k[0], stride=s, padding=pad), [node.input[0]],
                  [node.output[0]], [node])

    def _map_MaxPool(self, node: onnx.NodeProto) -> None:
        self._map_pool(node, "maxpool")

    def _map_AveragePool(self, node: onnx.NodeProto) -> None:
        self._map_pool(node, "avgpool")

    def _map_GlobalAveragePool(self, node: onnx.NodeProto) -> None:
        self._add(OpSpec("globalavgpool", self._shape(node.input[0])), [node.input[0]],
                  [node.output[0]], [node])

    def _map_GlobalMaxPool(self, node: onnx.NodeProto) -> None:
        self.warnings.append(f"{node.name!r}: GlobalMaxPool timed as GlobalAveragePool")
        self._map_GlobalAveragePool(node)

    def _map_ReduceMean(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        axes = sorted(ax % len(x) for ax in _axes([None, *(self.g.value(i) for i in node.input[1:])],
                                                    _attrs(node)))
        if len(x) != 4 or axes != [2, 3]:
            raise ValueError(f"only a mean over H and W is supported (axes {axes})")
        self._map_GlobalAveragePool(node)

    def _map_binary(self, node: onnx.NodeProto) -> None:
        kind = BINARY_OPS[node.op_type]
        ins = [i for i in node.input]
        static = [self.g.is_static(i) for i in ins]
        if all(static):
            raise ValueError("both inputs are constant")
        if any(static):
            data = ins[static.index(False)]
            item = self._foldable(data, ("conv",))
            const = self.g.shapes.get(ins[static.index(True)], ())
            if item is not None and item.spec.activation == "none" and math.prod(const) <= \
                    self._shape(data)[1]:
                self._fold(item, dataclasses.replace(item.spec, bias=True), node.output[0], [node])
                return
            if item is None:
                gemm = self._foldable(data, ("gemm",))
                if gemm is not None and kind == "add" and not gemm.spec.bias:
                    self._fold(gemm, dataclasses.replace(gemm.spec, bias=True), node.output[0], [node])
                    return
            shape = self._shape(data)
            bcast = "channel" if len(shape) == 4 else "none"
            self._add(OpSpec(kind, shape, broadcast=bcast), [data], [node.output[0]], [node])
            return
        a, b = (self._shape(i) for i in ins)
        if len(a) < len(b) or (len(a) == len(b) and math.prod(a) < math.prod(b)):
            ins, (a, b) = ins[::-1], (b, a)
        if a == b:
            bcast = "none"
        elif len(a) == 4 and b in ((a[0], a[1], 1, 1), (a[1], 1, 1)):
            bcast = "channel"
        else:
            raise ValueError(f"broadcast of {b} onto {a} (only same shape or per-channel)")
        if len(a) != 4:
            raise ValueError(f"element-wise ops are supported on 4-D tensors, got {a}")
        self._add(OpSpec(kind, a, broadcast=bcast), ins, [node.output[0]], [node])

    def _map_Concat(self, node: onnx.NodeProto) -> None:
        shapes = [self._shape(i) for i in node.input]
        axis = _attrs(node)["axis"] % len(shapes[0])
        if len(shapes[0]) != 4 or axis != 1:
            raise ValueError(f"only channel concat of 4-D tensors is supported (axis {axis})")
        if len(shapes) == 1:
            self.alias[node.output[0]] = self._root(node.input[0])
            self.done.add(id(node))
            return
        n, _, h, w = shapes[0]
        parts = tuple(s[1] for s in shapes)
        self._add(OpSpec("concat", (n, sum(parts), h, w), parts=parts), list(node.input),
                  [node.output[0]], [node])

    def _map_Split(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        outs = [self.g.shapes[o] for o in node.output]
        if len(x) != 4 or any(o[2:] != x[2:] for o in outs):
            raise ValueError(f"only channel split of 4-D tensors is supported ({x} -> {outs})")
        self._add(OpSpec("split", x, parts=tuple(o[1] for o in outs)), [node.input[0]],
                  list(node.output), [node])

    def _map_Slice(self, node: onnx.NodeProto) -> None:
        src = self._root(node.input[0])
        x = self._shape(src)
        slices = [n for n in self.consumers.get(src, []) if n.op_type == "Slice" and id(n) not in self.done]
        slices = [n for n in slices if len(self.g.shapes.get(n.output[0], ())) == 4
                  and self.g.shapes[n.output[0]][2:] == x[2:] and self.g.shapes[n.output[0]][0] == x[0]]
        if node not in slices or len(x) != 4:
            raise ValueError(f"only channel slices of 4-D tensors are supported (input {x})")
        parts = [self.g.shapes[n.output[0]][1] for n in slices]
        if sum(parts) < x[1]:
            parts.append(x[1] - sum(parts))
        if len(parts) < 2 or sum(parts) != x[1]:
            raise ValueError(f"channel slices {parts} of {x[1]} channels are not a split")
        self._add(OpSpec("split", x, parts=tuple(parts)), [src], [n.output[0] for n in slices], slices)

    def _map_Reshape(self, node: onnx.NodeProto) -> None:
        x = self._shape(node.input[0])
        y = self.g.shapes.get(node.output[0], ())
        transpose = self._only_consumer(node.output[0])
        back = self._only_consumer(transpose.output[0]) if transpose is not None else None
        if (len(x) == 4 and len(y) == 5 and transpose is not None and transpose.op_type == "Transpose"
                and list(_attrs(transpose).get("perm", [])) == [0, 2, 1, 3, 4] and back is not None
                and back.op_type == "Reshape" and self.g.shapes.get(back.output[0]) == x):
            self._add(OpSpec("shuffle", x, groups=y[1]), [node.input[0]], [back.output[0]],
                      [node, transpose, back])
            return
        self._map_glue(node)

    def _map_glue(self, node: onnx.NodeProto) -> None:
        self._add(None, [node.input[0]], list(node.output), [node])


def _symmetric_pad(attrs: dict, x: tuple[int, ...], k: int, s: int, d: int,
                   out: tuple[int, ...]) -> int:
    """The symmetric padding that gives the node's output height (asymmetric pads rounded)."""
    for pad in range(0, k + 1):
        if _conv_out(x[2], k, s, 2 * pad, d) == out[2]:
            return pad
    pads = attrs.get("pads", [0, 0, 0, 0])
    return (pads[0] + pads[2] + 1) // 2


# ----- pass 3: ops -> kernels ---------------------------------------------------------------
def _group(items: list[_Item], graph: _Graph, rules: FusionRules) -> list[SplitKernel]:
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
            if group is None or group[-1] is not prev or len(prev.outputs) != 1 \
                    or single_user(name) is not it:
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
    return [SplitKernel(Kernel(tuple(x.spec for x in g)), tuple(n for x in g for n in x.nodes))
            for g in groups]


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
    if mul is None or mul.spec is None or mul.spec.op != "mul" or mul.spec.broadcast != "channel" \
            or mul.inputs[0] != it.inputs[0]:
        return None
    chain.append(mul)
    try:
        Kernel(tuple(x.spec for x in chain))
    except InvalidKernelError:
        return None
    return chain
