"""Structured channel pruning with Torch-Pruning: layers lose whole output channels, so the
pruned network is a smaller dense network (what latency tables and predictors see).

Channels cannot be removed from one layer alone when other layers must match it. Torch-Pruning's
dependency graph traces the network and puts such layers in one group that loses the same
channels: a depthwise conv and the conv that feeds it (its inputs are its outputs), and the convs
whose outputs meet in residual adds (a ResNet stage's convs and its shortcut, a MobileNetV2
stage's projections). ``prune`` gives each group the largest keep ratio of its layers, so a
layer never keeps fewer channels than its own ratio asks, and a ratio of 1.0 always holds.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from hwlat.errors import ConfigError, HwlatError

PRUNED_TYPES = (nn.Conv2d, nn.Linear)
IMPORTANCE_NORMS = {"l1": 1, "l2": 2}  # rank a group's channels by the Lp norm of their weights


class PruningError(HwlatError):
    """A network Torch-Pruning cannot trace."""


@dataclass
class _Group:
    """Layers that lose the same output channels: ``leader`` stands for them in Torch-Pruning."""

    leader: nn.Module
    names: list[str]  # in forward order
    channels: int


@dataclass
class _Analysis:
    layers: list[str]  # prunable layers in forward order
    groups: list[_Group]
    classifier: nn.Module


def prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names (as in ``model.named_modules()``) of the Conv2d/Linear layers whose output channels
    can be pruned, in forward order: every one the network calls but the last, the classifier,
    whose outputs are the classes. Coupled layers are listed each (see the module docstring)."""
    return _analyse(copy.deepcopy(model), example_input).layers


def prunable_groups(model: nn.Module, example_input: torch.Tensor) -> list[list[str]]:
    """The prunable layers grouped by coupling: each group loses the same output channels (a
    depthwise conv with the conv before it, the convs whose outputs meet in residual adds), names
    in forward order, groups in the order of their first layer. ``prune`` gives a group the
    largest keep ratio of its layers, so one ratio per group is all a search needs to choose."""
    return [list(g.names) for g in _analyse(copy.deepcopy(model), example_input).groups]


def prune(
    model: nn.Module,
    keep_ratios: Sequence[float] | Mapping[str, float],
    example_input: torch.Tensor,
    round_to: int | None = None,
    importance: str = "l2",
) -> nn.Module:
    """A pruned copy of ``model`` (which stays unchanged) with channels physically removed.

    ``keep_ratios`` holds the fraction of output channels each prunable layer keeps: a sequence
    in ``prunable_layers`` order, or a dict from layer name to ratio (layers it omits keep 1.0).
    Each ratio is in (0, 1]; coupled layers keep the largest ratio of their group. The kept
    count is the nearest whole number (the nearest multiple of ``round_to`` when given), at
    least one channel (one multiple); a layer that would keep all its channels after rounding
    stays unchanged. Within a group, channels go in order of ``importance``: the L2 (or L1)
    norm of their weights in every layer of the group.
    """
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be a positive channel count, not {round_to}")
    if importance not in IMPORTANCE_NORMS:
        raise ConfigError(f"importance {importance!r} is not one of {', '.join(IMPORTANCE_NORMS)}")
    pruned = copy.deepcopy(model)
    analysis = _analyse(pruned, example_input)
    ratios = _ratio_per_layer(keep_ratios, analysis.layers)
    pruning_ratios = {}
    for group in analysis.groups:
        kept = _kept_channels(group.channels, max(ratios[n] for n in group.names), round_to)
        if kept < group.channels:
            # Torch-Pruning removes channels - int(channels * (1 - ratio)); half a channel of slack
            # keeps floating point from rounding the count down.
            pruning_ratios[group.leader] = 1 - (kept + 0.5) / group.channels
    if pruning_ratios:
        with _traceable(pruned):
            tp.pruner.BasePruner(
                pruned,
                example_input,
                importance=tp.importance.MagnitudeImportance(p=IMPORTANCE_NORMS[importance]),
                pruning_ratio=0.0,  # groups without an entry stay whole
                pruning_ratio_dict=pruning_ratios,
                ignored_layers=[analysis.classifier],
            ).step()
    return pruned


def _kept_channels(channels: int, keep: float, round_to: int | None) -> int:
    """Rounding happens here rather than in Torch-Pruning, whose ``round_to`` rounds down and
    removes every channel of a layer that would keep fewer than ``round_to``."""
    step = round_to or 1
    return min(channels, max(step, math.floor(keep * channels / step + 0.5) * step))


def _ratio_per_layer(
    keep_ratios: Sequence[float] | Mapping[str, float], layers: list[str]
) -> dict[str, float]:
    if isinstance(keep_ratios, Mapping):
        known = set(layers)
        unknown = [name for name in keep_ratios if name not in known]
        if unknown:
            raise ConfigError(
                f"no prunable layer named {', '.join(map(repr, unknown))}",
                f"the model's {len(layers)} prunable layers include {', '.join(layers[:4])}",
            )
        ratios = {name: float(keep_ratios.get(name, 1.0)) for name in layers}
    else:
        if len(keep_ratios) != len(layers):
            raise ConfigError(
                f"{len(keep_ratios)} keep ratios for {len(layers)} prunable layers",
                "give one per layer of prunable_layers(), or a dict by name",
            )
        ratios = {name: float(r) for name, r in zip(layers, keep_ratios, strict=True)}
    bad = {name: r for name, r in ratios.items() if not 0 < r <= 1}  # NaN fails too
    if bad:
        name, ratio = next(iter(bad.items()))
        raise ConfigError(
            f"keep ratio {ratio} of layer {name!r} is out of range ({len(bad)} in all)",
            "keep ratios are in (0, 1]; 1.0 keeps every channel",
        )
    return ratios


def _analyse(model: nn.Module, example_input: torch.Tensor) -> _Analysis:
    """Trace ``model`` once: its Conv2d/Linear layers in call order, and their pruning groups."""
    names = {module: name for name, module in model.named_modules()}
    called: dict[str, None] = {}
    hooks = [
        m.register_forward_hook(lambda m, _i, _o: called.setdefault(names[m]))
        for m in model.modules()
        if isinstance(m, PRUNED_TYPES)
    ]
    try:
        with _traceable(model):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as exc:  # the tracer's own failures: unsupported ops, reshapes across channels
        raise PruningError(
            f"Torch-Pruning cannot trace this network ({type(exc).__name__}: {exc})",
            "it fails on some channel reshapes, e.g. ShuffleNetV2's channel shuffle",
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    if not called:
        raise ConfigError("the model calls no Conv2d or Linear layer; there is nothing to prune")
    order = {name: i for i, name in enumerate(called)}
    classifier = model.get_submodule(next(reversed(called)))
    groups = []
    for group in graph.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNED_TYPES):
        members = [
            names[dep.target.module]
            for dep, _ in group
            if isinstance(dep.target.module, PRUNED_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)
        ]
        members = sorted(dict.fromkeys(n for n in members if n in order), key=order.__getitem__)
        if members:
            leader = group[0].dep.target.module
            groups.append(_Group(leader, members, graph.get_out_channels(leader)))
    groups.sort(key=lambda g: order[g.names[0]])
    layers = sorted((n for g in groups for n in g.names), key=order.__getitem__)
    return _Analysis(layers, groups, classifier)


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Eval mode (the tracing forward pass must not move batch-norm statistics) and autograd on
    (Torch-Pruning traces through it), also for frozen parameters; both restored after, by name:
    pruning replaces the parameters."""
    was_training = model.training
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    model.eval().requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
