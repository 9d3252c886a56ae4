"""ONNX in one place: the opset, reading and checking model files, shapes, op models, torch export."""

from hwlat.profiler.onnx_models.files import (
    IR_VERSION,
    OPSET,
    ModelFileError,
    load_model,
    make_model,
    model_facts,
    one_file,
    random_inputs,
    save_once,
)
from hwlat.profiler.onnx_models.graph import GraphError, OnnxGraph
from hwlat.profiler.onnx_models.kernel_models import build_kernel_model
from hwlat.profiler.onnx_models.op_models import build_model, model_path
from hwlat.profiler.onnx_models.torch_export import is_torch_module, torch_to_onnx

__all__ = [
    "IR_VERSION",
    "OPSET",
    "GraphError",
    "ModelFileError",
    "OnnxGraph",
    "build_kernel_model",
    "build_model",
    "is_torch_module",
    "load_model",
    "make_model",
    "model_facts",
    "model_path",
    "one_file",
    "random_inputs",
    "save_once",
    "torch_to_onnx",
]
