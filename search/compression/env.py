"""The compression environment: one episode walks a network's layers and chooses, per layer,
a keep ratio (AMC), a dtype (HAQ) or both; an action wall keeps the policy within the device's
latency and memory budgets.

Steps. ``amc``: one step per pruning group (coupled layers lose the same channels, so one
decision each; the step describes the group's first layer). ``haq``: one step per layer
(Conv2d/Linear, the classifier included). ``joint``: one step per layer, choosing its dtype
and, at the first layer of a pruning group, the group's keep ratio (later members inherit it).

State (``FEATURES``; AMC's layer embedding and HAQ's, plus the device): the step's position,
the layer's type (conv, depthwise, linear; one-hot), its input and output channels, stride,
kernel, weights, input feature-map size, its share of the predicted latency of the original
network on the target device, its int8 latency relative to float32 there, the latency of the
layers decided so far and of those still to decide (fractions of the original network's), how
much of the budget is left with every remaining layer at its most compressed action (latency,
memory), and the previous action. Static features are min-max normalised over the steps, as
AMC does; the others are fractions already.

Actions. A keep ratio in [lbound, 1] (AMC's continuous action), rounded to the nearest
allowed channel count (multiples of ``round_to``); a precision in [0, 1] that picks a dtype
from ``dtypes`` (most compressed first: [0, 1/n) is the first); or both.

The wall (AMC's ``_action_wall``, HAQ's budget loop, with predicted latency and memory in
place of FLOPs and model size): the current layer's action is capped at the largest one
such that, with every later decision at its most compressed action (lbound, first dtype), the
estimated latency and memory of the whole policy still fit. The keep ratio is lowered first, at
the chosen dtype; only when even lbound does not fit is the dtype lowered too. Estimates come
from ``CostEstimator`` (kernel costs from the predictor at the layer's channel counts and
dtype, plus the rest of the network); at the start, the environment compares estimate and
prediction on a few reference policies and lowers the wall's budgets by the largest amount (ms,
MB) by which a prediction exceeded its estimate (nothing for float32 latency, where the estimate
is exact): what the whole-model prediction of an int8 QDQ graph adds at float/int8 boundaries,
which no per-layer kernel cost sees. The margins keep growing during the search, to the largest
such excess among the policies evaluated so far (``observe``).

An episode ends with a ``Policy``. ``evaluate`` builds it for real (prune -> fine-tune if given ->
export -> quantize the int8 layers -> ``predict``) and scores it: that latency and memory are
what rewards and budget checks use. Accuracy is the user's ``evaluate(model) -> float``, or the
built-in *proxy*: output fidelity to the original network on calibration inputs, the mean of
top-1 agreement and exp(-KL) (search/compression/accuracy.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwlat.errors import ConfigError
from hwlat.search.compression.accuracy import OrtModule, fidelity, proxy_score, reference_logits
from hwlat.search.compression.cost import FLOAT, INT8, Cost, CostEstimator, CostModel
from hwlat.search.compression.model import LAYER_OPS, ModelAnalysis
from hwlat.search.feasibility import InfeasibleBudgetError
from hwlat.search.spaces.base import Decision

METHODS = ("amc", "haq", "joint")
DTYPE_ORDER = (INT8, FLOAT)  # most compressed first
FEATURES = (
    "step",
    "conv",
    "depthwise",
    "linear",
    "in_channels",
    "out_channels",
    "stride",
    "kernel",
    "params",
    "feature_map",
    "latency_share",
    "int8_ratio",
    "used",
    "rest",
    "latency_left",
    "memory_left",
    "prev_keep",
    "prev_precision",
)
_STATIC = slice(4, 12)  # the features normalised over steps
_CHUNK = 16  # wall candidates costed per predictor call
PROXY_NAME = "fidelity (proxy)"


@dataclass(frozen=True)
class Policy:
    """Kept output channels per pruning group and a dtype per layer."""

    keep: tuple[int, ...]
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    layer: int  # the layer the state describes
    group: int | None  # the pruning group whose keep ratio this step chooses
    quantize: bool  # whether it chooses the layer's dtype


@dataclass
class Transition:
    state: np.ndarray
    action: np.ndarray  # what was applied (after the wall), in the agent's action space
    next_state: np.ndarray
    done: bool


@dataclass
class Episode:
    policy: Policy
    arch: tuple[int, ...]
    transitions: list[Transition]
    estimate: Cost
    capped: int  # steps whose action the wall lowered


@dataclass
class PolicyResult:
    """A policy built and scored: predicted on the compressed network, accuracy or proxy."""

    policy: Policy
    score: float  # accuracy from ``evaluate``, or the fidelity proxy
    latency_ms: float
    memory_mb: float
    top1_agreement: float  # with the original network on the calibration inputs
    kl: float  # KL(original || compressed) of the output distributions, nats
    estimate_latency_ms: float
    estimate_memory_mb: float
    seconds: float = 0.0

    def values(self) -> dict:
        d = asdict(self)
        d.pop("policy")
        return d


@dataclass
class Compressed:
    policy: Policy
    torch_model: Any  # the pruned (and fine-tuned) float torch module; None for an ONNX model
    float_onnx: onnx.ModelProto
    onnx: onnx.ModelProto  # what runs on the device: float_onnx, quantized where int8
    excluded: list[str] = field(default_factory=list)  # quantizable nodes kept float32


class CompressionEnv:
    """AMC/HAQ-style compression environment over one network, one device and its budgets."""

    def __init__(
        self,
        model: Any,
        input_shape: Sequence[int],
        cost_model: CostModel,
        *,
        method: str = "amc",
        latency_ms: float | None = None,
        memory_mb: float | None = None,
        evaluate: Callable[[Any], float] | None = None,
        finetune: Callable[[Any], Any] | None = None,
        calibration: Any = None,
        calibration_size: int = 32,
        lbound: float = 0.2,
        round_to: int | None = None,
        dtypes: Sequence[str] | None = None,
        label: str | None = None,
        seed: int = 0,
        analysis: ModelAnalysis | None = None,
        calibrate_wall: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown compression method {method!r}; use one of {', '.join(METHODS)}")
        if latency_ms is None and memory_mb is None:
            raise ConfigError("a compression search needs a budget", "give latency_ms, memory_mb or both")
        for name, budget in (("latency", latency_ms), ("memory", memory_mb)):
            if budget is not None and not 0 < budget < math.inf:
                raise ConfigError(f"the {name} budget must be a positive number, not {budget}")
        if not 0 < lbound <= 1:
            raise ConfigError(f"lbound must be in (0, 1], not {lbound}", "AMC uses 0.2")
        if round_to is not None and round_to < 1:
            raise ConfigError(f"round_to must be a positive channel count, not {round_to}")
        self.method = method
        self.cost_model = cost_model
        self.latency_budget = latency_ms
        self.memory_budget = memory_mb
        self.user_evaluate = evaluate
        self.finetune = finetune
        self.lbound = float(lbound)
        self.round_to = round_to
        self.seed = seed
        self.analysis = analysis or ModelAnalysis(model, input_shape)
        a = self.analysis
        self.label = label or (type(model).__name__ if a.torch_model is not None else "onnx")
        self.input_shape = a.input_shape
        if method in ("amc", "joint") and not a.groups:
            raise ConfigError(
                f"method {method} prunes channels, and this model has no prunable layers"
                + (" (an ONNX model can only be quantized)" if a.torch_model is None else ""),
                "use --method haq, or give the model as a torch factory",
            )
        self.dtypes = self._dtypes(dtypes)
        self.score_name = "accuracy" if evaluate is not None else PROXY_NAME
        self.estimator = CostEstimator(a, cost_model)
        self.steps = self._steps()
        self.options = [self._keep_options(g.channels) for g in a.groups]
        self.decisions = self._decisions()
        self.action_low = np.array(
            ([self.lbound] if self.decides_keep else []) + ([0.0] if self.decides_dtype else [])
        )
        self.action_high = np.ones_like(self.action_low)
        self.calibration = self._calibration(calibration, calibration_size)
        self._reference_logits = reference_logits(a, self.calibration)
        self._static = self._static_features()
        full = self.full_policy()
        self._reference_layers = self.estimator.layer_latency_ms(full.keep, full.dtypes)
        self._results: dict[Policy, PolicyResult] = {}
        self._costs: dict[Policy, Cost] = {}
        self._quantizable: set[str] | None = None
        self._calib_dir: Path | None = None
        self.margin = {"latency": 0.0, "memory": 0.0}  # ms, MB taken off the wall's budgets
        self.references: list[dict] = []
        self.minimum: Cost | None = None
        self._check_budgets(calibrate_wall)
        self._state: dict = {}

    # ----- set-up -----------------------------------------------------------------------
    @property
    def decides_keep(self) -> bool:
        return self.method in ("amc", "joint")

    @property
    def decides_dtype(self) -> bool:
        return self.method in ("haq", "joint")

    def _dtypes(self, requested: Sequence[str] | None) -> tuple[str, ...]:
        supported = tuple(self.cost_model.dtypes())
        chosen = tuple(requested) if requested is not None else supported
        unknown = [d for d in chosen if d not in DTYPE_ORDER]
        if unknown:
            raise ConfigError(f"unknown layer dtype {unknown[0]!r}; use {' or '.join(DTYPE_ORDER)}")
        unsupported = [d for d in chosen if d not in supported]
        if unsupported:
            raise ConfigError(
                f"the predictor for {self.cost_model.device} cannot cost {unsupported[0]} layers "
                f"(it supports {', '.join(supported)})",
                "train it with int8 kernels, or search float32 only",
            )
        chosen = tuple(d for d in DTYPE_ORDER if d in chosen)
        if FLOAT not in chosen:
            raise ConfigError("the dtypes must include float32 (the original network)")
        if self.decides_dtype and len(chosen) < 2:
            raise ConfigError(
                f"method {self.method} chooses a dtype per layer, but the predictor for "
                f"{self.cost_model.device} has no int8 kernels (only {', '.join(chosen)})",
                "train a predictor with int8 kernels, or use --method amc",
            )
        self.supported_dtypes = chosen  # what baselines may use
        return chosen if self.decides_dtype else (FLOAT,)

    def _steps(self) -> list[Step]:
        a = self.analysis
        if self.method == "amc":
            return [Step(g.layers[0], g.index, False) for g in a.groups]
        first = {g.layers[0]: g.index for g in a.groups}
        return [
            Step(layer.index, first.get(layer.index) if self.method == "joint" else None, True)
            for layer in a.layers
        ]

    def _keep_options(self, channels: int) -> list[int]:
        step = self.round_to or 1
        low = max(step, math.ceil(self.lbound * channels / step - 1e-9) * step)
        options = list(range(min(low, channels), channels + 1, step))
        if options[-1] != channels:
            options.append(channels)
        return options

    def _decisions(self) -> list[Decision]:
        a = self.analysis
        decisions = []
        if self.decides_keep:
            decisions += [
                Decision(f"keep:{a.layers[g.layers[0]].name}", tuple(self.options[g.index])) for g in a.groups
            ]
        if self.decides_dtype:
            decisions += [Decision(f"dtype:{layer.name}", self.dtypes) for layer in a.layers]
        return decisions

    def _calibration(self, data: Any, size: int) -> np.ndarray:
        shape = self.input_shape
        if data is None:
            rng = np.random.default_rng(self.seed)
            return rng.standard_normal((size, *shape[1:])).astype(np.float32)
        array = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data, np.float32)
        if array.ndim == len(shape) - 1:
            array = array[None]
        if array.shape[1:] != tuple(shape[1:]):
            raise ConfigError(
                f"calibration inputs of shape {'x'.join(map(str, array.shape))} do not fit the model's "
                f"input {'x'.join(map(str, shape))}"
            )
        return array[:size]

    def _static_features(self) -> np.ndarray:
        a, est = self.analysis, self.estimator
        full = self.full_policy()
        per_layer = est.layer_latency_ms(full.keep, full.dtypes)
        share = per_layer / max(est.reference_ms, 1e-12)
        if INT8 in self.dtypes:
            int8 = est.layer_latency_ms(full.keep, tuple(INT8 for _ in a.layers))
            ratio = np.where(per_layer > 0, int8 / np.maximum(per_layer, 1e-12), 1.0)
        else:
            ratio = np.ones(len(a.layers))
        rows = []
        for step in self.steps:
            layers = self._step_layers(step)
            layer = a.layers[step.layer]
            rows.append(
                [
                    layer.in_channels,
                    layer.out_channels,
                    layer.stride,
                    layer.kernel,
                    sum(a.layers[i].params for i in layers),
                    layer.input_hw[0] * layer.input_hw[1],
                    sum(share[i] for i in layers),
                    float(ratio[step.layer]),
                ]
            )
        table = np.array(rows, dtype=float)
        low, high = table.min(axis=0), table.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        return np.where(high > low, (table - low) / span, 0.0)

    def _step_layers(self, step: Step) -> tuple[int, ...]:
        """The layers whose cost a step's decision sets (amc: the whole group)."""
        if self.method == "amc" and step.group is not None:
            return self.analysis.groups[step.group].layers
        return (step.layer,)

    # ----- policies ---------------------------------------------------------------------
    def full_policy(self) -> Policy:
        return Policy(self.estimator.full_keep, tuple(FLOAT for _ in self.analysis.layers))

    def most_compressed(self) -> Policy:
        keep = tuple(o[0] for o in self.options) if self.decides_keep else self.estimator.full_keep
        return Policy(keep, tuple(self.dtypes[0] for _ in self.analysis.layers))

    def uniform(self, keep_ratio: float, dtype: str = FLOAT) -> Policy:
        """Every group at one keep ratio (any ratio in (0, 1], not bound by lbound), one dtype."""
        keep = tuple(
            min(g.channels, max(1, math.floor(keep_ratio * g.channels + 0.5))) for g in self.analysis.groups
        )
        return Policy(keep, tuple(dtype for _ in self.analysis.layers))

    def arch_of(self, policy: Policy) -> tuple[int, ...]:
        arch: list[int] = []
        if self.decides_keep:
            for g, count in enumerate(policy.keep):
                options = self.options[g]
                arch.append(int(np.argmin([abs(o - count) for o in options])))
        if self.decides_dtype:
            arch += [self.dtypes.index(d) for d in policy.dtypes]
        return tuple(arch)

    def policy_of(self, arch: Sequence[int]) -> Policy:
        arch = list(arch)
        keep = self.estimator.full_keep
        if self.decides_keep:
            n = len(self.analysis.groups)
            keep = tuple(self.options[g][int(i)] for g, i in enumerate(arch[:n]))
            arch = arch[n:]
        dtypes = tuple(FLOAT for _ in self.analysis.layers)
        if self.decides_dtype:
            dtypes = tuple(self.dtypes[int(i)] for i in arch)
        return Policy(keep, dtypes)

    def describe(self, policy: Policy) -> dict:
        """Keep ratio and dtype per layer, by layer name."""
        a = self.analysis
        return {
            layer.name: {
                "keep": (policy.keep[layer.group] / a.groups[layer.group].channels)
                if layer.group is not None
                else 1.0,
                "channels": policy.keep[layer.group] if layer.group is not None else layer.out_channels,
                "dtype": policy.dtypes[layer.index],
            }
            for layer in a.layers
        }

    def layer_ratios(self, policy: Policy) -> dict[str, float]:
        """Keep ratio per prunable layer name, as ``hwlat.compress.prune`` takes it."""
        a = self.analysis
        return {a.layers[i].name: policy.keep[g.index] / g.channels for g in a.groups for i in g.layers}

    def estimate(self, policy: Policy) -> Cost:
        est = self.estimator
        memory = est.memory_mb(policy.keep, policy.dtypes)
        return Cost(est.latency_ms(policy.keep, policy.dtypes), memory)

    # ----- episodes ---------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Start an episode; returns the first state."""
        self._state = {
            "t": 0,
            "keep": list(self.most_compressed().keep),
            "dtypes": list(self.most_compressed().dtypes),
            "decided_keep": set(),
            "prev": np.ones(len(self.action_low)),
            "capped": 0,
        }
        if not self.decides_keep:
            self._state["keep"] = list(self.estimator.full_keep)
        if not self.decides_dtype:
            self._state["dtypes"] = [FLOAT] * len(self.analysis.layers)
        return self._observe()

    def step(self, action: Sequence[float]) -> tuple[np.ndarray, bool, dict]:
        """Apply one (raw) action: capped by the wall; returns (next state, done, info)."""
        s = self._state
        if not s or s["t"] >= len(self.steps):
            raise RuntimeError("call reset() before step(), and not past the last step")
        step = self.steps[s["t"]]
        action = np.clip(np.asarray(action, dtype=float).ravel(), self.action_low, self.action_high)
        keep_req, dtype_req = self._requested(step, action)
        keep, dtype = self._wall(step, keep_req, dtype_req)
        capped = (keep, dtype) != (keep_req, dtype_req)
        s["capped"] += capped
        if step.group is not None:
            s["keep"][step.group] = keep
            s["decided_keep"].add(step.group)
        if step.quantize:
            s["dtypes"][step.layer] = self.dtypes[dtype]
        applied = self._applied(step, keep, dtype)
        s["prev"] = applied
        s["t"] += 1
        done = s["t"] == len(self.steps)
        state = self._observe() if not done else self._last_state
        return state, done, {"applied": applied, "capped": capped}

    def policy(self) -> Policy:
        """The policy of the episode in progress (undecided layers at their most compressed)."""
        return Policy(tuple(self._state["keep"]), tuple(self._state["dtypes"]))

    def rollout(self, act: Callable[[int, np.ndarray], Sequence[float]]) -> Episode:
        """One episode: ``act(step, state)`` gives each raw action."""
        state = self.reset()
        transitions = []
        done = False
        while not done:
            t = self._state["t"]
            next_state, done, info = self.step(act(t, state))
            transitions.append(Transition(state, info["applied"], next_state, done))
            state = next_state
        policy = self.policy()
        capped = self._state["capped"]
        return Episode(policy, self.arch_of(policy), transitions, self.estimate(policy), capped)

    def rollout_arch(self, arch: Sequence[int]) -> Episode:
        """An episode whose raw actions are a policy's (canonical form: the wall applied)."""
        policy = self.policy_of(arch)
        return self.rollout(lambda t, _s: self.action_of(policy, self.steps[t]))

    def action_of(self, policy: Policy, step: Step) -> np.ndarray:
        keep = policy.keep[step.group] if step.group is not None else None
        dtype = self.dtypes.index(policy.dtypes[step.layer]) if step.quantize else None
        return self._applied(step, keep, dtype)

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.action_low, self.action_high)

    # ----- wall -------------------------------------------------------------------------
    def _requested(self, step: Step, action: np.ndarray) -> tuple[int | None, int | None]:
        i = 0
        keep = dtype = None
        if self.decides_keep:
            if step.group is not None:
                options = self.options[step.group]
                target = action[0] * self.analysis.groups[step.group].channels
                keep = options[int(np.argmin([abs(o - target) for o in options]))]
            i = 1
        if self.decides_dtype:
            dtype = min(int(action[i] * len(self.dtypes)), len(self.dtypes) - 1)
        return keep, dtype

    def _applied(self, step: Step, keep: int | None, dtype: int | None) -> np.ndarray:
        values = []
        if self.decides_keep:
            group = step.group if step.group is not None else self.analysis.layers[step.layer].group
            if keep is None:
                keep = self._state["keep"][group] if group is not None and self._state else None
            channels = self.analysis.groups[group].channels if group is not None else 1
            values.append(keep / channels if keep is not None else 1.0)
        if self.decides_dtype:
            values.append(((dtype if dtype is not None else len(self.dtypes) - 1) + 0.5) / len(self.dtypes))
        return np.array(values, dtype=float)

    def _budget(self, kind: str) -> float | None:
        budget = self.latency_budget if kind == "latency" else self.memory_budget
        return None if budget is None else budget - self.margin[kind]

    def _fits(self, keep: Sequence[int], dtypes: Sequence[str]) -> bool:
        latency = self._budget("latency")
        if latency is not None and self.estimator.latency_ms(keep, dtypes) > latency * (1 + 1e-9):
            return False
        memory = self._budget("memory")
        return memory is None or self.estimator.memory_mb(keep, dtypes) <= memory * (1 + 1e-9)

    def _wall(self, step: Step, keep_req: int | None, dtype_req: int | None) -> tuple[int | None, int | None]:
        """The largest action at or below the requested one that leaves room for the rest."""
        s = self._state
        keep, dtypes = list(s["keep"]), list(s["dtypes"])  # later decisions at their most compressed
        if step.group is not None:
            options = self.options[step.group]
            keeps = [o for o in reversed(options) if o <= keep_req] or [options[0]]
        else:
            keeps = [None]
        dtype_options = list(range(dtype_req, -1, -1)) if dtype_req is not None else [None]
        for d in dtype_options:
            if d is not None:
                dtypes[step.layer] = self.dtypes[d]
            for at in range(0, len(keeps), _CHUNK):
                chunk = keeps[at : at + _CHUNK]
                candidates = []
                for k in chunk:
                    if k is not None:
                        keep[step.group] = k
                    candidates.append((tuple(keep), tuple(dtypes)))
                self.estimator.prefetch(candidates)
                for k, (ks, ds) in zip(chunk, candidates, strict=True):
                    if self._fits(ks, ds):
                        return k, d
        # Unreachable when the most compressed policy fits (checked at start): take it.
        return (keeps[-1] if keeps[-1] is not None else None), (0 if dtype_req is not None else None)

    def _observe(self) -> np.ndarray:
        s = self._state
        t = s["t"]
        if t >= len(self.steps):
            return self._last_state
        step = self.steps[t]
        a, est = self.analysis, self.estimator
        layer = a.layers[step.layer]
        keep, dtypes = tuple(s["keep"]), tuple(s["dtypes"])
        per_layer = est.layer_latency_ms(keep, dtypes)
        reference = self._reference_layers
        total = max(est.reference_ms, 1e-12)
        used = sum(per_layer[i] for st in self.steps[:t] for i in self._step_layers(st)) / total
        rest = sum(reference[i] for st in self.steps[t:] for i in self._step_layers(st)) / total
        latency_left = memory_left = 0.0
        if self.latency_budget is not None:
            latency_left = max(0.0, self._budget("latency") - est.latency_ms(keep, dtypes)) / total
        if self.memory_budget is not None:
            budget = self._budget("memory")
            memory_left = max(0.0, budget - est.memory_mb(keep, dtypes)) / budget
        kind = [float(layer.kind == k) for k in ("conv", "depthwise", "linear")]
        state = np.concatenate(
            [
                [t / max(1, len(self.steps) - 1)],
                kind,
                self._static[t],
                [used, rest, latency_left, memory_left],
                self._prev_features(s["prev"]),
            ]
        )
        self._last_state = state
        return state

    def _prev_features(self, prev: np.ndarray) -> list[float]:
        values = list(prev)
        keep = values.pop(0) if self.decides_keep else 1.0
        precision = values.pop(0) if self.decides_dtype else 1.0
        return [keep, precision]

    @property
    def state_size(self) -> int:
        return len(FEATURES)

    @property
    def action_size(self) -> int:
        return len(self.action_low)

    # ----- budgets ----------------------------------------------------------------------
    def _reference_policies(self) -> dict[str, Policy]:
        refs = {"most compressed": self.most_compressed(), "original": self.full_policy()}
        if self.decides_keep:
            refs["uniform 0.5"] = self.uniform(max(0.5, self.lbound))
        if INT8 in self.dtypes:
            n = len(self.analysis.layers)
            refs["all int8"] = Policy(self.estimator.full_keep, tuple(INT8 for _ in range(n)))
            alternate = tuple(INT8 if i % 2 == 0 else FLOAT for i in range(n))
            base = self.uniform(max(0.5, self.lbound)) if self.decides_keep else self.full_policy()
            refs["alternating int8/float32"] = Policy(base.keep, alternate)
        return refs

    def _check_budgets(self, calibrate: bool) -> None:
        """Fail on a budget the most compressed policy misses (first, before anything slower), then
        size the wall's margins on the reference policies."""
        minimum = self.cost(self.most_compressed())
        self.minimum = minimum
        what = self._most_compressed_words()
        for kind, budget, value, unit, flag in (
            ("latency", self.latency_budget, minimum.latency_ms, "ms", "--latency-ms"),
            ("memory", self.memory_budget, minimum.memory_mb, "MB", "--memory-mb"),
        ):
            if budget is not None and value > budget:
                raise InfeasibleBudgetError(
                    f"the {kind} budget {budget:g} {unit} is below the smallest reachable {kind}, "
                    f"{value:.4g} {unit} on {self.cost_model.device} ({what})",
                    f"raise {flag} to at least {value:.4g}"
                    + (" or lower --lbound" if self.decides_keep else ""),
                )
        refs = self._reference_policies() if calibrate else {"most compressed": self.most_compressed()}
        for name, policy in refs.items():
            real, est = self.cost(policy), self.estimate(policy)
            self.references.append(
                {
                    "policy": name,
                    "latency_ms": real.latency_ms,
                    "estimate_latency_ms": est.latency_ms,
                    "memory_mb": real.memory_mb,
                    "estimate_memory_mb": est.memory_mb,
                }
            )
            for kind, r, e in (
                ("latency", real.latency_ms, est.latency_ms),
                ("memory", real.memory_mb, est.memory_mb),
            ):
                if math.isfinite(r) and math.isfinite(e):
                    self.margin[kind] = max(self.margin[kind], r - e)
        # The wall must let the most compressed policy through.
        est = self.estimate(self.most_compressed())
        for kind, budget, e in (
            ("latency", self.latency_budget, est.latency_ms),
            ("memory", self.memory_budget, est.memory_mb),
        ):
            if budget is not None and math.isfinite(e):
                self.margin[kind] = max(0.0, min(self.margin[kind], budget - e))

    def observe(self, policy: Policy, latency_ms: float, memory_mb: float) -> None:
        """Learn from a built policy's prediction: the wall's margins grow to the largest amount by
        which a prediction has exceeded its estimate (never past what lets the most compressed
        policy through). Search strategies call it for every policy they are told of, in order,
        also when a stored search is replayed, so that the wall evolves identically."""
        est = self.estimate(policy)
        minimum = self.estimate(self.most_compressed())
        for kind, budget, real, e, low in (
            ("latency", self.latency_budget, latency_ms, est.latency_ms, minimum.latency_ms),
            ("memory", self.memory_budget, memory_mb, est.memory_mb, minimum.memory_mb),
        ):
            if budget is None or not (math.isfinite(real) and math.isfinite(e)):
                continue
            self.margin[kind] = max(0.0, min(max(self.margin[kind], real - e), budget - low))

    def _most_compressed_words(self) -> str:
        parts = []
        if self.decides_keep:
            parts.append(f"every layer at keep {self.lbound:g}")
        parts.append(f"{self.dtypes[0]}")
        return ", ".join(parts)

    # ----- building and scoring policies --------------------------------------------------
    def cost(self, policy: Policy) -> Cost:
        """Predicted latency and memory of the really compressed network (cached)."""
        if policy not in self._costs:
            self._costs[policy] = self.cost_model.cost(self.compress(policy, finetune=False).onnx)
        return self._costs[policy]

    def evaluate(self, policy: Policy) -> PolicyResult:
        """Build, predict and score a policy (cached: every policy is built once)."""
        cached = self._results.get(policy)
        if cached is not None:
            return cached
        started = time.perf_counter()
        compressed = self.compress(policy)
        if policy not in self._costs:
            self._costs[policy] = self.cost_model.cost(compressed.onnx)
        cost = self._costs[policy]
        runnable = self.runnable(compressed)
        agreement, kl = fidelity(runnable, self.calibration, self._reference_logits)
        if self.user_evaluate is not None:
            score = float(self.user_evaluate(runnable))
        else:
            score = proxy_score(agreement, kl)
        est = self.estimate(policy)
        result = PolicyResult(
            policy,
            score,
            cost.latency_ms,
            cost.memory_mb,
            agreement,
            kl,
            est.latency_ms,
            est.memory_mb,
            time.perf_counter() - started,
        )
        self._results[policy] = result
        return result

    def runnable(self, compressed: Compressed) -> Any:
        """What ``evaluate`` gets: the pruned torch module, or ONNX Runtime on the int8/ONNX model."""
        if compressed.torch_model is not None and all(d == FLOAT for d in compressed.policy.dtypes):
            return compressed.torch_model.eval()
        return OrtModule(compressed.onnx)

    def compress(self, policy: Policy, finetune: bool = True) -> Compressed:
        """prune -> fine-tune (when given and something was pruned) -> export -> quantize int8 layers."""
        a = self.analysis
        torch_model = None
        float_onnx = a.onnx
        if a.torch_model is not None:
            pruned = any(k < g.channels for k, g in zip(policy.keep, a.groups, strict=True))
            if pruned:
                import torch

                from hwlat.compress import prune
                from hwlat.profiler.onnx_models import torch_to_onnx

                torch_model = prune(a.torch_model, self.layer_ratios(policy), torch.zeros(*self.input_shape))
                if finetune and self.finetune is not None:
                    torch_model = self.finetune(torch_model) or torch_model
                torch_model.eval()
                float_onnx = torch_to_onnx(torch_model, self.input_shape)
            else:
                torch_model = copy.deepcopy(a.torch_model).eval()
        if all(d == FLOAT for d in policy.dtypes):
            return Compressed(policy, torch_model, float_onnx, float_onnx)
        excluded = self._excluded(float_onnx, policy)
        from hwlat.compress import quantize_model

        with tempfile.TemporaryDirectory(prefix="hwlat-csearch-") as folder:
            path = quantize_model(
                float_onnx,
                Path(folder) / "int8.onnx",
                calibration=self._calibration_dir(),
                exclude=excluded,
                activation_type=self.cost_model.activation_type,
            )
            quantized = onnx.load(str(path))
        return Compressed(policy, torch_model, float_onnx, quantized, excluded)

    def _excluded(self, model: onnx.ModelProto, policy: Policy) -> list[str]:
        """Quantizable nodes that stay float32: float32 layers, and the other nodes (adds, pools,
        activations) unless every layer whose output reaches them is int8."""
        from hwlat.compress import quantizable_nodes
        from hwlat.profiler.onnx_models import OnnxGraph

        if self._quantizable is None:
            self._quantizable = set(quantizable_nodes(self.analysis.onnx))
        graph = OnnxGraph(model)
        layer_nodes = [n.name for n in graph.data_nodes if n.op_type in LAYER_OPS]
        int8 = {i for i, d in enumerate(policy.dtypes) if d == INT8}
        node_layer = {name: i for i, name in enumerate(layer_nodes)}
        producer: dict[str, set[int]] = {}
        excluded = []
        for node in graph.data_nodes:
            sources: set[int] = set()
            for i in node.input:
                sources |= producer.get(i, set())
            own = {node_layer[node.name]} if node.name in node_layer else sources
            for out in node.output:
                producer[out] = own
            if node.name not in self._quantizable:
                continue
            if node.name in node_layer:
                if node_layer[node.name] not in int8:
                    excluded.append(node.name)
            elif not (sources <= int8 if sources else len(int8) == len(policy.dtypes)):
                excluded.append(node.name)
        return excluded

    def _calibration_dir(self) -> Path:
        if self._calib_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="hwlat-calibration-"))
            for i, x in enumerate(self.calibration):
                np.save(folder / f"{i:04d}.npy", x)
            weakref.finalize(self, shutil.rmtree, folder, True)
            self._calib_dir = folder
        return self._calib_dir

    # ----- identity ---------------------------------------------------------------------
    def settings(self) -> dict:
        """What a stored search must share to be resumed with this environment."""
        a = self.analysis
        digest = hashlib.sha256(a.onnx.SerializeToString(deterministic=True)).hexdigest()[:12]
        return {
            "model": self.label,
            "model_sha": digest,
            "input_shape": list(self.input_shape),
            "method": self.method,
            "lbound": self.lbound,
            "round_to": self.round_to,
            "dtypes": list(self.dtypes),
            "device": self.cost_model.device,
            "backend": self.cost_model.backend,
            "score": self.score_name,
        }

    def study_name(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True)
        return f"compress-{self.method}:{self.label}:{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
