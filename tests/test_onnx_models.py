"""Every op type builds a checked ONNX model that ONNX Runtime runs and that matches torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from hwlat.profiler.onnx_models import (
    OPSET,
    ModelFileError,
    build_model,
    load_model,
    model_path,
    random_inputs,
)
from hwlat.profiler.opspec import OpSpec
from tests.test_opspec import all_kinds

ACT = {
    "none": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "swish": F.silu,
    "sigmoid": torch.sigmoid,
}


def reference(spec: OpSpec, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The op computed with torch from the model's own weights."""
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    for name in ("w", "b"):  # weights="dequantized": 8-bit constants, one scale per output channel
        if f"{name}_q" in w:
            scale = w[f"{name}_scale"].reshape(-1, *[1] * (w[f"{name}_q"].dim() - 1))
            w[name] = (w[f"{name}_q"].double() * scale.double()).float()
    xs = [torch.from_numpy(feeds[f"x{i}"]) for i in range(len(spec.input_shapes))]
    x = xs[0]
    act = ACT[spec.activation]
    if spec.op == "conv":
        out = [act(F.conv2d(x, w["w"], w.get("b"), spec.stride, spec.padding, spec.dilation, spec.groups))]
    elif spec.op == "gemm":
        out = [act(F.linear(x, w["w"], w.get("b")))]
    elif spec.op == "maxpool":
        out = [F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)]
    elif spec.op == "avgpool":
        out = [F.avg_pool2d(x, spec.kernel, spec.stride, spec.padding, count_include_pad=False)]
    elif spec.op == "globalavgpool":
        out = [x.mean(dim=(2, 3), keepdim=True)]
    elif spec.op == "add":
        out = [x + xs[1]]
    elif spec.op == "mul":
        out = [x * xs[1]]
    elif spec.op == "concat":
        out = [torch.cat(xs, dim=1)]
    elif spec.op == "split":
        out = list(torch.split(x, list(spec.parts), dim=1))
    elif spec.op == "shuffle":
        n, c, h, wd = x.shape
        out = [x.view(n, spec.groups, c // spec.groups, h, wd).transpose(1, 2).reshape(n, c, h, wd)]
    elif spec.op == "act":
        out = [act(x)]
    else:
        raise AssertionError(spec.op)
    return [o.numpy() for o in out]


@pytest.mark.parametrize("spec", all_kinds(), ids=lambda s: s.key)
def test_op_model_runs_and_matches_reference(spec: OpSpec) -> None:
    model = build_model(spec)
    assert model.opset_import[0].version == OPSET
    assert model.doc_string == spec.key
    feeds = random_inputs(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    want = reference(spec, model, feeds)
    assert len(got) == len(want) == len(spec.output_shapes)
    for g, r, shape in zip(got, want, spec.output_shapes, strict=True):
        assert g.shape == shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_conv_has_batch_norm_folded_and_activation_as_exported() -> None:
    spec = OpSpec("conv", (1, 16, 28, 28), out_channels=32, kernel=3, padding=1, activation="swish")
    ops = [n.op_type for n in build_model(spec).graph.node]
    assert ops == ["Conv", "Sigmoid", "Mul"]
    assert "BatchNormalization" not in ops


def test_model_path_is_cached_by_key(tmp_path) -> None:
    spec = OpSpec("add", (1, 8, 4, 4))
    first = model_path(spec, tmp_path)
    mtime = first.stat().st_mtime_ns
    again = model_path(spec, tmp_path)
    assert again == first and again.stat().st_mtime_ns == mtime
    onnx.checker.check_model(onnx.load(str(first)))


def _bad_model_files(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(build_model(OpSpec("conv", (1, 8, 8, 8), out_channels=8, kernel=3, padding=1)), good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "text": b"this is not a model\n",
        "random": np.random.default_rng(0).bytes(300),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(content)
    paths["folder"] = tmp_path / "folder.onnx"
    paths["folder"].mkdir()
    paths["missing"] = tmp_path / "missing.onnx"
    return good, paths


def test_load_model_names_the_file_for_every_kind_of_bad_file(tmp_path) -> None:
    good, paths = _bad_model_files(tmp_path)
    assert load_model(good).graph.node
    for name, path in paths.items():
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        assert str(path) in str(info.value), name
