"""Compression: int8 QDQ quantization through ONNX Runtime, channel pruning through Torch-Pruning.

Everything runs for real (ORT's quantizer and runtime, Torch-Pruning's dependency graph) on
small inputs: a hand-made CNN at 32x32 for quantization, zoo networks at 64x64 for pruning
and the command line.
"""

from __future__ import annotations

import copy
import math
import random
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwlat import zoo
from hwlat.cli import main
from hwlat.compress import prunable_layers, prune, quantizable_nodes, quantize_model
from hwlat.compress.prune import PruningError
from hwlat.errors import ConfigError, ModelFileError
from hwlat.profiler.onnx_models import make_model, random_inputs, torch_to_onnx

# ---------------------------------------------------------------- quantization


class SmallNet(nn.Module):
    """Stem, a depthwise-separable residual block, a 1x1 head and a classifier: Conv, Relu, Add,
    GlobalAveragePool, Flatten and Gemm, the ops ORT quantizes in CNNs. Its logits depend on the
    input (unlike a deep random-weight network, whose logits are all but constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.head = nn.Sequential(
            nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.block(x))


SMALL_NET_NODES = [
    "/stem/stem.0/Conv",
    "/stem/stem.1/Relu",
    "/block/block.0/Conv",
    "/block/block.1/Relu",
    "/block/block.2/Conv",
    "/Add",
    "/head/head.0/Conv",
    "/head/head.1/Relu",
    "/head/head.2/GlobalAveragePool",
    "/head/head.3/Flatten",
    "/head/head.4/Gemm",
]


@pytest.fixture(scope="module")
def small_net() -> onnx.ModelProto:
    torch.manual_seed(0)
    return torch_to_onnx(SmallNet().eval(), (1, 3, 32, 32))


@pytest.fixture(scope="module")
def small_net_path(small_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "small.onnx"
    onnx.save(small_net, path)
    return path


def _weight_sources(model: onnx.ModelProto) -> dict[str, str]:
    """For each Conv/Gemm: the op producing its weight, or the initializer's numpy dtype."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    initializers = {i.name: i for i in model.graph.initializer}
    return {
        node.name: producers.get(node.input[1])
        or str(helper.tensor_dtype_to_np_dtype(initializers[node.input[1]].data_type))
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
    }


def _dequantized_weight_types(model: onnx.ModelProto) -> set[str]:
    """Element types of the weights that DequantizeLinear nodes turn back into floats."""
    initializers = {i.name: i for i in model.graph.initializer}
    return {
        str(helper.tensor_dtype_to_np_dtype(initializers[n.input[0]].data_type))
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")
    }


def _outputs(model, feeds: list[dict]) -> np.ndarray:
    session = ort.InferenceSession(
        model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    )
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def test_quantizable_nodes_are_the_nodes_ort_quantizes_in_graph_order(small_net) -> None:
    assert quantizable_nodes(small_net) == SMALL_NET_NODES


def test_quantized_model_is_qdq_with_int8_weights_and_close_to_the_float_model(small_net, tmp_path) -> None:
    out = quantize_model(small_net, tmp_path / "q" / "small-int8.onnx", random_batches=16)
    quantized = onnx.load(out)
    ops = {n.op_type for n in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert set(_weight_sources(quantized).values()) == {"DequantizeLinear"}
    assert _dequantized_weight_types(quantized) == {"int8"}

    # Unseen inputs from the calibration distribution. Measured: RMS error 0.6% of the logits'
    # spread, top-1 agreement 64/64; the bounds leave 8x room for other CPUs' int8 kernels.
    feeds = [random_inputs(small_net, seed) for seed in range(1000, 1032)]
    reference, result = _outputs(small_net, feeds), _outputs(out, feeds)
    assert result.shape == reference.shape == (32, 10)
    assert np.sqrt(np.mean((result - reference) ** 2)) / reference.std() < 0.05
    assert np.mean(result.argmax(1) == reference.argmax(1)) >= 0.9


@pytest.mark.parametrize(("activation_type", "per_channel"), [("uint8", True), ("int8", False)])
def test_activation_type_and_per_channel_choose_the_quantization(
    small_net, tmp_path, activation_type, per_channel
) -> None:
    out = quantize_model(
        small_net,
        tmp_path / "q.onnx",
        random_batches=2,
        activation_type=activation_type,
        per_channel=per_channel,
    )
    quantized = onnx.load(out)
    initializers = {i.name: i for i in quantized.graph.initializer}
    activation_zero_point = initializers["input_zero_point"]
    assert helper.tensor_dtype_to_np_dtype(activation_zero_point.data_type) == np.dtype(activation_type)
    assert _dequantized_weight_types(quantized) == {"int8"}
    stem_scale = numpy_helper.to_array(initializers["stem.0.weight_scale"])
    assert stem_scale.shape == ((16,) if per_channel else ())


def test_excluded_nodes_stay_float32(small_net, tmp_path) -> None:
    excluded = ["/block/block.2/Conv", "/head/head.4/Gemm"]
    out = quantize_model(small_net, tmp_path / "mixed.onnx", random_batches=4, exclude=excluded)
    sources = _weight_sources(onnx.load(out))
    assert {name: sources[name] for name in excluded} == dict.fromkeys(excluded, "float32")
    assert {s for name, s in sources.items() if name not in excluded} == {"DequantizeLinear"}
    feeds = [random_inputs(small_net, 7)]
    assert np.allclose(_outputs(out, feeds), _outputs(small_net, feeds), atol=0.05)


def test_unknown_exclude_names_are_refused_with_real_names(small_net, tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        quantize_model(small_net, tmp_path / "q.onnx", random_batches=1, exclude=["conv9", "/Add"])
    message = str(info.value)
    assert "'conv9'" in message and "'/Add'" not in message and "/stem/stem.0/Conv" in message


def test_nodes_without_names_are_named_so_they_can_be_excluded(tmp_path) -> None:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["y"], ["z"]),
            helper.make_node("Conv", ["z", "w2"], ["out"]),
        ],
        "unnamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
        ],
    )
    model = make_model(graph)
    assert quantizable_nodes(model) == ["Conv_0", "Relu_1", "Conv_2"]
    out = quantize_model(model, tmp_path / "q.onnx", random_batches=1, exclude=["Conv_2"])
    assert _weight_sources(onnx.load(out)) == {"Conv_0": "DequantizeLinear", "Conv_2": "float32"}


