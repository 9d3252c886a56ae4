"""OpSpec: keys round-trip, JSONL in and out, costs, and clear errors for bad specs."""

from __future__ import annotations

import itertools
import json

import pytest

from hwlat.profiler.opspec import (
    BROADCASTS,
    InvalidOpSpecError,
    OpSpec,
    broadcast_kind,
    broadcast_operand,
    read_jsonl,
    write_jsonl,
)


def all_kinds() -> list[OpSpec]:
    acts = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "swish", "sigmoid")
    specs = [
        OpSpec(
            "conv",
            (1, 16, 28, 28),
            out_channels=c,
            kernel=k,
            stride=s,
            padding=k // 2,
            groups=g,
            bias=b,
            activation=a,
        )
        for (k, s, g, b), a, c in itertools.product(
            [(1, 1, 1, True), (3, 2, 1, False), (5, 1, 16, True), (7, 2, 16, False)], acts, (16, 32)
        )
    ]
    specs += [
        OpSpec("conv", (1, 8, 20, 20), out_channels=8, kernel=3, padding=2, dilation=2),
        OpSpec("gemm", (1, 1280), out_channels=1000),
        OpSpec("gemm", (4, 64), out_channels=10, bias=False, activation="relu"),
        OpSpec("maxpool", (1, 64, 112, 112), kernel=3, stride=2, padding=1),
        OpSpec("avgpool", (1, 32, 14, 14), kernel=2, stride=2),
        OpSpec("globalavgpool", (1, 960, 7, 7)),
        OpSpec("add", (1, 24, 56, 56)),
        OpSpec("mul", (1, 96, 14, 14), broadcast="channel"),
        OpSpec("add", (1, 96, 14, 14), broadcast="channel"),
        OpSpec("concat", (1, 232, 14, 14), parts=(116, 116)),
        OpSpec("concat", (1, 30, 7, 7), parts=(10, 8, 12)),
        OpSpec("split", (1, 232, 14, 14), parts=(116, 116)),
        OpSpec("shuffle", (1, 232, 14, 14), groups=2),
        *(OpSpec("act", (1, 32, 14, 14), activation=a) for a in acts[1:]),
        OpSpec("conv", (1, 32, 14, 14), out_channels=32, kernel=3, padding=1, weights="dequantized"),
    ]
    return specs


@pytest.mark.parametrize("spec", all_kinds(), ids=lambda s: s.key)
def test_key_round_trips(spec: OpSpec) -> None:
    again = OpSpec.from_key(spec.key)
    assert again == spec
    assert again.key == spec.key
    assert hash(again) == hash(spec)
    assert OpSpec.from_dict(spec.to_dict()) == spec


def test_key_is_human_readable() -> None:
    spec = OpSpec(
        "conv", (1, 16, 112, 112), out_channels=24, kernel=3, stride=2, padding=1, activation="relu6"
    )
    assert spec.key == "conv-in:1x16x112x112-out:24-k:3-s:2-p:1-d:1-g:1-bias:1-act:relu6-dtype:float32"


def test_a_conv_shows_its_weight_source_only_when_not_constant() -> None:
    """Adding ``weights`` kept every stored key as it was."""
    spec = OpSpec("conv", (1, 16, 56, 56), out_channels=24)
    assert spec.key == "conv-in:1x16x56x56-out:24-k:1-s:1-p:0-d:1-g:1-bias:1-act:none-dtype:float32"
    dequantized = OpSpec("conv", (1, 16, 56, 56), out_channels=24, weights="dequantized")
    assert dequantized.key == spec.key.replace("-dtype:", "-w:dequantized-dtype:") and dequantized != spec


def test_irrelevant_fields_do_not_change_identity() -> None:
    assert OpSpec("add", (1, 8, 4, 4), kernel=5, out_channels=3) == OpSpec("add", (1, 8, 4, 4))


def test_jsonl_round_trip(tmp_path) -> None:
    path = tmp_path / "ops.jsonl"
    specs = all_kinds()
    write_jsonl(specs, path)
    assert read_jsonl(path) == specs
    path.write_text("# comment\n\n" + json.dumps({"key": specs[0].key}) + "\n")
    assert read_jsonl(path) == specs[:1]


def test_costs_of_a_known_conv() -> None:
    spec = OpSpec("conv", (1, 64, 56, 56), out_channels=64, kernel=3, padding=1, bias=False)
    assert spec.output_shapes == ((1, 64, 56, 56),)
    assert spec.params == 64 * 64 * 9
    assert spec.flops == 2 * 64 * 56 * 56 * 64 * 9
    assert spec.bytes_moved == 4 * (2 * 64 * 56 * 56 + 64 * 64 * 9)


