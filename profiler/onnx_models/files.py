"""ONNX model files: the one opset hwlat writes, reading and checking files, saving, facts.

Every model hwlat builds or exports records ``OPSET`` and ``IR_VERSION``; every file a user
hands in is read by ``load_model``, which turns an empty, truncated or non-ONNX file into a
``ModelFileError`` naming the file instead of a protobuf traceback.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper
from onnx.external_data_helper import uses_external_data

from hwlat.errors import ModelFileError

OPSET = 17
IR_VERSION = 8


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A model around ``graph`` with the opset and IR version every hwlat-built model records."""
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hwlat", ir_version=IR_VERSION
    )


def save_once(path: Path, build: Callable[[], onnx.ModelProto]) -> Path:
    """Save ``build()`` at ``path`` unless a file is there already (models are named by what
    they contain). One temp name per writer: parallel campaigns build the same models at once."""
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")
        onnx.save(build(), tmp)
        tmp.replace(path)
    return path


def one_file(path: Path, directory: Path) -> Path:
    """``path`` itself, or, for a model whose weights sit in files of their own (torch's default
    exporter writes ``MODEL.onnx.data``), a copy with the weights inside, saved once in
    ``directory`` under a name from their content: a device is sent one file, under a name of
    its own, so the model's relative path to its weights would not hold there."""
    path = Path(path)
    if not _weight_files(load_model(path, load_weights=False)):
        return path
    model = load_model(path)  # with the weights, from the files next to it
    try:
        data = model.SerializeToString()
    except ValueError:  # protobuf's 2 GB limit on one message
        raise ModelFileError(
            f"{path}'s weights are too large (over 2 GB) to send as one ONNX file",
            "measure a smaller model, or one whose weights fit in 2 GB",
        ) from None
    target = directory / f"{path.stem}-{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    directory.mkdir(parents=True, exist_ok=True)
    return save_once(target, lambda: model)


def load_model(model: onnx.ModelProto | str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """The model itself, or the file at a path read and checked to be an ONNX graph."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; check the path")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not an ONNX model file; pass a .onnx file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {path} is empty; export the model again")
    try:
        loaded = onnx.load(str(path), load_external_data=load_weights)
    except (DecodeError, RuntimeWarning, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:120]}); "
            "export it again or pass another file"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
    except onnx.checker.ValidationError as exc:  # its weights file (MODEL.onnx.data) is not there
        raise ModelFileError(
            f"cannot read the weights of {path}: {str(exc)[:200]}",
            "keep the weights file the exporter wrote next to the model, or export it again",
        ) from None
    if not loaded.graph.node or not loaded.graph.output:
        raise ModelFileError(f"{path} holds no ONNX graph (no nodes or no outputs); pass an exported model")
    _check_known(loaded, path)
    return loaded


def _check_known(model: onnx.ModelProto, path: Path) -> None:
    """A file that parses can still be damaged, come from an ONNX newer than this one, or hold an
    op ONNX does not define: refused here, with the reason, before any device time."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelFileError(
            f"{path} has ONNX IR version {model.ir_version}; this ONNX ({onnx.__version__}) reads up to "
            f"{onnx.IR_VERSION}",
            f"export it with IR version <= {onnx.IR_VERSION}, or upgrade onnx",
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelFileError(
                f"{path} uses ONNX opset {opset.version}; this ONNX ({onnx.__version__}) knows up to "
                f"{newest}",
                f"export it with opset <= {newest} (hwlat writes {OPSET})",
            )
    graph = model.graph
    names = [v.name for v in (*graph.input, *graph.output, *graph.initializer)]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
        if (
            isinstance(node.op_type, str)
            and node.domain in ("", "ai.onnx")
            and not onnx.defs.has(node.op_type)
        ):
            raise ModelFileError(
                f"{path}: node {node.name or '(unnamed)'!r} is a {node.op_type!r}, which is not an ONNX op",
                "export the model again; custom ops need their own domain",
            )
    if not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{path} is damaged (a name is not UTF-8 text)", "export it again")
    # ONNX's own checker with shape inference: a node without its inputs, a conv whose weight has
    # the wrong rank, a type clash (read from the file: faster than from the loaded model).
    try:
        _onnx_check(model, path)
    except UnicodeDecodeError:  # the checker's own message quotes a field that is not UTF-8
        raise ModelFileError(f"{path} is damaged (a text field is not UTF-8)", "export it again") from None
    # ValueError: what the checker raises for some damage, e.g. "Invalid tensor data type 35"
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{path} is not a valid ONNX model ({reason[:200]})", "export it again"
        ) from None


def _onnx_check(model: onnx.ModelProto, path: Path) -> None:
    """ONNX's checker, except that a graph output declared without a shape (which the checker
    refuses and ONNX Runtime runs) is checked with the shape ONNX infers for it."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        if not str(exc).startswith("Field 'shape' of 'type' is required but missing"):
            raise
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model), full_check=True)


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for a model's graph inputs: normal float32, or 8-bit integers for 8-bit inputs
    (symbolic dims become 1)."""
    rng = np.random.default_rng(seed)
    init_names = {i.name for i in model.graph.initializer}
    ints = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        int_type = ints.get(inp.type.tensor_type.elem_type)
        if int_type is not None:
            info = np.iinfo(int_type)
            feeds[inp.name] = rng.integers(info.min, info.max, dims, endpoint=True).astype(int_type)
        else:
            feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def model_facts(path: Path) -> dict:
    """Size on disk (with weights kept in files of their own), parameter count and node count of
    a model file."""
    model = load_model(path, load_weights=False)
    params = int(sum(np.prod(t.dims) for t in model.graph.initializer))
    folder = Path(path).parent
    return {
        "model_path": str(path),
        "model_bytes": Path(path).stat().st_size
        + sum((folder / f).stat().st_size for f in _weight_files(model)),
        "params": params,
        "nodes": len(model.graph.node),
    }


def _weight_files(model: onnx.ModelProto) -> set[str]:
    """The files, relative to the model's, that hold its weights outside it (none: all inside)."""
    return {
        entry.value
        for t in model.graph.initializer
        if uses_external_data(t)
        for entry in t.external_data
        if entry.key == "location"
    }
