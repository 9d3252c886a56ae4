"""Compression search: the environment and its wall, the cost estimate against real predictions,
DDPG (deterministic, resumable, better than uniform pruning on real accuracy), HAQ/joint with an
injected int8 cost model, the report and the command line.

No device time: latencies come from the synthetic predictor (tests/synthetic.py), int8 from
``EmulatedInt8CostModel`` (tests/compression_fakes.py) until predictors learn int8 kernels. The
digits CNN trains in a few seconds and gives real accuracy.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from hwlat.cli import main
from hwlat.compress import prune
from hwlat.errors import ConfigError
from hwlat.predictors.models.memory import onnx_footprint
from hwlat.profiler.onnx_models import torch_to_onnx
from hwlat.search.compression import (
    CompressionEnv,
    CompressionSpace,
    PredictorCostModel,
    compression_search,
    digits,
)
from hwlat.search.compression.cost import CostEstimator
from hwlat.search.compression.model import ModelAnalysis
from hwlat.search.feasibility import InfeasibleBudgetError
from tests.compression_fakes import EmulatedInt8CostModel
from tests.synthetic import synthetic_predictor


@pytest.fixture(scope="module")
def predictor():
    return synthetic_predictor(300)


@pytest.fixture(scope="module")
def digits_model():
    return digits.pretrained_model()


@pytest.fixture(scope="module")
def predictor_file(predictor, tmp_path_factory):
    return predictor.save(tmp_path_factory.mktemp("predictor") / "synthetic.json")


def _env(model, cost_model, **kwargs) -> CompressionEnv:
    options = {"calibration": digits.calibration_inputs(), "latency_ms": 1.0, **kwargs}
    return CompressionEnv(model, digits.INPUT_SHAPE, cost_model, **options)


class ResidualNet(nn.Module):
    """Stem, a depthwise-separable residual block, an inverted residual (expand, depthwise,
    project, add), a head and a classifier: depthwise and residual coupling, BN, ReLU6."""

    def __init__(self) -> None:
        super().__init__()

        def cbr(i, o, k=3, s=1, g=1, act=True):
            layers = [nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o)]
            return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

        self.stem = cbr(3, 16, s=2)
        self.dw = nn.Sequential(cbr(16, 16, g=16), cbr(16, 16, k=1, act=False))
        self.inverted = nn.Sequential(cbr(16, 48, k=1), cbr(48, 48, g=48), cbr(48, 16, k=1, act=False))
        self.head = cbr(16, 64, k=1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw(x)
        x = x + self.inverted(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))


# ----- the cost estimate of the wall ---------------------------------------------------------------


def test_the_estimate_equals_the_prediction_of_the_really_pruned_network(predictor) -> None:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    for m in model.modules():  # trained-like statistics (identical folded biases would be deduplicated)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    shape = (1, 3, 16, 16)
    analysis = ModelAnalysis(model, shape)
    names = {layer.name: layer for layer in analysis.layers}
    assert [layer.kind for layer in analysis.layers].count("depthwise") == 2
    # the depthwise conv loses what its producer loses; the residual branch ends and the stem are one group
    assert names["dw.0.0"].group == names["stem.0"].group == names["inverted.2.0"].group
    assert names["inverted.1.0"].group == names["inverted.0.0"].group
    assert names["classifier"].group is None
    estimator = CostEstimator(analysis, PredictorCostModel(predictor))
    assert not any(r.fixed for r in estimator.recipes)
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = tuple(int(rng.integers(max(1, g.channels // 5), g.channels + 1)) for g in analysis.groups)
        ratios = {
            analysis.layers[i].name: k / g.channels
            for k, g in zip(keep, analysis.groups, strict=True)
            for i in g.layers
        }
        pruned = torch_to_onnx(prune(model, ratios, torch.zeros(shape)), shape)
        dtypes = tuple("float32" for _ in analysis.layers)
        assert estimator.latency_ms(keep, dtypes) == pytest.approx(
            predictor.predict(pruned).latency_ms, rel=1e-9
        )
        real, est = onnx_footprint(pruned), estimator.footprint(keep, dtypes)
        assert est.activation_peak_bytes == real.activation_peak_bytes
        assert est.weight_bytes == real.weight_bytes


def test_int8_is_searched_only_with_a_predictor_that_costs_int8_kernels(predictor, digits_model) -> None:
    cost_model = PredictorCostModel(predictor)
    assert cost_model.dtypes() == ("float32",) and not cost_model.supports("int8")
    for method in ("haq", "joint"):
        with pytest.raises(ConfigError, match="no int8 kernels"):
            _env(digits_model, cost_model, method=method)
    with pytest.raises(ConfigError, match="cannot cost int8"):
        _env(digits_model, cost_model, dtypes=("float32", "int8"))
    # a predictor trained with int8 kernels (hwlat train --dtypes float32,int8) costs them
    with_int8 = PredictorCostModel(synthetic_predictor(120, ("float32", "int8")))
    assert with_int8.supports("int8") and with_int8.dtypes() == ("int8", "float32")
    _env(digits_model, with_int8, method="haq")
    # one trained on U8S8 kernels costs int8 layers as U8S8 and quantizes them so
    u8s8 = PredictorCostModel(synthetic_predictor(120, ("float32", "uint8")))
    assert u8s8.supports("int8") and u8s8.activation_type == "uint8"
    env = _env(digits_model, u8s8, method="haq")
    quantized = env.compress(env.uniform(1.0, "int8")).onnx
    zero_points = [t for t in quantized.graph.initializer if t.name.endswith("zero_point") and not t.dims]
    assert zero_points and all(t.data_type == onnx.TensorProto.UINT8 for t in zero_points)


def test_the_wall_keeps_every_episode_within_budget_and_canonical_policies_are_fixed(
    predictor, digits_model
) -> None:
    cost_model = PredictorCostModel(predictor)
    probe = _env(digits_model, cost_model)
    budget = probe.cost(probe.uniform(0.5)).latency_ms
    env = _env(digits_model, cost_model, latency_ms=budget, analysis=probe.analysis)
    assert env.margin["latency"] == 0.0  # float32 estimates are exact
    assert len(env.steps) == 4 and env.state_size == len(env.reset()) == 18
    rng = np.random.default_rng(1)
    capped = 0
    for _ in range(12):
        episode = env.rollout(lambda _t, _s: env.random_action(rng))
        capped += episode.capped
        assert episode.estimate.latency_ms <= budget * (1 + 1e-9)
        assert env.cost(episode.policy).latency_ms <= budget * (1 + 1e-9)
        assert env.rollout_arch(episode.arch).arch == episode.arch
        states = np.array([t.state for t in episode.transitions])
        assert np.all((states >= 0) & (states <= 1 + 1e-9))
    assert capped > 0  # random actions ask for more than the budget allows
    space = CompressionSpace(env)
    wanted = space.sample(np.random.default_rng(0))
    assert space.canonicalize(space.canonicalize(wanted)) == space.canonicalize(wanted)

    # a memory budget alone, from the memory predictor
    memory = probe.cost(probe.uniform(0.5)).memory_mb
    env = _env(digits_model, cost_model, latency_ms=None, memory_mb=memory, analysis=probe.analysis)
    for _ in range(6):
        episode = env.rollout(lambda _t, _s: env.random_action(rng))
        assert env.cost(episode.policy).memory_mb <= memory * (1 + 1e-9)
    with pytest.raises(InfeasibleBudgetError, match="smallest reachable memory"):
        _env(digits_model, cost_model, latency_ms=None, memory_mb=1e-4, analysis=probe.analysis)


def test_an_impossible_budget_fails_at_once_with_the_smallest_reachable_latency(
    predictor, digits_model
) -> None:
    with pytest.raises(InfeasibleBudgetError, match=r"smallest reachable latency, 0\.0\d+ ms") as info:
        _env(digits_model, PredictorCostModel(predictor), latency_ms=1e-4)
    assert "raise --latency-ms to at least" in str(info.value)


def test_the_fidelity_proxy_of_the_unchanged_network_is_one(predictor, digits_model) -> None:
    env = _env(digits_model, PredictorCostModel(predictor))
    result = env.evaluate(env.full_policy())
    assert env.score_name == "fidelity (proxy)"
    assert (result.score, result.top1_agreement, result.kl) == (1.0, 1.0, pytest.approx(0.0, abs=1e-9))
    assert env.evaluate(env.uniform(0.3)).score < 1.0


# ----- agents ------------------------------------------------------------------------------------


def test_ddpg_is_deterministic_and_a_stored_search_resumes_where_it_stopped(
    predictor, digits_model, tmp_path
) -> None:
    cost_model = PredictorCostModel(predictor)
    probe = _env(digits_model, cost_model)
    budget = probe.cost(probe.uniform(0.6)).latency_ms

    def run(episodes, out):
        env = _env(digits_model, cost_model, latency_ms=budget, analysis=probe.analysis)
        result = compression_search(
            env, "ddpg", episodes, out, strategy_options={"warmup": 4}, uniform_ratios=None, write=False
        )
        return [t.arch for t in result.study.trials], result

    whole, result = run(12, tmp_path / "whole")
    assert len(set(whole)) > 6 and all(r.feasible for r in result.episodes)
    assert result.study.strategy.agent.losses  # it learnt after warm-up
    again, _ = run(12, tmp_path / "again")
    assert again == whole
    first, _ = run(7, tmp_path / "resumed")
    resumed, result = run(12, tmp_path / "resumed")
    assert first == whole[:7] and resumed == whole and result.study.identical_replay


def test_ddpg_beats_uniform_pruning_at_the_same_latency_on_real_accuracy(predictor, digits_model) -> None:
    cost_model = PredictorCostModel(predictor)
    options = {"evaluate": digits.evaluate, "finetune": digits.finetune, "round_to": 4}
    probe = _env(digits_model, cost_model, **options)
    uniform = probe.evaluate(probe.uniform(0.375))
    env = _env(digits_model, cost_model, latency_ms=uniform.latency_ms, analysis=probe.analysis, **options)
    result = compression_search(
        env, "ddpg", 40, strategy_options={"warmup": 15}, uniform_ratios=(0.375,), write=False
    )
    best = result.best()
    assert best.latency_ms <= uniform.latency_ms * (1 + 1e-9)
    assert best.score > uniform.score + 0.1, (best.score, uniform.score)
    baseline = result.baselines[0]
    assert baseline.score == uniform.score and baseline.feasible


def test_evolution_and_random_search_the_same_environment(predictor, digits_model) -> None:
    cost_model = PredictorCostModel(predictor)
    probe = _env(digits_model, cost_model)
    budget = probe.cost(probe.uniform(0.5)).latency_ms
    for strategy in ("evolution", "random"):
        env = _env(digits_model, cost_model, latency_ms=budget, analysis=probe.analysis)
        result = compression_search(env, strategy, 8, uniform_ratios=None, write=False)
        assert len(result.episodes) == 8 and all(r.feasible for r in result.episodes)
        assert result.study.strategy.name == strategy


# ----- int8 (injected cost model) ----------------------------------------------------------------


def test_haq_and_joint_search_mixed_precision_within_budget(predictor, digits_model) -> None:
    cost_model = EmulatedInt8CostModel(predictor)
    probe = _env(digits_model, cost_model, method="haq", evaluate=digits.evaluate)
    assert probe.dtypes == ("int8", "float32")
    all_int8 = probe.evaluate(probe.uniform(1.0, "int8"))
    assert all_int8.score > 0.9  # int8 accuracy, run by ONNX Runtime on the QDQ model
    original = probe.evaluate(probe.full_policy())
    budget = (all_int8.latency_ms + original.latency_ms) / 2
    haq = _env(digits_model, cost_model, method="haq", latency_ms=budget, analysis=probe.analysis)
    result = compression_search(haq, "random", 6, uniform_ratios=None, write=False)
    assert all(r.feasible for r in result.episodes)
    mixed = [r.policy for r in result.episodes if len(set(r.policy.dtypes)) == 2]
    assert mixed
    compressed = haq.compress(mixed[0])
    weights_of = {n.output[0] for n in compressed.onnx.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in compressed.onnx.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [("int8" if n.input[1] in weights_of else "float32") for n in convs] == list(mixed[0].dtypes)

    budget = all_int8.latency_ms * 0.6
    joint = _env(digits_model, cost_model, method="joint", latency_ms=budget)
    result = compression_search(
        joint, "ddpg", 6, strategy_options={"warmup": 3}, uniform_ratios=None, write=False
    )
    # The wall's estimate misses the float/int8 boundaries; its margin learns them as it goes.
    assert joint.margin["latency"] > 0
    assert all(r.latency_ms <= budget * 1.02 for r in result.episodes)
    assert sum(r.feasible for r in result.episodes) >= 3
    assert any("int8" in r.policy.dtypes for r in result.episodes)
    assert any(
        k < g.channels
        for r in result.episodes
        for k, g in zip(r.policy.keep, joint.analysis.groups, strict=True)
    )


def test_an_onnx_model_can_be_searched_for_quantization_only(predictor, digits_model, tmp_path) -> None:
    path = tmp_path / "digits.onnx"
    onnx.save(torch_to_onnx(digits_model, digits.INPUT_SHAPE), str(path))
    cost_model = EmulatedInt8CostModel(predictor)
    with pytest.raises(ConfigError, match="ONNX model can only be quantized"):
        _env(path, cost_model, method="amc")
    env = _env(path, cost_model, method="haq", latency_ms=0.08)
    assert [layer.kind for layer in env.analysis.layers] == ["conv"] * 4 + ["linear"]
    result = compression_search(env, "random", 3, uniform_ratios=(1.0,), write=False)
    assert all(r.feasible for r in result.episodes)
    assert [b.label for b in result.baselines] == ["uniform 1 float32", "uniform 1 int8"]


# ----- report and command line -------------------------------------------------------------------


def test_the_command_writes_the_report_resumes_and_rejects_impossible_budgets(
    predictor_file, digits_model, tmp_path, capsys
) -> None:
    out, db = tmp_path / "out", tmp_path / "hwlat.db"
    args = [
        "compress",
        "--model",
        "hwlat.search.compression.digits:pretrained_model",
        "--input-shape",
        "1,1,8,8",
        "--predictor",
        str(predictor_file),
        "--latency-ms",
        "0.05",
        "--eval",
        "hwlat.search.compression.digits:evaluate",
        "--calibration",
        "hwlat.search.compression.digits:calibration_inputs",
        "--warmup",
        "2",
        "--tvm-predictor",
        str(predictor_file),
        "--out",
        str(out),
        "--db",
        str(db),
    ]
    assert main([*args, "--episodes", "4"]) == 0
    printed = capsys.readouterr().out
    assert "episode 4/4: accuracy" in printed and "best uniform baseline within budget" in printed
    assert main([*args, "--episodes", "6"]) == 0
    printed = capsys.readouterr().out
    assert "episode 5/6" in printed and "episode 6/6" in printed and "episode 4/6" not in printed

    rows = list(csv.DictReader(open(out / "policies.csv")))
    assert [r["episode"] for r in rows if r["source"] == "ddpg"] == [str(i) for i in range(6)]
    assert sum(r["source"] == "uniform" for r in rows) == 7
    assert all(r["tvm_latency_ms"] for r in rows if r["source"] == "uniform")  # float32 on "TVM"
    saved = json.loads((out / "pareto.json").read_text())
    assert saved["episodes"] == 6 and saved["front"] and saved["score_is_proxy"] is False
    assert (out / "pareto.png").stat().st_size > 0
    rank1 = json.loads(next((out / "winners").glob("rank1-*.json")).read_text())
    onnx.checker.check_model(onnx.load(str(out / "winners" / rank1["onnx"])))
    # the state dict loads into the original network pruned by the winner's keep ratios
    pruned = prune(digits_model, rank1["keep_ratios"], torch.zeros(digits.INPUT_SHAPE))
    pruned.load_state_dict(torch.load(out / "winners" / rank1["state_dict"]))
    assert digits.evaluate(pruned) == pytest.approx(rank1["accuracy"])

    # a safety margin: the search runs under budget / 1.1, so measured winners may run 10% slow
    margin = [*args[:-4], "--episodes", "2", "--safety-margin", "10", "--out", str(tmp_path / "m")]
    assert main(margin) == 0
    assert "searched at 0.04545 ms: the predictor's 10.0% safety margin" in capsys.readouterr().out
    searched = [r for r in csv.DictReader(open(tmp_path / "m" / "policies.csv")) if r["source"] == "ddpg"]
    assert searched and all(float(r["latency_ms"]) <= 0.05 / 1.1 for r in searched)

    impossible = [*args[:-4], "--episodes", "2", "--latency-ms", "0.0001", "--out", str(tmp_path / "x")]
    assert main(impossible) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hwlat: error: the latency budget 0.0001 ms is below")
    assert "smallest reachable latency" in err[0]


def test_verify_measures_the_winners_on_the_device(predictor, digits_model, tmp_path, quick_protocol) -> None:
    from hwlat.devices.device import local_device
    from hwlat.profiler.store import Store
    from hwlat.search.compression import format_verification, verify_winners

    env = _env(digits_model, PredictorCostModel(predictor), latency_ms=1e-3 * 60)
    result = compression_search(env, "random", 3, tmp_path, uniform_ratios=None, top_k=1)
    with Store(tmp_path / "m.db") as store:
        checks = verify_winners(
            result, local_device(), store, 1, tmp_path, protocol=quick_protocol, repeats=1
        )
        assert len(store.measurements(kind="model")) == 1
    (check,) = checks
    assert check.measured_ms and check.measured_ms > 0 and check.predicted_ms == result.winners[0].latency_ms
    assert check.measured_memory_mb is not None
    assert "rank" in format_verification(checks)
    saved = json.loads((tmp_path / "verify-local.json").read_text())
    assert saved[0]["episode"] == result.winners[0].number
