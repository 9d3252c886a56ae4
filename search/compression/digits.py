"""Real accuracy in seconds: a small CNN trained on scikit-learn's bundled digits (offline).

The 1,797 8x8 grey images of ``sklearn.datasets.load_digits`` are split once (seeded) into
1,397 training and 400 held-out images; ``pretrained_model()`` trains ``DigitsCNN`` on the
training split (about 3 s on one core, about 98% held-out accuracy; cached per process),
``evaluate(model)`` is the held-out accuracy, ``finetune(model)`` a short fine-tune of a
pruned copy, ``calibration_inputs()`` training images for int8 calibration and the fidelity
proxy. Everything is seeded: the same call gives the same network.

For the command line::

    hwlat compress --model hwlat.search.compression.digits:pretrained_model --input-shape 1,1,8,8 \\
        --eval hwlat.search.compression.digits:evaluate \\
        --calibration hwlat.search.compression.digits:calibration_inputs ...

The network is deliberately uneven, as real ones are: a narrow first layer every feature
passes through (pruning it costs accuracy) before a wide, redundant and costly one (pruning
it costs little), so a per-layer policy can beat one keep ratio for all layers.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwlat.search.compression.accuracy import single_thread

INPUT_SHAPE = (1, 1, 8, 8)
TRAIN_SIZE = 1397
SEED = 0


@dataclass(frozen=True)
class DigitsData:
    train_x: Any  # (N, 1, R, R) float tensors, standardised
    train_y: Any
    test_x: Any
    test_y: Any


@functools.lru_cache(maxsize=4)
def load_data(resolution: int = 8, seed: int = SEED) -> DigitsData:
    """The digits split into training and held-out images, optionally upsampled (bilinear)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    if resolution != 8:
        x = torch.nn.functional.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    return DigitsData(x[train], y[train], x[test], y[test])


class DigitsCNN(nn.Module):
    """conv 16, conv 64, conv 32 (stride 2), conv 64, global pool, linear 10; ReLU after each conv."""

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16 * width, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(16 * width, 64 * width, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(64 * width, 32 * width, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32 * width, 64 * width, 3, 1, 1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def train(model: Any, data: DigitsData, epochs: int, lr: float, seed: int = SEED, batch: int = 50) -> Any:
    """Adam on the training split, seeded batches, one thread (the same weights on any host);
    returns the model in eval mode."""
    with single_thread():
        return _train(model, data, epochs, lr, seed, batch)


def _train(model: Any, data: DigitsData, epochs: int, lr: float, seed: int, batch: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.train_x)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@functools.lru_cache(maxsize=4)
def _trained_state(resolution: int, epochs: int, seed: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    train(model, load_data(resolution, seed), epochs, 5e-3, seed)
    return copy.deepcopy(model.state_dict())


def pretrained_model(resolution: int = 8, epochs: int = 15, seed: int = SEED) -> Any:
    """A trained ``DigitsCNN`` in eval mode (a fresh copy; trained once per process)."""
    model = DigitsCNN()
    model.load_state_dict(_trained_state(resolution, epochs, seed))
    return model.eval()


def evaluate(model: Any, resolution: int = 8) -> float:
    """Top-1 accuracy on the 400 held-out images (a torch module or a runnable int8 model)."""
    data = load_data(resolution)
    if hasattr(model, "eval"):
        model.eval()
    with torch.no_grad(), single_thread():
        logits = model(data.test_x)
    return float((torch.as_tensor(logits).argmax(dim=1) == data.test_y).float().mean())


def finetune(model: Any, epochs: int = 1, lr: float = 2e-3, resolution: int = 8) -> Any:
    """A short fine-tune of a pruned network on the training split (seeded, in place)."""
    return train(model, load_data(resolution), epochs, lr, seed=SEED + 1)


def calibration_inputs(n: int = 32, resolution: int = 8) -> Any:
    """``n`` training images: int8 calibration and the fidelity proxy's inputs."""
    return load_data(resolution).train_x[:n]
