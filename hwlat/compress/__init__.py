"""Model compression: int8 quantization with ONNX Runtime."""

from hwlat.compress.quantize import QUANTIZED_OP_TYPES, quantizable_nodes, quantize_model

__all__ = ["QUANTIZED_OP_TYPES", "quantizable_nodes", "quantize_model"]
