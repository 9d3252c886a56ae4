"""torch.nn.Module -> ONNX: the one exporter every hwlat network goes through.

The legacy TorchScript exporter (``dynamo=False``): it works offline, is fast per call, folds
batch-norm into the convs (``do_constant_folding``) and writes the graph shapes the splitter
is tested on. Inputs are zeros, so exporting never draws from torch's global random state.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import onnx

from hwlat.profiler.onnx_models.files import OPSET


def torch_to_onnx(module: Any, input_shape: Sequence[int]) -> onnx.ModelProto:
    """Trace ``module`` in eval mode on a zero input of ``input_shape`` (its mode is restored)."""
    import torch

    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                module,
                (torch.zeros(*input_shape),),
                buffer,
                input_names=["input"],
                output_names=["output"],
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def is_torch_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module`` (checked without importing torch)."""
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)
