"""Built-in accuracy proxies for searching without training: FLOPs, parameters, NASWOT, SynFlow.

All are maximised by default (bigger networks of one space tend to be more accurate;
the zero-cost scores were shown to rank trained accuracy). FLOPs and parameters come
from ``space.ops(arch)`` (OpSpec.flops / OpSpec.params) and cost microseconds; NASWOT
and SynFlow build ``space.to_torch(arch)`` and run it on a seeded random (NASWOT) or
all-ones (SynFlow) input: on the shared 2-core machine a ProxylessNAS network at 224x224
took 1.5-8 s for NASWOT (batch 16) and 0.3-0.7 s for SynFlow, against 0.4 ms for FLOPs,
so a 2000-evaluation search with NASWOT takes about an hour there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwlat.errors import ConfigError
from hwlat.search.objectives import Objective
from hwlat.search.strategies.base import Arch


class FlopsObjective(Objective):
    """Floating-point operations of one inference (a multiply-add counts as 2)."""

    def __init__(self, direction: str = "maximize", budget: float | None = None) -> None:
        super().__init__("flops", direction, budget)

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([float(sum(op.flops for op in space.ops(a))) for a in archs])


class ParamsObjective(Objective):
    """Number of weights."""

    def __init__(self, direction: str = "maximize", budget: float | None = None) -> None:
        super().__init__("params", direction, budget)

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([float(sum(op.params for op in space.ops(a))) for a in archs])


class _TorchProxy(Objective):
    """A score of the untrained torch model, built with seeded weights."""

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name, "maximize")
        self.seed = seed

    def evaluate(self, space: Any, archs: Sequence[Arch]) -> np.ndarray:
        import torch

        scores = []
        for arch in archs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = space.to_torch(arch)
                scores.append(self.score(model, tuple(space.input_shape(arch))))
        return np.array(scores, dtype=float)

    def score(self, model: Any, input_shape: tuple[int, ...]) -> float:
        raise NotImplementedError


class NaswotObjective(_TorchProxy):
    """NASWOT, Mellor et al. 2021, "Neural Architecture Search without Training".

    For a batch of N random inputs, each ReLU-like unit gives a binary code per input
    (pre-activation > 0). K[i, j] = number of units where inputs i and j agree; the score
    is log|det K|: networks whose activation patterns tell inputs apart score higher.
    Counts every nn.ReLU, ReLU6, Hardswish, SiLU, GELU and LeakyReLU module (BN in train
    mode, as in the authors' code).
    """

    def __init__(self, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__("naswot", seed)
        if batch_size < 2:
            raise ValueError(f"naswot needs a batch of at least 2 inputs, got {batch_size}")
        self.batch_size = batch_size

    def score(self, model: Any, input_shape: tuple[int, ...]) -> float:
        import torch
        from torch import nn

        relu_like = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU)
        kernel = torch.zeros(self.batch_size, self.batch_size, dtype=torch.float64)

        def hook(_module: Any, inputs: tuple, _output: Any) -> None:
            codes = (inputs[0].detach() > 0).flatten(1).to(torch.float64)
            kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, relu_like)]
        if not handles:
            raise ValueError(
                f"naswot found no ReLU-like module in {type(model).__name__}; it "
                "needs activations as nn modules (use the flops or synflow proxy)"
            )
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.randn((self.batch_size, *input_shape[1:]), generator=generator)
        model.train()
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        sign, logdet = torch.linalg.slogdet(kernel)
        return float(logdet) if sign > 0 else float("nan")


class SynflowObjective(_TorchProxy):
    """SynFlow, Tanaka et al. 2020, as a NAS proxy by Abdelfattah et al. 2021.

    Weights replaced by their absolute values, an all-ones input in float64, R = sum of
    the output; score = sum over conv and linear weights of |w * dR/dw|. Reported as its
    natural log (the raw score spans tens of orders of magnitude). BN runs in eval mode (an
    affine map, not batch statistics that would cancel the constant input), and clipping
    activations (ReLU6, Hardswish) become ReLU: with all-positive weights the signal grows
    layer after layer, ReLU6 would saturate and cut every gradient but the last layers',
    while SynFlow's conservation argument assumes positively homogeneous activations.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("synflow", seed)

    def score(self, model: Any, input_shape: tuple[int, ...]) -> float:
        import torch
        from torch import nn

        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, (nn.ReLU6, nn.Hardswish)):
                    setattr(parent, name, nn.ReLU())
        model = model.double().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        model.zero_grad()
        output = model(torch.ones((1, *input_shape[1:]), dtype=torch.float64))
        output.sum().backward()
        total = sum(
            float((m.weight * m.weight.grad).detach().abs().sum())
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None
        )
        return float(np.log(total)) if total > 0 else float("nan")


PROXIES = {
    "flops": FlopsObjective,
    "params": ParamsObjective,
    "naswot": NaswotObjective,
    "synflow": SynflowObjective,
}


def get_proxy(name: str) -> Objective:
    """A built-in accuracy proxy by name (CLI ``--objective``)."""
    if name not in PROXIES:
        raise ConfigError(
            f"unknown proxy objective {name!r}; use one of {', '.join(PROXIES)}, "
            "or pass your own accuracy function through the Python API "
            "(search.objectives.CallableObjective)"
        )
    return PROXIES[name]()
