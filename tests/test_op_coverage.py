"""The CNN building blocks users have: each new op's model runs in ONNX Runtime with the shape
its OpSpec says, the splitter maps what torch's exporter writes for it, the ORT harness profiles
it (kernel nodes attributed, none of the harness), and an op no kernel describes is named
(strict) or estimated on the device's roofline and listed (lenient), never dropped."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwlat import cli as hwlat_cli
from hwlat import zoo
from hwlat.devices.device import local_device
from hwlat.predictors import Kernel, ModelSplitter, UnsupportedOpsError
from hwlat.predictors.building.profiling import KernelProfiler
from hwlat.predictors.kernels.fusion import FusionRules
from hwlat.predictors.models.roofline import Roofline, RooflineError
from hwlat.predictors.predictor import PredictorScopeError
from hwlat.profiler.backends.ort.harness import HARNESS_PREFIX
from hwlat.profiler.onnx_models import build_model, torch_to_onnx
from hwlat.profiler.onnx_models.graph import OnnxGraph
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.store import Store
from tests.synthetic import synthetic_predictor

NEW_OPS = [
    OpSpec("conv", (1, 16, 14, 14), out_channels=32, kernel=(1, 7), padding=(0, 3), activation="gelu"),
    OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=3, padding=2, dilation=2, groups=4),
    OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=3, padding=1, activation="mish"),
    OpSpec("deconv", (1, 16, 14, 14), out_channels=8, kernel=4, stride=2, padding=1, activation="relu"),
    OpSpec("gemm", (1, 49, 64), out_channels=128, activation="gelu"),
    OpSpec("gemm", (1, 7, 7, 64), out_channels=32),
    OpSpec("maxpool", (1, 16, 8, 6), kernel=(8, 6), stride=(8, 6)),
    OpSpec("avgpool", (1, 16, 14, 14), kernel=(1, 3), padding=(0, 1)),
    OpSpec("globalmaxpool", (1, 16, 7, 7)),
    OpSpec("slice", (1, 16, 7, 7), out_channels=8),
    OpSpec("bn", (1, 16, 7, 7)),
    OpSpec("layernorm", (1, 7, 7, 64)),
    OpSpec("softmax", (1, 49, 10)),
    OpSpec("pad", (1, 16, 7, 7), padding=1, mode="reflect"),
    OpSpec("resize", (1, 16, 7, 7), stride=2, mode="linear"),
    OpSpec("resize", (1, 16, 7, 7), stride=2),
    OpSpec("transpose", (1, 16, 7, 7), perm=(0, 2, 3, 1)),
    OpSpec("act", (1, 49, 64), activation="tanh"),
    OpSpec("act", (1, 16, 7, 7), activation="leakyrelu"),
    OpSpec("act", (1, 16, 7, 7), activation="elu"),
    OpSpec("act", (1, 16, 7, 7), activation="prelu"),
    OpSpec("instancenorm", (1, 16, 7, 7)),
    OpSpec("instancenorm", (1, 4, 196)),  # a group norm's core: (N, groups, C / groups * H * W)
    OpSpec("gemm", (1, 49, 64), out_channels=32, activation="prelu"),
    OpSpec("add", (1, 49, 64), broadcast="channel"),
    OpSpec("slice", (1, 16, 7, 7), out_channels=16),  # a whole-tensor copy (a ghost module's x[:, :c])
    # attention blocks and hand-written norms
    OpSpec("reduce", (1, 16, 7, 7), mode="mean"),
    OpSpec("reduce", (1, 16, 7, 7), mode="max"),
    OpSpec("reduce", (1, 16, 7, 7), mode="sum"),
    OpSpec("mul", (1, 16, 7, 5), broadcast="pixel"),
    OpSpec("mul", (1, 16, 7, 5), broadcast="row"),
    OpSpec("add", (1, 16, 7, 5), broadcast="column"),
    OpSpec("concat", (1, 16, 14, 1), parts=(7, 7), axis=2),
    OpSpec("split", (1, 16, 3, 14), parts=(9, 5), axis=3),
    OpSpec("slice", (1, 16, 14, 1), out_channels=7, axis=2),
    *(OpSpec("act", (1, 16, 7, 7), activation=a) for a in ("sqrt", "square", "exp", "log", "abs")),
    *(OpSpec("act", (1, 49, 16), activation=a) for a in ("neg", "reciprocal", "selu", "celu")),
    OpSpec("pixelshuffle", (1, 36, 5, 4), stride=3),
    OpSpec("pixelshuffle", (1, 4, 6, 8), stride=2, mode="down"),
]


@pytest.mark.parametrize("spec", NEW_OPS, ids=lambda s: s.key)
def test_op_model_runs_with_the_spec_shapes(spec: OpSpec) -> None:
    assert OpSpec.from_key(spec.key) == spec
    session = ort.InferenceSession(build_model(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.rand(*i.shape).astype(np.float32) for i in session.get_inputs()}
    outputs = session.run(None, feeds)
    assert tuple(outputs[0].shape) == spec.output_shapes[0]


def test_op_models_compute_what_torch_computes() -> None:
    """The exporter-shaped activations are the functions their names say."""
    x = np.linspace(-4, 4, 16 * 9, dtype=np.float32).reshape(1, 16, 3, 3)
    reference = {
        "gelu": nn.functional.gelu,
        "mish": nn.functional.mish,
        "tanh": torch.tanh,
        "leakyrelu": nn.functional.leaky_relu,
        "elu": nn.functional.elu,
        "prelu": nn.PReLU(16),  # torch's initial slope, 0.25 per channel, as the op model's
        "sqrt": torch.sqrt,  # NaN below zero on both sides
        "square": lambda t: t.pow(2),
        "exp": torch.exp,
        "log": torch.log,
        "abs": torch.abs,
        "neg": torch.neg,
        "reciprocal": torch.reciprocal,
        "selu": nn.functional.selu,
        "celu": nn.functional.celu,
    }
    for name, fn in reference.items():
        model = build_model(OpSpec("act", x.shape, activation=name))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = fn(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {"x0": x})[0], expected, atol=1e-5)


class _Blocks(nn.Module):
    """One of each block the zoo does not build, as users write them."""

    def __init__(self) -> None:
        super().__init__()
        self.asym = nn.Conv2d(16, 16, (1, 7), padding=(0, 3))
        self.dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 32)
        self.up = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.same = nn.Conv2d(16, 16, 3, stride=2)
        self.prelu = nn.PReLU(16)

    def forward(self, x: torch.Tensor):
        y = nn.functional.mish(nn.functional.gelu(self.asym(x)))
        y = self.dilated(self.bn(y + x))  # pre-activation: a batch norm no conv absorbs
        z = self.fc(self.ln(y.permute(0, 2, 3, 1))).softmax(-1)  # channels-last linear layer
        u = nn.functional.interpolate(self.up(y), scale_factor=2, mode="nearest")
        p = nn.functional.pad(y, (1, 1, 1, 1), mode="reflect")
        q = self.same(nn.functional.pad(y, (0, 1, 0, 1)))  # TF "same": a zero pad folded into the conv
        ghost = torch.cat([y, y], 1)[:, :16]  # a ghost module's slice
        whole = y[:, :16]  # a slice of every channel: a copy ONNX Runtime runs
        m = nn.functional.adaptive_max_pool2d(y, 1) + y.amax((2, 3), keepdim=True)
        return z, u, self.prelu(p), q, ghost, whole, m


def _split_strictly(module: nn.Module, shape: tuple[int, ...], expected: list[str]):
    """The module's export and its split: every expected kernel in it, no op unsupported or
    estimated on the roofline."""
    model = torch_to_onnx(module, shape)
    split = ModelSplitter(FusionRules("none")).split(model)
    keys = [k.kernel.key for k in split.kernels]
    for key in expected:
        assert key in keys, key
    assert not split.unsupported and not split.fallback
    return model, split


def test_splitter_maps_the_blocks_torch_exports() -> None:
    expected = [
        "conv-in:1x16x8x8-out:16-k:1x7-s:1-p:0x3-d:1-g:1-bias:1-act:gelu-dtype:float32",
        "act-in:1x16x8x8-act:mish-dtype:float32",
        "bn-in:1x16x8x8-dtype:float32",
        "conv-in:1x16x8x8-out:16-k:3-s:1-p:2-d:2-g:4-bias:1-act:none-dtype:float32",
        "transpose-in:1x16x8x8-perm:0+2+3+1-dtype:float32",
        "layernorm-in:1x8x8x16-dtype:float32",
        "gemm-in:1x8x8x16-out:32-bias:1-act:none-dtype:float32",
        "softmax-in:1x8x8x32-dtype:float32",
        "deconv-in:1x16x8x8-out:8-k:4-s:2-p:1-g:1-bias:1-act:none-dtype:float32",
        "resize-in:1x8x16x16-s:2-mode:nearest-dtype:float32",
        "pad-in:1x16x8x8-p:1-mode:reflect-dtype:float32",
        "act-in:1x16x10x10-act:prelu-dtype:float32",
        "conv-in:1x16x8x8-out:16-k:3-s:2-p:1-d:1-g:1-bias:1-act:none-dtype:float32",
        "concat-in:1x32x8x8-parts:16+16-dtype:float32",
        "slice-in:1x32x8x8-out:16-dtype:float32",
        "slice-in:1x16x8x8-out:16-dtype:float32",
        "maxpool-in:1x16x8x8-k:8-s:8-p:0-dtype:float32",
        "globalmaxpool-in:1x16x8x8-dtype:float32",
    ]
    model, split = _split_strictly(_Blocks(), (1, 16, 8, 8), expected)
    graph = OnnxGraph(model)
    accounted = {n for k in split.kernels for n in k.nodes} | set(split.glue_nodes)
    vanished = {n.op_type for n in graph.data_nodes if n.name not in accounted}
    assert vanished == {"Pad"}  # the zero pad folded into its conv


def test_a_model_from_torchs_default_exporter_splits_as_the_legacy_export(tmp_path, capsys) -> None:
    """torch.onnx.export's default is the dynamo exporter (onnxscript), which writes the weights
    to a file of their own next to the model: what a user hands over today."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 1, 1, groups=16),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    path = tmp_path / "default.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(1, 3, 64, 64),), path)
    splitter = ModelSplitter(FusionRules("none"))
    default = [k.kernel.key for k in splitter.split(path).kernels]
    legacy = [k.kernel.key for k in splitter.split(torch_to_onnx(module, (1, 3, 64, 64))).kernels]
    assert default == legacy
    assert default[0] == "conv-in:1x3x64x64-out:16-k:3-s:2-p:1-d:1-g:1-bias:1-act:relu-dtype:float32"
    (tmp_path / "default.onnx.data").unlink()  # the model copied without its weights
    status = hwlat_cli.main(["measure", str(path), "--db", str(tmp_path / "m.db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"hwlat: error: cannot read the weights of {path}")
    assert "keep the weights file the exporter wrote next to the model" in err[0]


class _Attention(nn.Module):
    """The attention blocks and hand-written norms users add to CNNs, as their papers' code
    writes them: CBAM (Woo et al. 2018), coordinate attention (Hou et al. 2021), ECA (Wang et
    al. 2020) and ConvNeXt's layer norm over channels (Liu et al. 2022)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.mid = nn.Conv2d(16, 8, 1)
        self.gate_h, self.gate_w = nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.scale, self.shift = nn.Parameter(torch.ones(16)), nn.Parameter(torch.zeros(16))

    def forward(self, x: torch.Tensor):
        n, c, h, w = x.shape
        m = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        cbam = x * torch.sigmoid(self.spatial(m))
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).permute(0, 1, 3, 2)], 2)
        yh, yw = torch.split(nn.functional.hardswish(self.mid(pooled)), [h, w], 2)
        coord = x * torch.sigmoid(self.gate_h(yh)) * torch.sigmoid(self.gate_w(yw.permute(0, 1, 3, 2)))
        y = nn.functional.adaptive_avg_pool2d(x, 1).squeeze(-1).transpose(-1, -2)
        eca = x * torch.sigmoid(self.eca(y).transpose(-1, -2).unsqueeze(-1))
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        norm = self.scale[:, None, None] * (x - u) / torch.sqrt(v + 1e-6) + self.shift[:, None, None]
        return cbam, coord, eca, norm


def test_splitter_maps_attention_blocks_and_hand_written_norms() -> None:
    expected = [
        "reduce-in:1x16x8x6-mode:mean-dtype:float32",
        "reduce-in:1x16x8x6-mode:max-dtype:float32",
        "concat-in:1x2x8x6-parts:1+1-dtype:float32",
        "conv-in:1x2x8x6-out:1-k:7-s:1-p:3-d:1-g:1-bias:0-act:sigmoid-dtype:float32",
        "mul-in:1x16x8x6-bcast:pixel-dtype:float32",
        "avgpool-in:1x16x8x6-k:1x6-s:1-p:0-dtype:float32",
        "concat-in:1x16x14x1-parts:8+6-axis:2-dtype:float32",
        "split-in:1x8x14x1-parts:8+6-axis:2-dtype:float32",
        "mul-in:1x16x8x6-bcast:row-dtype:float32",
        "mul-in:1x16x8x6-bcast:column-dtype:float32",
        "conv-in:1x1x1x16-out:1-k:1x3-s:1-p:0x1-d:1-g:1-bias:0-act:none-dtype:float32",
        "add-in:1x16x8x6-bcast:pixel-dtype:float32",
        "act-in:1x16x8x6-act:square-dtype:float32",
        "act-in:1x1x8x6-act:sqrt-dtype:float32",
    ]
    model, split = _split_strictly(_Attention(), (1, 16, 8, 6), expected)
    # every kernel's spec computes the shapes the graph has (what the harness will time)
    graph = OnnxGraph(model)
    for kernel in split.kernels:
        for node, op in zip(kernel.nodes, kernel.kernel.ops, strict=False):
            out = next(n.output[0] for n in graph.data_nodes if n.name == node)
            assert np.prod(graph.shapes[out]) == np.prod(op.output_shapes[0]), (node, op.key)


def test_pixel_shuffle_and_unshuffle_are_kernels_that_compute_what_torch_computes() -> None:
    """PixelShuffle is ONNX's DepthToSpace (CRD); PixelUnshuffle has no ONNX op, and torch
    writes it as a reshape to blocks, a transpose and a reshape back."""
    module = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2), nn.PixelUnshuffle(4))
    _, split = _split_strictly(
        module,
        (1, 8, 8, 12),
        [
            "pixelshuffle-in:1x32x8x12-s:2-mode:up-dtype:float32",
            "pixelshuffle-in:1x8x16x24-s:4-mode:down-dtype:float32",
        ],
    )
    assert len(split.kernels) == 3
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 12)).astype(np.float32)
    for mode, reference in (("up", nn.PixelShuffle(2)), ("down", nn.PixelUnshuffle(2))):
        model = build_model(OpSpec("pixelshuffle", x.shape, stride=2, mode=mode))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x0": x})[0], reference(torch.from_numpy(x)).numpy())


def test_a_batch_norm_after_a_linear_layer_is_a_kernel() -> None:
    """A face embedding ends in Linear -> BatchNorm1d: a batch norm on a (N, C) tensor."""
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32))
    keys = [
        k.kernel.key
        for k in ModelSplitter(FusionRules("none")).split(torch_to_onnx(module, (1, 4, 4, 4))).kernels
    ]
    assert keys == ["gemm-in:1x64-out:32-bias:1-act:none-dtype:float32", "bn-in:1x32-dtype:float32"]
    assert OpSpec.from_key(keys[1]).output_shapes == ((1, 32),)


def test_group_and_instance_norms_are_kernels() -> None:
    """torch writes GroupNorm as a reshape to (N, groups, rest), an InstanceNormalization, a
    reshape back and a per-channel multiply and add; InstanceNorm2d as one node."""
    module = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.InstanceNorm2d(32, affine=True)
    )
    split = ModelSplitter(FusionRules("none")).split(torch_to_onnx(module, (1, 16, 10, 10)))
    assert [k.kernel.key for k in split.kernels][1:] == [
        "instancenorm-in:1x8x400-dtype:float32",
        "mul-in:1x32x10x10-bcast:channel-dtype:float32",
        "add-in:1x32x10x10-bcast:channel-dtype:float32",
        "instancenorm-in:1x32x10x10-dtype:float32",
    ]


def _whole_slice_model(opset: int, end: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
    if opset < 10:  # Slice-1: the bounds are attributes
        bounds = []
        whole = helper.make_node("Slice", ["r"], ["c"], name="whole", starts=[0], ends=[end], axes=[1])
    else:
        bounds = [
            numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", end), ("a", 1))
        ]
        whole = helper.make_node("Slice", ["r", "s", "e", "a"], ["c"], name="whole")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        whole,
        helper.make_node("Relu", ["c"], ["y"], name="after"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=bounds)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [9, 11, 17])
@pytest.mark.parametrize("end, runs", [(8, True), (2**63 - 1, False)])
def test_a_whole_tensor_slice_is_a_copy_where_onnx_runtime_keeps_it(tmp_path, opset, end, runs) -> None:
    """ORT's EliminateSlice removes only Slices from 0 to INT64_MAX; the splitter agrees with the
    optimised graph ORT writes, and times a whole-tensor Slice with its true end (the exporter's
    ``x[:, :c]``) as a copy."""
    model = _whole_slice_model(opset, end)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    kept = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node].count("Slice")
    split = ModelSplitter(FusionRules("none")).split(model)
    assert kept == int(runs)
    assert [op.key for op in split.ops if op.op == "slice"] == (
        ["slice-in:1x8x16x16-out:8-dtype:float32"] if runs else []
    )


def test_a_gather_of_every_channel_is_a_copy_onnx_runtime_runs(tmp_path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gather", ["r", "i"], ["c"], name="all", axis=1),
        helper.make_node("Relu", ["c"], ["y"], name="after"),
    ]
    index = numpy_helper.from_array(np.arange(8, dtype=np.int64), "i")
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=[index]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert "Gather" in [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    split = ModelSplitter(FusionRules("none")).split(model)
    assert [op.key for op in split.ops if op.op == "slice"] == ["slice-in:1x8x16x16-out:8-dtype:float32"]


def test_harness_profiles_the_new_ops(tmp_path, quick_protocol) -> None:
    kernels = [Kernel((spec,)) for spec in NEW_OPS[::3]]
    with Store(tmp_path / "k.db") as store:
        report = KernelProfiler(local_device(), store, quick_protocol).measure(kernels)
        assert report.measured == len(kernels) and report.failed == 0
        rows = {m.key: m for m in store.measurements("local", "ort", "kernel")}
    for kernel in kernels:
        nodes = rows[kernel.key].extra["kernel_nodes"]
        assert nodes and not any(n["name"].startswith(HARNESS_PREFIX) for n in nodes), kernel.key
        assert rows[kernel.key].median_ms is not None and rows[kernel.key].median_ms >= 0


def _model_with(op_type: str, **attributes) -> object:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node(op_type, ["r"], ["y"], name="odd", **attributes),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lenient_estimates_unknown_ops_on_the_roofline() -> None:
    model = _model_with("LRN", size=3)
    predictor = synthetic_predictor(120)
    with pytest.raises(UnsupportedOpsError, match=r"LRN \(odd\)"):
        predictor.predict(model)
    predictor.roofline = None  # as a predictor trained before rooflines were fitted
    with pytest.raises(PredictorScopeError, match="no roofline"):
        predictor.predict(model, strict=False)
    predictor.meta["roofline"] = {"gflops": 10.0, "gbps": 2.0}
    predictor.roofline = Roofline.from_dict(predictor.meta["roofline"])
    pred = predictor.predict(model, strict=False)
    [odd] = pred.unsupported_ops
    assert odd["node"] == "odd" and odd["op_type"] == "LRN"
    # 2 x 8x16x16 float32 tensors moved at 2 GB/s, more than 2048 FLOPs at 10 GFLOP/s
    assert odd["latency_ms"] == pytest.approx(2 * 4 * 2048 / 2e6)
    relu = [k for k in pred.kernels if k.source != "roofline"]
    assert pred.latency_ms == pytest.approx(sum(k.latency_ms for k in relu) + odd["latency_ms"])


def test_ops_after_an_unknown_op_keep_their_shapes() -> None:
    """Torch writes GroupNorm as InstanceNormalization between Reshapes whose target is computed,
    where ONNX's whole-graph shape inference stops; the schema of an op no kernel describes
    (a CumSum) still gives its output shape, so what follows it is mapped to kernels, not
    estimated on an unknown shape."""

    class CumSum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1)

    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.GroupNorm(4, 16),
        nn.Conv2d(16, 64, 3, 1, 1),
        CumSum(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    model = torch_to_onnx(net, (1, 3, 32, 32))
    graph = OnnxGraph(model)
    [cumsum] = [n for n in graph.data_nodes if n.op_type == "CumSum"]
    assert cumsum.output[0] not in graph.inferred and graph.shapes[cumsum.output[0]] == (1, 64, 16, 16)
    split = ModelSplitter(strict=False).split(model)
    assert {f.op_type for f in split.fallback} == {"CumSum"}
    assert all(f.bytes_moved > 0 for f in split.fallback)
    assert [k.kernel.op for k in split.kernels][-2:] == ["globalavgpool", "gemm"]


def test_cli_predict_lenient_lists_unsupported_ops(tmp_path, capsys) -> None:
    import onnx

    predictor = synthetic_predictor(120)
    predictor.meta["roofline"] = {"gflops": 10.0, "gbps": 2.0}
    path = predictor.save(tmp_path / "p.json")
    model_path = tmp_path / "odd.onnx"
    onnx.save(_model_with("LRN", size=3), model_path)
    base = ["predict", str(model_path), "--predictor", str(path), "--json"]
    assert hwlat_cli.main(base) == 2
    assert "hwlat: error:" in capsys.readouterr().err
    assert hwlat_cli.main([*base, "--lenient"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [u["op_type"] for u in out["unsupported_ops"]] == ["LRN"]
    assert out["latency_ms"] > out["unsupported_ops"][0]["latency_ms"] > 0


def test_roofline_fit_reads_the_device_limits() -> None:
    conv = Kernel((OpSpec("conv", (1, 64, 28, 28), out_channels=64, kernel=3, padding=1),))
    add = Kernel((OpSpec("add", (1, 64, 56, 56)),))
    roofline = Roofline.fit([conv, add], [conv.head.flops / 20e6, add.bytes_moved / 5e6])
    assert roofline.gflops == pytest.approx(20.0) and roofline.gbps == pytest.approx(5.0)
    with pytest.raises(RooflineError):
        Roofline.fit([conv], [1.0])


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_cnn_families_outside_the_zoo_map_strictly(name: str, family_paths) -> None:
    """Every family of the never-seen benchmark is answered without --lenient: all its ops known."""
    split = ModelSplitter(FusionRules("none")).split(family_paths[name])
    assert split.kernels and not split.unsupported and not split.fallback
