"""The network zoo: published CNNs for validation, random CNNs for training that are not them."""

from __future__ import annotations

import pytest

from hwlat import zoo
from hwlat.predictors import FusionRules, ModelSplitter
from hwlat.profiler.onnx_models import torch_to_onnx


def _plan(module, resolution: int) -> list[str]:
    """The network layer for layer: its kernels' keys in execution order."""
    split = ModelSplitter(FusionRules("none"), strict=False).split(
        torch_to_onnx(module, (1, 3, resolution, resolution))
    )
    return [k.kernel.key for k in split.kernels]


@pytest.fixture(scope="module")
def published_plans(family_paths) -> dict[str, list[str]]:
    """The published zoo and the CNN families outside it, layer for layer."""
    names = [*zoo.ZOO, *zoo.VARIANTS]
    plans = {n: _plan(zoo.build(n), zoo.resolution(n)) for n in names}
    splitter = ModelSplitter(FusionRules("none"), strict=False)
    plans.update({n: [k.kernel.key for k in splitter.split(p).kernels] for n, p in family_paths.items()})
    return plans


def test_random_networks_reproduce_no_published_network(published_plans) -> None:
    """Leak-free by construction: no random training network is a published one or a family of the
    never-seen benchmark, nor starts with such a network's stem and first stage, nor ends with its head."""
    stems = {tuple(p[:4]) for p in published_plans.values()}
    heads = {tuple(p[-3:]) for p in published_plans.values()}
    for seed in range(12):
        plan = _plan(*zoo.random_network(seed))
        assert plan not in published_plans.values()
        assert tuple(plan[:4]) not in stems, seed
        assert tuple(plan[-3:]) not in heads, seed


def test_random_networks_are_deterministic_and_varied() -> None:
    a, res_a = zoo.random_network(3)
    b, res_b = zoo.random_network(3)
    assert res_a == res_b and _plan(a, res_a) == _plan(b, res_b)
    resolutions = {zoo.random_network(seed)[1] for seed in range(10)}
    assert len(resolutions) >= 6
