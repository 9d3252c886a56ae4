"""TVM predictors: TVM's fusion rules checked against the installed TVM's FuseOps, kernels compiled
alone and checked against ONNX Runtime, and a small predictor trained, used and validated with
real TVM (untuned: seconds per kernel). No timed assertions: latencies are whatever the (shared)
machine gives; accuracy is benchmarks/bench_tvm_predictor.py's business."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest

from hwlat import cli as hwlat_cli
from hwlat import zoo
from hwlat.devices.device import local_device
from hwlat.predictors.building import KernelProfiler, TrainingConfig, train_predictor
from hwlat.predictors.building.profiling import CALL_PROBE
from hwlat.predictors.kernels.splitter import ModelSplitter
from hwlat.predictors.kernels.tvm_fusion import TVM_FUSED, tvm_fusion_rules
from hwlat.profiler.backends.tvm.backend import TvmUntunedBackend
from hwlat.profiler.backends.tvm.tune import load_tvm
from hwlat.profiler.kernel import Kernel, op_class
from hwlat.profiler.onnx_models import build_kernel_model, load_model
from hwlat.profiler.onnx_models.fold import fold_shape_arithmetic
from hwlat.profiler.onnx_models.torch_export import torch_to_onnx
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from tests.test_tvm import assert_matches_onnxruntime

X = (1, 16, 14, 14)
# Times whatever the machine gives: nothing is flagged disturbed, so a busy machine cannot starve
# the training of clean rows (the disturbance rule has tests of its own).
LENIENT = TimingProtocol(
    warmup_ms=2.0, warmup_runs=1, min_repeat_ms=2.0, repeat=3, canary_repeat=1, canary_min_repeat_ms=1.0,
    max_retries=0, canary_tolerance=100.0, max_cv=100.0,
)  # fmt: skip


def example(op_cls: str, x: tuple[int, ...]) -> OpSpec:
    """An op of the class ``op_cls`` reading ``x`` (a linear layer: ``x`` channels last)."""
    c = x[1]
    return {
        "conv": lambda: OpSpec("conv", x, out_channels=c, kernel=1),
        "conv_act": lambda: OpSpec(
            "conv", x, out_channels=c, kernel=3, padding=1, groups=c, activation="relu6"
        ),
        "deconv": lambda: OpSpec("deconv", x, out_channels=c, kernel=3, padding=1),
        # a channels-last linear layer (its output is 4-D, so 4-D ops can follow it)
        "gemm": lambda: OpSpec("gemm", (x[0], x[2], x[3], x[1]), out_channels=c),
        "gemm_act": lambda: OpSpec("gemm", (x[0], x[2], x[3], x[1]), out_channels=c, activation="gelu"),
        "maxpool": lambda: OpSpec("maxpool", x, kernel=3, padding=1),
        "avgpool": lambda: OpSpec("avgpool", x, kernel=3, padding=1),
        "globalavgpool": lambda: OpSpec("globalavgpool", x),
        "globalmaxpool": lambda: OpSpec("globalmaxpool", x),
        "reduce": lambda: OpSpec("reduce", x),
        "layernorm": lambda: OpSpec("layernorm", x),
        "instancenorm": lambda: OpSpec("instancenorm", x),
        "softmax": lambda: OpSpec("softmax", x),
        "bn": lambda: OpSpec("bn", x),
        "slice": lambda: OpSpec("slice", x, out_channels=c // 2),
        "pad": lambda: OpSpec("pad", x, padding=1),
        "resize": lambda: OpSpec("resize", x, stride=2),
        "transpose": lambda: OpSpec("transpose", x, perm=(0, 1, 3, 2)),
        "add": lambda: OpSpec("add", x),
        "mul": lambda: OpSpec("mul", x, broadcast="channel"),
        "act": lambda: OpSpec("act", x, activation="hardswish"),
        "concat": lambda: OpSpec("concat", x, parts=(c // 2, c // 2)),
        "split": lambda: OpSpec("split", x, parts=(c // 2, c // 2)),
        "shuffle": lambda: OpSpec("shuffle", x, groups=2),
        "pixelshuffle": lambda: OpSpec("pixelshuffle", x, stride=2, mode="up"),
    }[op_cls]()


def tvm_calls(mod) -> list[str]:
    """The TIR functions ``main`` calls, in order, after the zero pipeline (one per fused kernel)."""
    call_tir = load_tvm().ir.Op.get("relax.call_tir")
    return [
        b.value.args[0].name_hint
        for block in mod["main"].body.blocks
        for b in block.bindings
        if hasattr(b.value, "op") and b.value.op == call_tir
    ]


def test_tvm_fusion_rules_are_what_tvm_fuses() -> None:
    """Every rule, on a pair that can form a kernel: fused iff TVM compiles the pair into fewer
    functions than its two ops alone."""
    backend = TvmUntunedBackend(local_device())
    counted: dict[str, int] = {}

    def functions(kernel: Kernel) -> int:
        if kernel.key not in counted:
            counted[kernel.key] = len(tvm_calls(backend._import(kernel.key, build_kernel_model(kernel))))
        return counted[kernel.key]

    for rule, fused in TVM_FUSED.items():
        producer, consumer = rule.split(">")
        a = example(producer, X)
        try:
            b = example(consumer, a.output_shapes[0])
        except InvalidOpSpecError:
            # one channel (a reduce's output) is no channel slice, split or shuffle's input, and
            # a pixel shuffle needs a multiple of four channels: no such pair forms a kernel
            assert producer == "reduce" or consumer == "pixelshuffle", rule
            continue
        assert (op_class(a), op_class(b)) == (producer, consumer)
        together = functions(Kernel((a, b)))
        apart = functions(Kernel((a,))) + functions(Kernel((b,)))
        assert (together < apart) == fused, (
            f"{rule}: TVM makes {together} functions of the pair, {apart} apart"
        )


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "squeezenet_1_1"])
def test_split_kernels_are_the_functions_tvm_calls(tmp_path: Path, name: str) -> None:
    """The splitter with TVM's rules cuts a network where TVM does: one kernel per function TVM
    calls (an SE kernel is three: the mean and two convs, the second with the multiply), one
    per glue node (a reshape)."""
    path = zoo.export_onnx(zoo.build(name), tmp_path / f"{name}.onnx", 64)
    split = ModelSplitter(tvm_fusion_rules("tvm-untuned")).split(path)
    expected = sum(3 if s.kernel.is_se else 1 for s in split.kernels) + len(split.glue_nodes)
    calls = tvm_calls(TvmUntunedBackend(local_device())._import(name, load_model(path)))
    assert len(calls) == expected


@pytest.mark.parametrize(
    "kernel",
    [
        Kernel((OpSpec("conv", X, out_channels=16, kernel=1), OpSpec("add", X), example("act", X))),
        Kernel(
            (
                OpSpec("globalavgpool", X),
                OpSpec("conv", (1, 16, 1, 1), out_channels=4, kernel=1, activation="relu"),
                OpSpec("conv", (1, 4, 1, 1), out_channels=16, kernel=1, activation="hardsigmoid"),
                OpSpec("mul", X, broadcast="channel"),
            )
        ),
        Kernel((example("concat", X), example("shuffle", X), example("split", X))),
    ],
    ids=lambda k: k.signature,
)
def test_a_kernel_compiled_alone_computes_what_onnxruntime_does(kernel: Kernel) -> None:
    library = TvmUntunedBackend(local_device()).artifact(kernel)
    assert library.name.startswith("kernel-")
    assert_matches_onnxruntime(library, build_kernel_model(kernel))


def test_a_channel_split_by_shape_arithmetic_compiles_in_tvm(tmp_path: Path) -> None:
    """``x.chunk(2, dim=1)`` exports as Shape -> Gather -> Add -> Div -> Mul -> Slice, which TVM's
    importer leaves dynamic and cannot legalize, and ``F.pad``'s pads come from ConstantOfShape,
    Reshape, Transpose and Cast ("dynamic pads"); folded, the whole model compiles and computes
    what ONNX Runtime does (ShuffleNetV2's units split so; random networks pad so)."""
    import torch
    from torch import nn

    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.chunk(2, dim=1)
            return torch.cat([a, self.conv(nn.functional.pad(b, (1, 1, 1, 1), mode="reflect"))], 1)

    model = torch_to_onnx(Half().eval(), (1, 8, 6, 6))
    path = tmp_path / "half.onnx"
    onnx.save(model, path)
    arithmetic = {"Shape", "Gather", "Div", "ConstantOfShape", "Transpose", "Cast"}
    assert arithmetic <= {n.op_type for n in model.graph.node}
    folded = fold_shape_arithmetic(model)
    assert not arithmetic & {n.op_type for n in folded.graph.node}
    library = TvmUntunedBackend(local_device()).model_artifact(path)
    assert_matches_onnxruntime(library, model)


def test_a_tvm_predictor_is_trained_used_and_validated(tmp_path: Path, capsys) -> None:
    """The kernels of a small network profiled, a gbdt predictor trained on them, then used on
    another network and validated against TVM's own measurement of it."""
    db = tmp_path / "tvm.db"
    source = zoo.export_onnx(zoo.build("mobilenet_v3_small"), tmp_path / "source.onnx", 32)
    rules = tvm_fusion_rules("tvm-untuned")
    kernels = list(dict.fromkeys(s.kernel for s in ModelSplitter(rules).split(source).kernels))
    config = TrainingConfig(
        kind="gbdt", sampled_kernels=0, random_networks=0, calibration_networks=0, kernel_protocol=LENIENT
    )
    with Store(db) as store:
        profiler = KernelProfiler(local_device(), store, LENIENT, "tvm-untuned")
        report = profiler.measure(kernels)
        assert (report.measured, report.failed) == (len(kernels) + 1, 0)  # and the call-overhead probe
        predictor = train_predictor(local_device(), store, config, backend="tvm-untuned", log=lambda _: None)
        rows = profiler.rows()
        costs = profiler.costs()
    assert (predictor.backend, predictor.fusion_rules.backend) == ("tvm-untuned", "tvm-untuned")
    assert predictor.fusion_rules.fused == TVM_FUSED
    assert not predictor.memory.arena  # ORT's arena is not TVM's memory
    training = predictor.meta["training"]
    assert training["kernels"] == len(kernels) and training["tune_trials"] is None
    # each kernel compiled alone and timed end to end, less the VM's per-call overhead
    assert CALL_PROBE.key in rows and set(costs) == {k.key for k in kernels}
    assert all(math.isclose(costs[k], rows[k].median_ms - rows[CALL_PROBE.key].median_ms) or
               math.isclose(costs[k], 0.1 * rows[k].median_ms) for k in costs)  # fmt: skip
    path = predictor.save(tmp_path / "tvm.json")

    models = tmp_path / "models"
    models.mkdir()
    model = zoo.export_onnx(zoo.build("mobilenet_v2_0.5"), models / "mobilenet_v2_0.5.onnx", 32)
    assert hwlat_cli.main(["predict", str(model), "--predictor", str(path), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["backend"] == "tvm-untuned" and math.isfinite(pred["latency_ms"]) and pred["latency_ms"] > 0
    parts = [k["latency_ms"] for k in pred["kernels"]]
    assert all(k["latency_ms"] > 0 for k in pred["kernels"] if k["source"] != "glue")
    assert math.isclose(pred["overhead_ms"] + sum(parts), pred["latency_ms"], rel_tol=1e-9)

    argv = ["validate", "--predictor", str(path), "--models", str(models), "--db", str(db), "--json"]
    argv += ["--plot", str(tmp_path / "v.png"), "--include-disturbed", "--repeats", "1", "--quick"]
    assert hwlat_cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1 and report["rows"][0]["measured_ms"] > 0
    with Store(db) as store:
        (row,) = store.measurements("local", "tvm-untuned", "model")
    assert row.ok and row.backend_version == load_tvm().__version__


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "tvm-untuned", "--dtypes", "float32,int8"], "TVM kernels are float32 only"),
        (["--backend", "tvm-untuned", "--tune-trials", "4"], "--tune-trials applies to --backend tvm"),
    ],
)
def test_tvm_training_refuses_what_tvm_cannot_do(
    tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    status = hwlat_cli.main(["train", *argv, "--db", str(tmp_path / "t.db"), "-o", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("hwlat: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.json").exists()