def test_costs_of_a_depthwise_conv_and_gemm() -> None:
    dw = OpSpec("conv", (1, 32, 28, 28), out_channels=32, kernel=3, stride=2, padding=1, groups=32)
    assert dw.output_shapes == ((1, 32, 14, 14),)
    assert dw.params == 32 * 9 + 32
    assert dw.flops == 2 * 32 * 14 * 14 * 9 + 32 * 14 * 14
    fc = OpSpec("gemm", (1, 1280), out_channels=1000)
    assert fc.params == 1280 * 1000 + 1000
    assert fc.flops == 2 * 1000 * 1280 + 1000
    assert OpSpec("split", (1, 8, 4, 4), parts=(3, 5)).output_shapes == ((1, 3, 4, 4), (1, 5, 4, 4))
    assert OpSpec("mul", (1, 8, 4, 4), broadcast="channel").input_shapes[1] == (1, 8, 1, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(op="conv", input_shape=(1, 6, 8, 8), out_channels=4, groups=4), "groups=4 must divide"),
        (dict(op="conv", input_shape=(1, 6, 3, 3), out_channels=4, kernel=7), "larger than the padded input"),
        (dict(op="conv", input_shape=(1, -3, 8, 8), out_channels=4), "size <= 0"),
        (dict(op="conv", input_shape=(1, 3, 8, 8), out_channels=0), "out_channels=0"),
        (dict(op="conv", input_shape=(1, 3, 8, 8), out_channels=4, padding=-1), "padding=-1"),
        (dict(op="conv", input_shape=(1, 3, 8), out_channels=4), "4 dimensions"),
        (dict(op="lstm", input_shape=(1, 3, 8, 8)), "unknown op type 'lstm'"),
        (dict(op="act", input_shape=(1, 3, 8, 8), activation="srelu"), "unknown activation 'srelu'"),
        (dict(op="act", input_shape=(1, 3, 8, 8)), "needs act other than 'none'"),
        (dict(op="concat", input_shape=(1, 8, 4, 4), parts=(3, 4)), "sum to 7"),
        (dict(op="shuffle", input_shape=(1, 9, 4, 4), groups=2), "groups=2 must be >= 2 and divide"),
        (dict(op="maxpool", input_shape=(1, 4, 8, 8), kernel=3, padding=2), "at most half the kernel"),
        (dict(op="gemm", input_shape=(1, 4), out_channels=3, dtype="float16"), "dtype 'float16'"),
        (dict(op="conv", input_shape=(1, 4, 8, 8), out_channels=4, weights="packed"), "unknown weights"),
        (
            dict(op="conv", input_shape=(1, 4, 8, 8), out_channels=4, weights="runtime"),
            "marks an 8-bit conv",
        ),
        (
            dict(op="conv", input_shape=(1, 4, 8, 8), out_channels=4, weights="dequantized", dtype="int8"),
            "marks a float32 conv",
        ),
    ],
)
def test_invalid_specs_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidOpSpecError, match=message):
        OpSpec(**kwargs)


@pytest.mark.parametrize(
    "key, message",
    [
        ("conv-in:1x3x8x8-out:4", "missing fields"),
        ("pool-in:1x3x8x8", "unknown op type 'pool'"),
        ("add-in:1x3x8x8-bcast:none-dtype:float32-k:3", "unexpected fields"),
        ("add-in:1xAx8x8-bcast:none-dtype:float32", "bad value '1xAx8x8'"),
        ("add-in:1x3x8x8-bcast-dtype:float32", "expected NAME:VALUE"),
    ],
)
def test_bad_keys(key: str, message: str) -> None:
    with pytest.raises(InvalidOpSpecError, match=message):
        OpSpec.from_key(key)


def test_bad_jsonl_names_the_line(tmp_path) -> None:
    path = tmp_path / "ops.jsonl"
    path.write_text('{"op": "add", "input_shape": [1, 3, 4, 4]}\n{"op": "add", "input_shape": [1, 3]\n')
    with pytest.raises(InvalidOpSpecError, match=r"ops.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"op": "add", "input_shape": [1, 3, 4, 4], "colour": "red"}\n')
    with pytest.raises(InvalidOpSpecError, match=r"ops.jsonl:1: unknown OpSpec fields \['colour'\]"):
        read_jsonl(path)


def test_broadcast_kind_reads_back_each_operand_shape_and_a_degenerate_one_as_none() -> None:
    shape = (1, 16, 7, 5)
    for kind in BROADCASTS:
        operand = broadcast_operand(kind, shape)
        assert broadcast_kind(shape, operand) == kind
        assert broadcast_kind(shape, operand[1:]) == kind  # numpy's leading ones
        assert OpSpec("mul", shape, broadcast=kind).input_shapes == (shape, operand)
    assert broadcast_kind((1, 16, 1, 1), (16, 1, 1)) == "none"  # every kind fits: no broadcast at all
    assert broadcast_kind((1, 7, 16), (16,)) == "channel" and broadcast_kind((1, 7, 16), (7, 1)) is None
    assert broadcast_kind(shape, (2, 16, 1, 1)) is None  # another batch