def test_calibration_folder_of_npy_and_npz_files(small_net, tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))  # batch axis added
    np.savez(tmp_path / "b.npz", input=rng.standard_normal((1, 3, 32, 32)))  # float64: cast
    out = quantize_model(small_net, tmp_path / "out" / "q.onnx", calibration=tmp_path)
    assert _outputs(out, [random_inputs(small_net, 1)]).shape == (1, 10)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no .npy or .npz files"),
        ({"a.npy": np.zeros((1, 3, 16, 16), np.float32)}, "of shape 1x3x16x16"),
        ({"a.npz": {"image": np.zeros((1, 3, 32, 32), np.float32)}}, "holds arrays image"),
        ({"a.npy": b"not numpy"}, "cannot read calibration file"),
        ({"a.npz": b"PK\x03\x04 truncated"}, "cannot read calibration file"),
    ],
)
def test_bad_calibration_folders_are_refused(small_net, tmp_path, files, message) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        elif isinstance(content, dict):
            np.savez(folder / name, **content)
        else:
            np.save(folder / name, content)
    with pytest.raises(ConfigError, match=message):
        quantize_model(small_net, tmp_path / "q.onnx", calibration=folder)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"random_batches": 4, "calibration": "x"},
        {"random_batches": 0},
        {"calibration": "no-such-folder"},
        {"random_batches": 1, "activation_type": "int4"},
    ],
)
def test_calibration_source_and_types_are_checked(small_net, tmp_path, kwargs) -> None:
    with pytest.raises(ConfigError):
        quantize_model(small_net, tmp_path / "q.onnx", **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_a_truncated_model_file_is_a_model_file_error(small_net_path, tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(small_net_path.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="broken.onnx"):
        quantize_model(broken, tmp_path / "q.onnx", random_batches=1)


# ---------------------------------------------------------------- pruning

EXAMPLE = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["mobilenet_v2", "resnet18"])
def network(request) -> tuple[str, nn.Module, list[str]]:
    model = zoo.build(request.param)
    return request.param, model, prunable_layers(model, EXAMPLE)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return zoo.build("resnet18")


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {
        name: m.weight.shape[0] for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    }


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _runs_in_ort(model: nn.Module) -> None:
    proto = torch_to_onnx(model, (1, 3, 64, 64))
    (out,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": EXAMPLE.numpy()})
    assert out.shape == (1, 1000)


def test_prunable_layers_are_every_conv_and_linear_but_the_classifier_in_forward_order(network) -> None:
    name, model, layers = network
    all_layers = list(_out_channels(model))  # registration order is forward order in the zoo
    assert layers == all_layers[:-1]
    if name == "mobilenet_v2":
        assert len(layers) == 52 and "2.body.1.0" in layers  # a depthwise conv
    else:
        assert len(layers) == 20 and "4.short.0" in layers  # a shortcut conv


def test_uniform_keep_half_halves_every_layer(network) -> None:
    name, model, layers = network
    before, params = _out_channels(model), _params(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, [0.5] * len(layers), EXAMPLE)
    after = _out_channels(pruned)
    assert {n: after[n] for n in layers} == {n: round(before[n] / 2) for n in layers}
    assert after[next(reversed(after))] == 1000
    assert _params(pruned) < 0.4 * params  # about a quarter: most weights scale with cin * cout
    _runs_in_ort(pruned)
    assert _out_channels(model) == before and _params(model) == params
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_random_ratios_round_to_multiples_and_never_keep_less_than_asked(network) -> None:
    name, model, layers = network
    rng = random.Random(1)
    ratios = [rng.uniform(0.25, 1.0) for _ in layers]
    before = _out_channels(model)
    pruned = prune(model, ratios, EXAMPLE, round_to=8)
    after = _out_channels(pruned)
    for layer, ratio in zip(layers, ratios, strict=True):
        assert after[layer] % 8 == 0, layer
        # a coupled layer keeps its group's largest ratio: at least its own
        assert after[layer] >= min(before[layer], max(8, math.floor(ratio * before[layer] / 8 + 0.5) * 8))
    assert _params(pruned) < _params(model)
    _runs_in_ort(pruned)


@pytest.mark.parametrize(
    ("name", "kept", "coupled"),
    [
        ("resnet18", "0.0", ["2.body.1.0", "3.body.1.0"]),  # the stem and the stage's residual convs
        ("mobilenet_v2", "2.body.1.0", ["2.body.0.0"]),  # a depthwise conv and its expansion
    ],
)
def test_a_ratio_of_one_keeps_the_whole_coupled_group(resnet18, name, kept, coupled) -> None:
    model = resnet18 if name == "resnet18" else zoo.build(name)
    before = _out_channels(model)
    pruned = prune(model, {kept: 1.0, **dict.fromkeys(coupled, 0.25)}, EXAMPLE)
    after = _out_channels(pruned)
    assert {n: after[n] for n in [kept, *coupled]} == {n: before[n] for n in [kept, *coupled]}
    assert _params(pruned) == _params(model)


def test_keeping_everything_changes_nothing(resnet18) -> None:
    model = resnet18
    pruned = prune(model, {}, EXAMPLE)
    assert pruned is not model and _out_channels(pruned) == _out_channels(model)
    with torch.no_grad():
        assert torch.allclose(pruned(EXAMPLE), model(EXAMPLE))


def test_frozen_weights_and_no_grad_callers_are_pruned_too(resnet18) -> None:
    frozen = copy.deepcopy(resnet18).requires_grad_(False).train()
    with torch.no_grad():
        pruned = prune(frozen, {"2.body.0.0": 0.5}, EXAMPLE)
    assert _out_channels(pruned)["2.body.0.0"] == 32
    assert pruned.training and not any(p.requires_grad for p in pruned.parameters())


@pytest.mark.parametrize(
    ("ratios", "kwargs", "message"),
    [
        ([0.5] * 19, {}, "19 keep ratios for 20 prunable layers"),
        ([0.5] * 19 + [0.0], {}, "out of range"),
        ([0.5] * 19 + [1.5], {}, "out of range"),
        ([0.5] * 19 + [float("nan")], {}, "out of range"),
        ({"fc": 0.5}, {}, "no prunable layer named 'fc'"),
        ({}, {"round_to": 0}, "round_to"),
        ({}, {"importance": "taylor"}, "importance"),
    ],
)
def test_bad_arguments_are_config_errors(resnet18, ratios, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        prune(resnet18, ratios, EXAMPLE, **kwargs)


def test_a_network_torch_pruning_cannot_trace_is_a_pruning_error() -> None:
    with pytest.raises(PruningError, match="cannot trace"):
        prunable_layers(zoo.build("shufflenet_v2"), EXAMPLE)


# ---------------------------------------------------------------- command line


def _hwlat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwlat.cli", "quantize", *map(str, args)], capture_output=True, text=True
    )


def test_cli_quantizes_a_zoo_network(tmp_path) -> None:
    model = tmp_path / "mobilenet_v2.onnx"
    onnx.save(torch_to_onnx(zoo.build("mobilenet_v2"), (1, 3, 64, 64)), model)
    nodes = quantizable_nodes(model)
    first_conv = nodes[0]
    out = tmp_path / "mobilenet_v2-int8.onnx"
    result = _hwlat(model, "-o", out, "--random", 2, "--exclude", first_conv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: {len(nodes) - 1} of {len(nodes)} quantizable nodes")
    assert "1 left float32" in result.stdout
    assert _weight_sources(onnx.load(out))[first_conv] == "float32"
    feeds = [random_inputs(onnx.load(model), 0)]
    assert _outputs(out, feeds).shape == (1, 1000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random", "4"], "is not a readable ONNX model"),  # on a truncated file
        (["--random", "4", "--calibration", "x"], "do not go together"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(small_net_path, tmp_path, args, message) -> None:
    model = small_net_path
    if "--calibration" not in args:
        model = tmp_path / "truncated.onnx"
        model.write_bytes(small_net_path.read_bytes()[:500])
    result = _hwlat(model, "-o", tmp_path / "q.onnx", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hwlat: error:")
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no calibration data"),
        (["--random", "1", "--exclude", "nope"], "no quantizable node named 'nope'"),
    ],
)
def test_cli_argument_errors_in_process(small_net_path, tmp_path, capsys, args, message) -> None:
    assert main(["quantize", str(small_net_path), "-o", str(tmp_path / "q.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hwlat: error:") and message in err
