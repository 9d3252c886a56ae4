"""Model compression: int8 quantization with ONNX Runtime, structured channel pruning with Torch-Pruning."""

from hwlat.compress.prune import prunable_groups, prunable_layers, prune
from hwlat.compress.quantize import QUANTIZED_OP_TYPES, quantizable_nodes, quantize_model

__all__ = [
    "QUANTIZED_OP_TYPES",
    "prunable_groups",
    "prunable_layers",
    "prune",
    "quantizable_nodes",
    "quantize_model",
]
