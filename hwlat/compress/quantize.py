"""Static int8 quantization of ONNX models with ONNX Runtime, in the QDQ format.

QDQ keeps the float graph and brackets tensors with QuantizeLinear/DequantizeLinear pairs;
ONNX Runtime's CPU provider fuses each DQ -> op -> Q unit into an int8 kernel, and the same
file runs on every provider (ORT has recommended QDQ over the QOperator format since 1.11).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from hwlat.errors import ConfigError
from hwlat.profiler.onnx_models import load_model, random_inputs

# quantize_static's default ``op_types_to_quantize``: the union of both registries, in QDQ format
# too (an Add or GlobalAveragePool gets Q/DQ around it and runs as QLinearAdd/-Pool on CPU).
QUANTIZED_OP_TYPES = frozenset(QLinearOpsRegistry) | frozenset(QDQRegistry)

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def quantize_model(
    model: onnx.ModelProto | str | Path,
    out_path: str | Path,
    *,
    calibration: str | Path | None = None,
    random_batches: int | None = None,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    activation_type: str = "int8",
    weight_type: str = "int8",
    seed: int = 0,
) -> Path:
    """Quantize ``model`` statically (QDQ, MinMax calibration) and write it to ``out_path``.

    Calibration sets each activation's int8 range from the float model's outputs on sample
    inputs: ``calibration`` is a folder of ``.npy`` files (one input array each, for one-input
    models) or ``.npz`` files (one array per graph input name); an array without the batch axis
    gets one. ``random_batches=N`` uses N standard-normal inputs instead (seeded by ``seed``):
    right for latency, which does not depend on the values, not for accuracy. Give exactly one.

    The default is S8S8 (int8 activations and weights). ``activation_type="uint8"`` gives U8S8,
    which x86 CPUs without VNNI run with u8*s8 instructions whose 16-bit intermediate sums can
    saturate and lose accuracy (ORT suggests ``reduce_range`` there; it is not set here).
    ``exclude`` names nodes (see ``quantizable_nodes``) that stay float32: per-layer mixed
    precision, as ORT runs it on CPU. The model goes through ORT's ``quant_pre_process`` first
    (shape inference, basic graph optimizations), as ORT recommends.
    """
    proto = load_model(model)
    if (calibration is None) == (random_batches is None):
        raise ConfigError(
            "give exactly one source of calibration data",
            "a folder of .npy/.npz inputs, or a number of random batches",
        )
    if random_batches is not None and random_batches < 1:
        raise ConfigError(f"random_batches must be at least 1, not {random_batches}")
    activation, weight = _quant_type("activation", activation_type), _quant_type("weight", weight_type)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="hwlat-quantize-") as folder:
        prepared_path, prepared = _prepare(proto, Path(folder))
        _check_exclude(exclude, _quantizable(prepared))
        if calibration is not None:
            feeds = _read_calibration(calibration, prepared)
        else:
            feeds = [random_inputs(prepared, seed + i) for i in range(random_batches)]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(prepared_path),
            str(out_path),
            _Feeds(iter(feeds)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=sorted(QUANTIZED_OP_TYPES),  # what quantizable_nodes() reports
            per_channel=per_channel,
            activation_type=activation,
            weight_type=weight,
            nodes_to_exclude=list(exclude),
        )
    return out_path


def quantizable_nodes(model: onnx.ModelProto | str | Path) -> list[str]:
    """Names of the nodes ``quantize_model`` quantizes (Conv, Gemm, MatMul, Add, pools, ...), in
    graph order: the graph after ORT's pre-processing, which drops Identity/Constant nodes and
    fuses some (a BatchNormalization into its Conv); nodes without a name get ``<op>_<index>``."""
    with tempfile.TemporaryDirectory(prefix="hwlat-quantize-") as folder:
        return _quantizable(_prepare(load_model(model), Path(folder))[1])


def _read_calibration(folder: str | Path, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """The feeds in a calibration folder, checked against the model's inputs (sorted by file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"calibration data {folder} is not a folder", "pass a folder of .npy/.npz inputs")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise ConfigError(f"calibration folder {folder} holds no .npy or .npz files")
    inputs = _graph_inputs(model)
    return [_read_feed(path, inputs) for path in files]


