"""8-bit kernels: OpSpecs, QDQ op models ORT fuses into its QLinear kernels, the splitter on
quantized and mixed-precision networks, and in-context measurement of 8-bit kernels."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from hwlat import zoo
from hwlat.compress import quantizable_nodes, quantize_model
from hwlat.devices.device import local_device
from hwlat.predictors import Kernel, ModelSplitter
from hwlat.predictors.building import KernelProfiler, KernelSampler
from hwlat.predictors.building.training import qdq_rules
from hwlat.predictors.kernels import FusionRules
from hwlat.profiler.backends.ort.harness import build_harness, qdq_fanout_probe
from hwlat.profiler.onnx_models import build_model, make_model, random_inputs, torch_to_onnx
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from tests.synthetic import RULES, synthetic_ms, synthetic_predictor

X = (1, 32, 14, 14)
EIGHT_BIT = [
    OpSpec("conv", X, out_channels=48, kernel=3, padding=1, dtype="int8"),
    OpSpec("conv", X, out_channels=32, kernel=3, padding=1, groups=32, dtype="int8"),
    OpSpec("conv", X, out_channels=16, kernel=1, dtype="uint8"),
    OpSpec("conv", X, out_channels=16, kernel=1, dtype="uint8", weights="runtime"),  # ORT quantizes
    OpSpec("gemm", (1, 256), out_channels=10, dtype="int8"),
    OpSpec("add", X, dtype="int8"),
    OpSpec("mul", X, broadcast="channel", dtype="int8"),
    OpSpec("concat", X, parts=(16, 16), dtype="int8"),
    OpSpec("split", X, parts=(16, 16), dtype="int8"),
    OpSpec("shuffle", X, groups=2, dtype="int8"),
    OpSpec("maxpool", X, kernel=3, stride=2, padding=1, dtype="int8"),
    OpSpec("avgpool", X, kernel=2, stride=2, dtype="int8"),
    OpSpec("globalavgpool", X, dtype="int8"),
    OpSpec("act", X, activation="sigmoid", dtype="int8"),
    OpSpec("act", X, activation="leakyrelu", dtype="int8"),
    OpSpec("quantize", X, dtype="int8"),
    OpSpec("dequantize", X, dtype="uint8"),
    OpSpec("quantize", (1, 1280), dtype="int8"),
]
ORT_KERNEL = {
    "conv": "QLinearConv",
    "gemm": "QGemm",
    "add": "QLinearAdd",
    "mul": "QLinearMul",
    "concat": "QLinearConcat",
    "avgpool": "QLinearAveragePool",
    "globalavgpool": "QLinearGlobalAveragePool",
}
QLINEAR_ACT = {"sigmoid": "QLinearSigmoid", "leakyrelu": "QLinearLeakyRelu"}


@pytest.mark.parametrize("spec", EIGHT_BIT, ids=lambda s: s.key)
def test_8bit_keys_round_trip_and_ort_runs_the_8bit_kernel(spec: OpSpec, tmp_path) -> None:
    assert OpSpec.from_key(spec.key) == spec and spec.key.endswith(f"dtype:{spec.dtype}")
    model = build_model(spec)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort_profile")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, random_inputs(model))
    assert [o.shape for o in outputs] == list(spec.output_shapes)
    with open(session.end_profiling()) as fh:
        events = json.load(fh)
    ran = {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}
    expected = QLINEAR_ACT[spec.activation] if spec.op == "act" else ORT_KERNEL.get(spec.op)
    if expected is not None:
        assert expected in ran  # DQ -> op -> Q was fused into the 8-bit kernel


def test_8bit_specs_fold_range_activations_and_refuse_what_has_no_8bit_kernel() -> None:
    relu = OpSpec("conv", X, out_channels=8, kernel=1, activation="relu6", dtype="int8")
    assert relu == OpSpec("conv", X, out_channels=8, kernel=1, dtype="int8")  # the range clips it
    assert OpSpec("conv", X, out_channels=8, kernel=1, activation="relu").as_dtype("int8") == relu
    for bad in (
        dict(op="conv", input_shape=X, out_channels=8, activation="hardswish", dtype="int8"),
        dict(op="act", input_shape=X, activation="hardswish", dtype="int8"),
        dict(op="quantize", input_shape=X),
        dict(op="conv", input_shape=X, out_channels=8, stride=2.5),
        dict(op="conv", input_shape=(1, 3.5, 8, 8), out_channels=8),
    ):
        with pytest.raises(InvalidOpSpecError):
            OpSpec(**bad)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    directory = tmp_path_factory.mktemp("q")
    float_path = directory / "mobilenet_v2.onnx"
    float_path.write_bytes(torch_to_onnx(zoo.build("mobilenet_v2"), (1, 3, 64, 64)).SerializeToString())
    all_int8 = quantize_model(float_path, directory / "int8.onnx", random_batches=2)
    convs = [n for n in quantizable_nodes(float_path) if n.endswith("Conv")]
    mixed = quantize_model(
        float_path, directory / "mixed.onnx", random_batches=2, exclude=convs[len(convs) // 2 :]
    )
    return float_path, all_int8, mixed


def test_the_splitter_maps_a_quantized_network_to_8bit_kernels(quantized) -> None:
    float_path, all_int8, mixed = quantized
    fp32 = Counter(k.kernel.op for k in ModelSplitter(RULES).split(float_path).kernels)
    split = ModelSplitter(RULES).split(all_int8)
    ops = Counter((k.kernel.op, k.kernel.head.dtype) for k in split.kernels)
    assert split.unsupported == []
    assert ops[("conv", "int8")] + ops[("dwconv", "int8")] == fp32["conv"] + fp32["dwconv"]
    assert ops[("quantize", "int8")] == 1 and ops[("dequantize", "int8")] == 1  # the network's edges
    assert not any(dtype == "float32" for _, dtype in ops)


def test_mixed_precision_runs_conversions_between_8bit_and_float_layers(quantized) -> None:
    _, _, mixed = quantized
    ops = Counter((k.kernel.op, k.kernel.head.dtype) for k in ModelSplitter(RULES).split(mixed).kernels)
    assert ops[("conv", "float32")] + ops[("dwconv", "float32")] > 10
    assert ops[("conv", "int8")] + ops[("dwconv", "int8")] > 10
    assert ops[("quantize", "int8")] > 5 and ops[("dequantize", "int8")] > 5


def test_a_mixed_u8s8_network_runs_uint8_kernels_only(quantized, tmp_path) -> None:
    """Its weights are int8, but what dequantizes them in front of a float32 conv is timed as the
    network's uint8 kernels (a uint8 predictor has no int8 ones)."""
    float_path = quantized[0]
    convs = [n for n in quantizable_nodes(float_path) if n.endswith("Conv")]
    mixed = quantize_model(
        float_path,
        tmp_path / "u8.onnx",
        random_batches=1,
        exclude=convs[len(convs) // 2 :],
        activation_type="uint8",
    )
    ops = Counter(
        (k.kernel.op, o.dtype) for k in ModelSplitter(RULES).split(mixed).kernels for o in k.kernel.ops
    )
    assert {dtype for _, dtype in ops} == {"float32", "uint8"} and ops[("dequantize", "uint8")] > 5


@pytest.fixture(scope="module")
def predictor8():
    return synthetic_predictor(200, ("float32", "int8"))


def test_a_predictor_trained_with_8bit_kernels_predicts_quantized_networks_faster(
    quantized, predictor8
) -> None:
    float_path, all_int8, _ = quantized
    predictor = predictor8
    fp32, int8 = predictor.predict(float_path), predictor.predict(all_int8)
    assert int8.latency_ms < fp32.latency_ms  # the synthetic device runs 8-bit compute faster
    assert int8.weights_mb < fp32.weights_mb / 3  # int8 weights
    assert predictor.dtypes == ("float32", "int8")


def test_8bit_kernels_are_measured_in_context_as_the_qlinear_kernel_alone(tmp_path, quick_protocol) -> None:
    kernels = [Kernel((spec,)) for spec in EIGHT_BIT[:3] + [EIGHT_BIT[4], EIGHT_BIT[11], EIGHT_BIT[14]]]
    with Store(tmp_path / "k.db") as store:
        report = KernelProfiler(local_device(), store, quick_protocol).measure(kernels)
        assert report.failed == 0
        for kernel in kernels:
            row = store.get("local", "ort", kernel.key, "kernel")
            ops = [n["op"] for n in row.extra["kernel_nodes"]]
            if kernel.head.op in ORT_KERNEL:
                assert ops == [ORT_KERNEL[kernel.head.op]], (kernel.key, ops)
            assert row.median_ms > 0


def _ort_ops(path, tmp_path) -> Counter:
    """The node types ONNX Runtime's graph optimiser leaves in a model (the QDQ fusions are
    "extended" optimisations; "all" only adds layout changes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"optimized-{Path(path).stem}.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.fixture(scope="module")
def probed_rules(tmp_path_factory):
    """The QDQ rules of this machine, probed as ``hwlat train`` probes them."""
    rules = FusionRules("ort", dict(RULES.fused))
    protocol = TimingProtocol(warmup_ms=5.0, min_repeat_ms=5.0, repeat=3, max_retries=1)
    with Store(tmp_path_factory.mktemp("probe") / "p.db") as store:
        profiler = KernelProfiler(local_device(), store, protocol)
        for dtype in ("int8", "uint8"):
            qdq_rules(profiler, dtype, rules)
    return rules


def test_the_qdq_probe_reads_which_convs_the_runtime_fuses(probed_rules, tmp_path) -> None:
    """The probe's answer is what ORT's optimiser does with the probe model on this machine;
    a uint8 conv fuses whether or not its tensors branch (on x86 an int8 one does not)."""
    for dtype in ("int8", "uint8"):
        ops = _ort_ops(qdq_fanout_probe(dtype, tmp_path), tmp_path)
        single, branching = (probed_rules.qdq_fuses(dtype, branching=b) for b in (False, True))
        fused = single + 3 * branching
        assert ops["QLinearConv"] == fused and ops["Conv"] == 4 - fused, (dtype, ops)
    assert probed_rules.qdq_fuses("uint8", branching=True) and probed_rules.qdq_fuses("int8", branching=False)


# zoo CNNs (S8S8, and a U8S8 ShuffleNet), and random networks with a GELU, a Mish, 8-bit LeakyReLUs
# and batch norms of their own
@pytest.mark.parametrize(
    "name, activation",
    [(n, "int8") for n in ("squeezenet_1_1", "mobilenet_v2", "shufflenet_v2", 9, 12, 14)]
    + [("shufflenet_v2", "uint8")],
)
def test_the_splitter_runs_in_8_bits_the_convs_the_runtime_fuses(
    name, activation, probed_rules, tmp_path
) -> None:
    """With the probed rules, the split of an S8S8 network has the runtime's QLinearConvs, float
    convs, and the DequantizeLinear and QuantizeLinear nodes it runs (a float conv's weights and
    bias are dequantized inside its kernel: ``weights="dequantized"``), node for node."""
    float_path = tmp_path / f"{name}.onnx"
    if isinstance(name, int):
        module, resolution = zoo.random_network(name)
        zoo.export_onnx(module, float_path, resolution)
    else:
        float_path.write_bytes(torch_to_onnx(zoo.build(name), (1, 3, 64, 64)).SerializeToString())
    int8_path = quantize_model(
        float_path, tmp_path / f"{name}_8bit.onnx", random_batches=1, activation_type=activation
    )
    split = ModelSplitter(probed_rules).split(int8_path)
    assert split.unsupported == []
    ops = Counter(
        (spec.op.replace("dwconv", "conv"), spec.dtype) for k in split.kernels for spec in k.kernel.ops
    )
    ort_ops = _ort_ops(int8_path, tmp_path)
    assert ops[("conv", activation)] == ort_ops["QLinearConv"]
    assert ops[("conv", "float32")] == ort_ops["Conv"]
    specs = [spec for k in split.kernels for spec in k.kernel.ops]
    parameters = sum(1 + spec.bias for spec in specs if spec.weights == "dequantized")
    assert ops[("dequantize", activation)] + parameters == ort_ops["DequantizeLinear"]
    assert ops[("quantize", activation)] == ort_ops["QuantizeLinear"]


@pytest.fixture(scope="module")
def resnet18_float(tmp_path_factory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("mixed") / "resnet18.onnx"
    path.write_bytes(torch_to_onnx(zoo.build("resnet18"), (1, 3, 64, 64)).SerializeToString())
    return path, [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def _split_matches_ort(path: Path, rules: FusionRules, tmp_path: Path) -> Counter:
    """Split a quantized model, assert its 8-bit and float convs, quantizes and dequantizes are
    the QLinearConvs, Convs, Qs and DQs of ORT's optimised graph; return ORT's node counts."""
    split = ModelSplitter(rules).split(path)
    ops = Counter(
        (spec.op.replace("dwconv", "conv"), spec.dtype) for k in split.kernels for spec in k.kernel.ops
    )
    ort_ops = _ort_ops(path, tmp_path)
    ort_ops["Conv"] += ort_ops.pop("FusedConv", 0)  # a float conv with its residual add or activation
    assert (ops[("conv", "uint8")], ops[("conv", "float32")]) == (ort_ops["QLinearConv"], ort_ops["Conv"])
    assert (ops[("dequantize", "uint8")], ops[("quantize", "uint8")]) == (
        ort_ops["DequantizeLinear"],
        ort_ops["QuantizeLinear"],
    )
    assert not [w for w in split.warnings if "computed at run time" in w]
    return ort_ops


def test_a_conv_left_float32_between_8bit_layers_runs_8bit(probed_rules, resnet18_float, tmp_path) -> None:
    """Every other conv of ResNet-18 excluded (U8S8): each reads a dequantized tensor and is
    requantized after its ReLU, so ORT quantizes its weights itself and runs it as QLinearConv;
    the split says so, and names every one of them among its 8-bit nodes (what ``hwlat quantize``
    reports)."""
    float_path, convs = resnet18_float
    excluded = convs[1::2]
    mixed = quantize_model(
        float_path, tmp_path / "alternate.onnx", random_batches=1, exclude=excluded, activation_type="uint8"
    )
    ort_ops = _split_matches_ort(mixed, probed_rules, tmp_path)
    assert ort_ops["Conv"] == 0 and ort_ops["QLinearConv"] == len(convs)
    eight_bit = ModelSplitter(probed_rules).split(mixed).eight_bit_nodes
    assert sorted(n for n in excluded if n in eight_bit) == sorted(excluded)


def test_a_float32_tail_after_8bit_layers_splits_as_the_runtime_runs_it(
    probed_rules, resnet18_float, tmp_path
) -> None:
    """The second half of ResNet-18's convs excluded: a float32 region that reads float tensors,
    which is how per-layer mixed precision really runs on ORT's CPU provider."""
    float_path, convs = resnet18_float
    excluded = convs[len(convs) // 2 :]
    mixed = quantize_model(
        float_path, tmp_path / "tail.onnx", random_batches=1, exclude=excluded, activation_type="uint8"
    )
    ort_ops = _split_matches_ort(mixed, probed_rules, tmp_path)
    assert ort_ops["Conv"] > 5 and ort_ops["QLinearConv"] > 5
    eight_bit = ModelSplitter(probed_rules).split(mixed).eight_bit_nodes
    assert len([n for n in excluded if n in eight_bit]) == len(excluded) - ort_ops["Conv"]


def test_a_float_conv_with_a_computed_bias_is_named_in_a_warning(tmp_path) -> None:
    """A bias that is a DequantizeLinear's output keeps a conv float32 and out of ORT's NCHWc
    layout (slower than the float32 kernel is timed): the split says so by name."""
    shape, channels = [1, 16, 8, 8], 16
    inits = [
        onnx.numpy_helper.from_array(np.ones((channels, channels, 1, 1), np.float32), "w"),
        onnx.numpy_helper.from_array(np.zeros(channels, np.uint8), "b_q"),
        onnx.numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        onnx.numpy_helper.from_array(np.array(0, np.uint8), "zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["b_q", "scale", "zero"], ["b"]),
        helper.make_node("Conv", ["x_dq", "w", "b"], ["y"], name="computed_bias_conv"),
    ]
    path = tmp_path / "computed_bias.onnx"
    onnx.save(_one_input_model(nodes, inits, shape), path)
    split = ModelSplitter().split(path)
    assert [k.kernel.head.dtype for k in split.kernels if k.kernel.op == "conv"] == ["float32"]
    assert any("computed at run time" in w and "computed_bias_conv" in w for w in split.warnings)
    assert _ort_ops(path, tmp_path)["Conv"] == 1


def test_the_sampler_draws_8bit_kernels_and_conversions() -> None:
    kernels = KernelSampler(RULES, 0, dtypes=("float32", "int8")).sample(300)
    by_dtype = Counter(k.head.dtype for k in kernels)
    assert by_dtype["int8"] > 80 and by_dtype["float32"] > 80
    assert {k.op for k in kernels if k.head.dtype == "int8"} >= {
        "conv",
        "dwconv",
        "add",
        "quantize",
        "dequantize",
    }


def test_haq_and_amc_tables_of_a_network(quantized, predictor8, tmp_path) -> None:
    import csv

    import numpy as np

    from hwlat.cli import main

    float_path, _, _ = quantized
    predictor = predictor8.save(tmp_path / "p.json")
    assert (
        main(
            [
                "table",
                "export",
                "--format",
                "haq",
                "--model",
                str(float_path),
                "--predictor",
                str(predictor),
                "-o",
                str(tmp_path / "haq.npy"),
            ]
        )
        == 0
    )
    table = np.load(tmp_path / "haq.npy")
    layers = json.loads((tmp_path / "haq.npy.json").read_text())["layers"]
    assert table.shape == (len(layers), 8, 8) and len(layers) == 53  # mobilenet_v2: 52 convs and a gemm
    assert np.isfinite(table[:, 7, 7]).all() and np.isnan(table[:, :7, :]).all()  # nothing invented
    # Where the synthetic device's 8-bit conv is clearly faster (not the tiny layers whose fixed
    # cost dominates), the predictor says so too.
    clear = []
    for layer in layers:
        if layer["kernel"].startswith("conv"):
            spec = OpSpec.from_key(layer["kernel"])
            ratio = synthetic_ms(Kernel((spec.as_dtype("int8"),))) / synthetic_ms(Kernel((spec,)))
            if ratio < 0.7:
                clear.append(layer)
    assert len(clear) > 20 and all(layer["int8_ms"] < layer["float32_ms"] for layer in clear)
    assert (
        main(
            [
                "table",
                "export",
                "--format",
                "amc",
                "--model",
                str(float_path),
                "--predictor",
                str(predictor),
                "-o",
                str(tmp_path / "amc.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(tmp_path / "amc.csv")))
    assert len(rows) == 53 * 10 * 2
    layer = [float(r["latency_ms"]) for r in rows if r["layer"] == "5" and r["dtype"] == "float32"]
    assert layer[-1] > layer[0]  # keeping every channel costs more than keeping a tenth


def _requantized_conv_model(weights: np.ndarray) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv (float32 weights) -> Q -> DQ: a conv left float32 between 8-bit
    tensors, which ORT quantizes itself."""
    channels = weights.shape[0]
    shape = [1, channels, 8, 8]
    inits = [
        onnx.numpy_helper.from_array(weights.astype(np.float32), "w"),
        onnx.numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
        onnx.numpy_helper.from_array(np.array(128, np.uint8), "zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"]),
        helper.make_node("Conv", ["x_dq", "w"], ["y_f"], name="requantized"),
        helper.make_node("QuantizeLinear", ["y_f", "scale", "zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "scale", "zero"], ["y"]),
    ]
    return _one_input_model(nodes, inits, shape)


def _one_input_model(nodes: list, inits: list, shape: list[int]) -> onnx.ModelProto:
    """A model of ``nodes`` from float input ``x`` to float output ``y``, both of ``shape``."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        initializer=inits,
    )
    return make_model(graph)


@pytest.mark.parametrize("symmetric", [True, False], ids=["zero-point-0", "zero-point-off-0"])
def test_a_conv_ort_quantizes_itself_is_8bit_and_slow_only_off_zero(symmetric, tmp_path) -> None:
    """ORT quantizes the float32 weights per tensor, asymmetrically; a zero point other than 0
    takes a slower path (``weights="runtime"``). The splitter's zero point is ORT's."""
    weights = np.random.default_rng(0).standard_normal((16, 16, 1, 1))
    largest = np.abs(weights).max()
    weights.flat[0], weights.flat[1] = -largest if symmetric else -3 * largest, largest
    path = tmp_path / "requantized.onnx"
    onnx.save(_requantized_conv_model(weights), path)
    (conv,) = [k.kernel.head for k in ModelSplitter().split(path).kernels if k.kernel.op == "conv"]
    assert conv.dtype == "uint8" and conv.weights == ("constant" if symmetric else "runtime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath).graph
    (qconv,) = [n for n in optimized.node if n.op_type == "QLinearConv"]
    values = {i.name: onnx.numpy_helper.to_array(i) for i in optimized.initializer}
    assert (int(values[qconv.input[5]]) == 0) == symmetric  # QLinearConv's w_zero_point


def test_a_conv_with_dequantized_weights_is_timed_alone_in_plain_nchw(tmp_path) -> None:
    """An unfused S8S8 conv reads a DequantizeLinear's NCHW output and writes a QuantizeLinear's
    input: its harness has no producer or consumer, and ORT runs it without NCHWc reorders,
    with its weights' and bias's DequantizeLinears inside the kernel."""
    spec = OpSpec("conv", (1, 32, 14, 14), out_channels=32, kernel=3, padding=1, weights="dequantized")
    model = build_harness(Kernel((spec,)))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert conv.input[0] == model.graph.input[0].name
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["Conv"] == 1 and ops["DequantizeLinear"] == 2 and ops["ReorderInput"] == 0


def test_the_sampler_adds_the_weight_twins_of_8bit_convs() -> None:
    """One 8-bit conv in four also comes as ORT runs it with runtime-quantized weights (and for
    int8 as a float32 conv with dequantized weights); the random draws stay as they were."""
    plain = KernelSampler(RULES, 0, dtypes=("float32", "int8")).sample(300)
    assert all(k.head.weights == "constant" for k in plain[:300])
    twins = Counter((k.head.dtype, k.head.weights) for k in plain[300:])
    eight_bit_convs = sum(1 for k in plain[:300] if k.head.op == "conv" and k.head.dtype == "int8")
    assert twins[("int8", "runtime")] == twins[("float32", "dequantized")] > 0.1 * eight_bit_convs
    assert set(twins) == {("int8", "runtime"), ("float32", "dequantized")}
