"""One error root: bad input gives one ``hwlat: error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from hwlat.errors import EXIT_ERROR, HwlatError
from hwlat.profiler.onnx_models import make_model
from tests.synthetic import synthetic_predictor

ROOT = Path(__file__).resolve().parents[1]


def hwlat(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwlat.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_ERROR, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("hwlat: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory) -> Path:
    return synthetic_predictor().save(tmp_path_factory.mktemp("pred") / "p.json")


def test_every_error_class_derives_from_the_root() -> None:
    import hwlat.devices.ssh
    import hwlat.predictors.building
    import hwlat.search.study  # noqa: F401  (loads every package's errors)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    names = {c.__name__ for c in subclasses(HwlatError)}
    expected = {
        "DeviceError",
        "InventoryError",
        "InvalidOpSpecError",
        "StoreError",
        "UnsupportedOpsError",
        "ModelFileError",
        "PredictorFormatError",
        "ConfigError",
        "StudyMismatchError",
        "InfeasibleBudgetError",
        "AuthenticationFailed",
        "HostKeyUnknown",
    }
    assert expected <= names
    assert all(
        name.endswith(
            (
                "Error",
                "Failed",
                "Lost",
                "Missing",
                "Unknown",
                "Changed",
                "Unresolved",
                "Refused",
                "Timeout",
                "Unreachable",
            )
        )
        for name in names
    ), names


def test_predict_a_truncated_model_file(tmp_path, predictor_file) -> None:
    broken = tmp_path / "broken.onnx"
    model = make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        )
    )
    broken.write_bytes(model.SerializeToString()[:20])
    assert_one_error_line(
        hwlat("predict", str(broken), "--predictor", str(predictor_file), cwd=tmp_path), str(broken)
    )
    for bad in ("empty.onnx", "folder.onnx"):
        path = tmp_path / bad
        path.mkdir() if bad == "folder.onnx" else path.write_bytes(b"")
        assert_one_error_line(
            hwlat("predict", str(path), "--predictor", str(predictor_file), cwd=tmp_path), str(path)
        )


def test_devices_list_with_a_malformed_inventory(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('devices = "x"\n')
    assert_one_error_line(hwlat("devices", "list", "--inventory", str(bad), cwd=tmp_path), str(bad))


def test_predict_a_model_with_an_op_the_splitter_does_not_know(tmp_path, predictor_file) -> None:
    model = make_model(
        helper.make_graph(
            [
                helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                helper.make_node("LRN", ["c"], ["y"], name="my_lrn", size=3),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
            initializer=[helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 3, 3], [0.1] * 576)],
        )
    )
    path = tmp_path / "lrn.onnx"
    path.write_bytes(model.SerializeToString())
    proc = hwlat("predict", str(path), "--predictor", str(predictor_file), cwd=tmp_path)
    assert_one_error_line(proc, "LRN (my_lrn)", "--lenient")
    lenient = hwlat("predict", str(path), "--predictor", str(predictor_file), "--lenient", cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr


def test_a_missing_predictor_file_and_a_bad_budget(tmp_path) -> None:
    assert_one_error_line(
        hwlat(
            "search",
            "--space",
            "proxyless",
            "--predictor",
            "nope.json",
            "--latency-ms",
            "5",
            "-o",
            "s",
            cwd=tmp_path,
        ),
        "nope.json",
    )