@dataclass(frozen=True)
class _Input:
    name: str
    dims: tuple[int | None, ...]  # None for a symbolic dimension
    dtype: np.dtype


def _graph_inputs(model: onnx.ModelProto) -> list[_Input]:
    initializers = {i.name for i in model.graph.initializer}
    return [
        _Input(
            i.name,
            tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim),
            np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)),
        )
        for i in model.graph.input
        if i.name not in initializers
    ]


def _read_feed(path: Path, inputs: list[_Input]) -> dict[str, np.ndarray]:
    names = [i.name for i in inputs]
    try:
        if path.suffix == ".npy":
            if len(inputs) != 1:
                raise ConfigError(
                    f"{path}: a .npy file holds one array, but the model has inputs {', '.join(names)}",
                    "store .npz files with one array per input name",
                )
            arrays = {names[0]: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # truncated, not numpy, pickled
        raise ConfigError(f"cannot read calibration file {path} ({exc})", "save it with numpy.save") from None
    if set(arrays) != set(names):
        raise ConfigError(
            f"{path} holds arrays {', '.join(sorted(arrays)) or '(none)'}, "
            f"but the model's inputs are {', '.join(names)}",
            "name the arrays after the graph inputs",
        )
    return {i.name: _fit(arrays[i.name], i, path) for i in inputs}


def _fit(array: np.ndarray, spec: _Input, path: Path) -> np.ndarray:
    if array.ndim == len(spec.dims) - 1:
        array = array[np.newaxis]
    if array.ndim != len(spec.dims) or any(
        d is not None and d != a for d, a in zip(spec.dims, array.shape, strict=True)
    ):
        expected = "x".join(str(d or "N") for d in spec.dims)
        raise ConfigError(
            f"{path}: array of shape {'x'.join(map(str, array.shape))} for input {spec.name!r}, "
            f"which takes {expected}"
        )
    return array.astype(spec.dtype, copy=False)


def _quant_type(role: str, name: str) -> QuantType:
    if name not in QUANT_TYPES:
        raise ConfigError(f"{role} type {name!r} is not one of {', '.join(QUANT_TYPES)}")
    return QUANT_TYPES[name]


def _prepare(model: onnx.ModelProto, folder: Path) -> tuple[Path, onnx.ModelProto]:
    """ORT's pre-processing, and a name for every node so that every node can be excluded."""
    raw, prepared_path = folder / "model.onnx", folder / "prepared.onnx"
    onnx.save(model, raw)
    quant_pre_process(str(raw), str(prepared_path))
    prepared = onnx.load(prepared_path)
    _untie_parameters(prepared.graph)
    taken = {n.name for n in prepared.graph.node}
    for index, node in enumerate(prepared.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    onnx.save(prepared, prepared_path)
    return prepared_path, prepared


_WEIGHTED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _untie_parameters(graph: onnx.GraphProto) -> None:
    """Give every layer its own copy of a weight or bias it shares with another node. Exporters
    share identical constants (all the zero biases of an untrained network are one
    initializer); quantizing one reader would turn the others' float bias into a
    DequantizeLinear's output, and ONNX Runtime runs a conv with a computed bias differently
    (no NCHWc layout, no weight quantization of its own): not what the layer is in a trained
    network."""
    initializers = {i.name: i for i in graph.initializer}
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type not in _WEIGHTED_OP_TYPES:
            continue
        for position in range(1, len(node.input)):
            name = node.input[position]
            if name not in initializers:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}_{node.name or node.output[0]}"
                graph.initializer.append(copy)
                node.input[position] = copy.name
            seen.add(name)


def _quantizable(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES]


def _check_exclude(exclude: Sequence[str], quantizable: list[str]) -> None:
    known = set(quantizable)
    unknown = [name for name in exclude if name not in known]
    if unknown:
        raise ConfigError(
            f"no quantizable node named {', '.join(map(repr, unknown))}",
            f"the model's {len(quantizable)} quantizable nodes include {', '.join(quantizable[:4])}",
        )


class _Feeds(CalibrationDataReader):
    """ORT's calibration interface over a list of feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
