"""Peak memory: liveness over graphs, the footprint of spaces and ONNX files, measured peaks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hwlat import zoo
from hwlat.devices.device import local_device
from hwlat.predictors.metrics import memory_accuracy, memory_summary
from hwlat.predictors.models.arena import arena_held_bytes
from hwlat.predictors.models.memory import MemoryModel, liveness_peak, onnx_footprint
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.onnx_models import make_model
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.search import get_space


def test_a_residual_input_stays_alive_across_its_block() -> None:
    # x -> a -> b -> add(b, x): x is read last by the add, so x, a and b are alive together at b.
    steps = [("a", ["x"], ["a"]), ("b", ["a"], ["b"]), ("add", ["b", "x"], ["y"])]
    sizes = {"x": 10, "a": 20, "b": 30, "y": 10}
    assert liveness_peak(steps, sizes, ["x"], ["y"]) == (60, "b")
    no_skip = [("a", ["x"], ["a"]), ("b", ["a"], ["b"]), ("c", ["b"], ["y"])]
    assert liveness_peak(no_skip, sizes, ["x"], ["y"]) == (50, "b")  # x freed after a


def test_onnx_footprint_counts_weights_at_their_dtype_and_runs_activations_in_place() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 3, 3], [0.1] * 576)
    model = make_model(
        helper.make_graph(
            [
                helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["c"], ["y"]),
            ],
            "g",
            [x],
            [y],
            initializer=[w],
        )
    )
    f = onnx_footprint(model)
    assert f.weight_bytes == 576 * 4
    assert f.activation_peak_bytes == 2 * 8 * 16 * 16 * 4  # x and c; the Relu writes in place


def _qdq_conv(out_channels: int) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv 3x3 (int8 weights, zero point 0) -> Q -> DQ -> y, on 8 channels."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 16, 16])
    scale, zero = (
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("z", TensorProto.UINT8, [], [128]),
    )
    wzero = helper.make_tensor("wz", TensorProto.INT8, [], [0])
    w = helper.make_tensor("w", TensorProto.INT8, [out_channels, 8, 3, 3], [1] * out_channels * 72)
    return make_model(
        helper.make_graph(
            [
                helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                helper.make_node("DequantizeLinear", ["w", "s", "wz"], ["wd"]),
                helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
                helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"]),
            ],
            "g",
            [x],
            [y],
            initializer=[scale, zero, wzero, w],
        )
    )


def test_onnx_footprint_of_a_qdq_conv_counts_the_8_bit_tensors_and_the_kernels_scratch() -> None:
    """ORT runs Q, one 8-bit conv and the final DQ; the conv holds scratch while it runs."""
    pixels = 16 * 16
    f = onnx_footprint(_qdq_conv(8))
    assert f.weight_bytes == 576 + 4 + 1 + 1
    # 8 output channels are too few for the symmetric kernel: an int32 output and an im2col copy
    scratch = 4 * 8 * pixels + 8 * 9 * pixels
    assert f.activation_peak_bytes == 8 * pixels + 8 * pixels + scratch  # xq, c (8-bit) and scratch
    assert f.peak_node == "Conv"
    # 16 output channels take the symmetric kernel: one pointer per tap and output pixel
    f = onnx_footprint(_qdq_conv(16))
    assert f.activation_peak_bytes == 8 * pixels + 16 * pixels + 8 * 9 * pixels


def test_onnx_footprint_follows_the_runtimes_fused_activations_and_conv_sums() -> None:
    """SiLU (x * sigmoid(x)) is one kernel, and a conv followed by a residual Add writes into
    the residual operand when the Add is that operand's last reader. Node by node, a, s and r
    would be alive at the Mul, and c, r and y at the Add: three tensors, not two."""
    shape = [1, 8, 16, 16]
    size = 8 * 16 * 16 * 4
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1], [0.1] * 64)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["r"]),  # SiLU: r is written, s is not
        helper.make_node("Conv", ["r", "w"], ["c"]),
        helper.make_node("Add", ["c", "r"], ["y"]),  # c is never written: the conv adds into r
    ]
    f = onnx_footprint(make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[w])))
    assert f.activation_peak_bytes == 2 * size  # x and a, then a and r, then r alone


def test_the_arena_holds_its_first_runs_regions_and_the_memory_patterns_block() -> None:
    """a (0.5 MB) and b (1.5 MB) alive together, then a small y. The first run puts a in a
    1 MB region and b in a 2 MB one (regions double); y goes beside a. The memory pattern's
    block (a, b and y: 2 MB and 256 bytes) fits no free chunk, so a 4 MB region holds it from
    the second run on. About twice the 2 MB liveness peak stays resident."""
    mb, page = 2**20, 4096
    steps = [("a", ["x"], ["a"]), ("b", ["a"], ["b"]), ("c", ["a", "b"], ["y"])]
    sizes = {"x": mb, "a": mb // 2, "b": 3 * mb // 2, "y": 256}
    assert liveness_peak(steps, sizes, ["x"], ["y"])[0] == 2 * mb + 256
    first_run = (mb // 2 + page) + 3 * mb // 2  # a and y's page in the first region, b in the second
    assert arena_held_bytes(steps, sizes, ["x"], ["y"]) == first_run + 2 * mb + page


@pytest.mark.parametrize("name", ["proxyless", "ofa_mbv3", "fbnet"])
def test_a_space_footprint_equals_that_of_its_exported_onnx(name) -> None:
    space = get_space(name)
    rng = np.random.default_rng(1)
    for _ in range(2):
        arch = space.sample(rng)
        ours, exported = space.footprint(arch), onnx_footprint(space.to_onnx(arch))
        assert ours.weight_bytes == exported.weight_bytes
        assert ours.activation_peak_bytes == exported.activation_peak_bytes
        assert ours.arena_bytes == exported.arena_bytes


def test_memory_model_recovers_its_terms_and_stays_bounded_with_few_points() -> None:
    from hwlat.predictors.models.memory import Footprint

    rng = np.random.default_rng(0)
    feet = [Footprint(int(rng.uniform(1, 50) * 2**20), int(rng.uniform(1, 10) * 2**20)) for _ in range(12)]
    measured = [20 + 2.5 * f.weights_mb + 1.5 * f.activations_mb for f in feet]
    model = MemoryModel().fit(feet, measured)
    assert model.offset_mb == pytest.approx(20, abs=1e-6) and model.weight_scale == pytest.approx(2.5)
    few = MemoryModel().fit(feet[:2], measured[:2])
    assert few.weight_scale == 1.0 and few.fitted_on == 2  # the offset only
    # with the arena on, the activation term is what the arena holds (here twice the peak)
    held = [Footprint(f.weight_bytes, f.activation_peak_bytes, "", 2 * f.activation_peak_bytes) for f in feet]
    arena = MemoryModel(arena=True).fit(held, measured)
    assert arena.activation_scale == pytest.approx(0.75) and arena.predict_mb(held[0]) == pytest.approx(
        measured[0]
    )
    assert MemoryModel.from_dict(arena.to_dict()) == arena
    before = {k: v for k, v in model.to_dict().items() if k != "arena"}  # a file from before
    assert not MemoryModel.from_dict(before).arena


def test_measured_peak_memory_is_the_models_own_with_and_without_the_arena(tmp_path) -> None:
    """A bigger model needs more; the peaks are the model's, read in a fresh process by phase."""
    paths = zoo.export_all(tmp_path, ["squeezenet_1_1", "resnet18"])
    with Store(tmp_path / "m.db") as store:
        for arena in (True, False):
            device = local_device()
            device = type(device)(**{**device.__dict__, "memory_arena": arena})
            small, big = Campaign(
                device, "ort", store, TimingProtocol.quick(), show_progress=False
            ).measure_models(paths)
            assert small.settings["memory_arena"] is arena
            for m in (small, big):
                assert m.baseline_rss_mb < 200 and m.peak_rss_mb > m.baseline_rss_mb
                assert m.load_peak_rss_mb >= m.loaded_rss_mb > m.baseline_rss_mb  # loading's copies are freed
            grow = [m.model_rss_mb for m in (small, big)]
            assert grow[1] > grow[0] + 30  # resnet18 holds 45 MB of weights, squeezenet 5 MB


def test_memory_accuracy_counts_within_ten_percent_and_leaves_out_sub_megabyte_models():
    report = memory_accuracy([10.5, 30.0, 0.5], [10.0, 20.0, 0.2], ["a", "b", "tiny"])
    assert report["n"] == 2 and [r["name"] for r in report["rows"]] == ["a", "b"]
    assert report["within_10"] == 0.5
    assert report["bias_pct"] == pytest.approx(100 * (0.05 + 0.5) / 2)
    assert "within +-10% 50.0%" in memory_summary(report)
    assert memory_accuracy([1.0], [0.5], ["tiny"])["n"] == 0
