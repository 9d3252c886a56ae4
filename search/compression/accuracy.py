"""Scoring compressed networks: running them (torch or ONNX Runtime) and the fidelity proxy.

The built-in score, shown as a *proxy* wherever it appears, is output fidelity: how closely
the compressed network's outputs follow the original's on the calibration inputs, as top-1
agreement (the share of inputs whose arg-max output is unchanged) and the mean KL divergence
KL(original || compressed) of their softmax distributions; the proxy score is their mean,
(agreement + exp(-KL)) / 2, 1.0 for an unchanged network. Both halves matter: top-1 agreement
is what a classifier's user sees, but it is all-or-nothing per input and collapses to zero
for networks with near-uniform outputs (random weights), where the KL term still orders
policies by how far they move the output. It needs no labels, so it works for any model, and
says nothing certain about accuracy on real data: give ``evaluate`` for that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread for the duration: the agent's small networks gain nothing from more,
    lose much on a shared machine, and one thread makes results independent of the host."""
    threads = _torch().get_num_threads()
    if threads != 1:
        _torch().set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            _torch().set_num_threads(threads)


def _torch():
    import torch

    return torch


class OrtModule:
    """An ONNX model run by ONNX Runtime (CPU, one thread) behind a torch module's call:
    ``model(x)`` takes a batch (torch tensor or numpy array) and returns a torch tensor. A graph
    exported for batch 1 runs the batch one input at a time. Forward only."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.training = False

    def eval(self) -> OrtModule:
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        array = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        array = array.astype(np.float32, copy=False)
        if self.fixed_batch is not None and array.shape[0] != self.fixed_batch:
            step = self.fixed_batch
            outs = [
                self.session.run(None, {self.input_name: array[i : i + step]})[0]
                for i in range(0, array.shape[0], step)
            ]
            out = np.concatenate(outs, axis=0)
        else:
            out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.ascontiguousarray(out))

    forward = __call__


def run(model: Any, inputs: np.ndarray) -> np.ndarray:
    """Outputs of a torch module or an ``OrtModule`` on a batch, as a (N, -1) float64 array."""
    import torch

    if isinstance(model, OrtModule):
        out = model(inputs)
    else:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(inputs)))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return out.reshape(out.shape[0], -1).astype(np.float64)


def reference_logits(analysis: Any, inputs: np.ndarray) -> np.ndarray:
    """The original network's outputs on the calibration inputs."""
    if analysis.torch_model is not None:
        return run(analysis.torch_model.eval(), inputs)
    return run(OrtModule(analysis.onnx), inputs)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fidelity(model: Any, inputs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(reference || model) in nats) on ``inputs``."""
    out = run(model, inputs)
    agreement = float(np.mean(out.argmax(axis=1) == reference.argmax(axis=1)))
    log_p, log_q = _log_softmax(reference), _log_softmax(out)
    kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))
    return agreement, max(0.0, kl) if math.isfinite(kl) else math.inf


def proxy_score(agreement: float, kl: float) -> float:
    return 0.5 * agreement + 0.5 * math.exp(-kl)
