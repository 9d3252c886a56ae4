"""The TVM backend end to end: real TVM, real MetaSchedule, real agent, real sshd.

Correctness is checked on untuned builds (seconds each); the tests that tune use two
trials per kernel, enough to exercise tuning, the shared database and the tuned build.
One session-wide cache (tests/conftest.py) lets the tuned canary be reused across tests.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hwlat import cli as hwlat_cli
from hwlat.devices.device import Device, local_device
from hwlat.profiler.backends.tvm.backend import TvmBackend, TvmUntunedBackend
from hwlat.profiler.backends.tvm.target import TvmTargetError, cross_compiler, device_target, parse_target
from hwlat.profiler.backends.tvm.tune import load_tvm
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.onnx_models import build_model, random_inputs
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

TRIALS = 2
# Its element count overflows int64: TVM refuses to compile it (ONNX Runtime cannot run it either).
UNCOMPILABLE = OpSpec("add", (1, 2**20, 2**22, 2**22))
OPS = [
    OpSpec("conv", (1, 16, 14, 14), out_channels=24, kernel=3, stride=2, padding=1, activation="relu6"),
    OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=5, padding=2, groups=16, activation="hardswish"),
    OpSpec(
        "conv",
        (2, 8, 9, 9),
        out_channels=12,
        kernel=3,
        padding=1,
        dilation=2,
        groups=4,
        bias=False,
        activation="swish",
    ),
    OpSpec("gemm", (1, 64), out_channels=10, activation="sigmoid"),
    OpSpec("maxpool", (1, 8, 15, 15), kernel=3, stride=2, padding=1),
    OpSpec("avgpool", (1, 8, 15, 15), kernel=3, stride=2, padding=1),
    OpSpec("globalavgpool", (1, 32, 7, 7)),
    OpSpec("mul", (1, 16, 14, 14), broadcast="channel"),
    OpSpec("concat", (1, 12, 7, 7), parts=(4, 8)),
    OpSpec("split", (1, 12, 7, 7), parts=(5, 7)),
    OpSpec("shuffle", (1, 16, 7, 7), groups=4),
    OpSpec("act", (1, 16, 7, 7), activation="hardsigmoid"),
]


def run_library(path: Path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """Run a compiled library's ``main`` in this process."""
    tvm = load_tvm()
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in feeds])
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def assert_matches_onnxruntime(library: Path, model: onnx.ModelProto) -> None:
    feeds = random_inputs(model)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    got = run_library(library, [feeds[i.name] for i in model.graph.input if i.name in feeds])
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def host_cpu_target() -> str:
    return f"llvm -mcpu={load_tvm().target.codegen.llvm_get_system_cpu()}"


def tiny_cnn_onnx(path: Path) -> Path:
    """Three kernels (conv+relu, mean, linear): a model that tunes in seconds."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    torch.onnx.export(Net().eval(), torch.randn(1, 3, 16, 16), str(path), dynamo=False)
    return path


def small_cnn_onnx(path: Path) -> Path:
    """A MobileNet-like stem: conv-BN-ReLU6, depthwise, pointwise, residual add, pool, linear."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
            self.block = nn.Sequential(
                nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False),
                nn.BatchNorm2d(8),
                nn.ReLU6(),
                nn.Conv2d(8, 8, 1, bias=False),
                nn.BatchNorm2d(8),
            )
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.block(x)
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    torch.onnx.export(net, torch.randn(1, 3, 32, 32), str(path), dynamo=False, input_names=["x"])
    return path


@pytest.mark.parametrize("spec", OPS, ids=lambda s: s.op)
def test_compiled_ops_agree_with_onnxruntime(spec: OpSpec) -> None:
    library = TvmUntunedBackend(local_device()).artifact(spec)
    assert_matches_onnxruntime(library, build_model(spec))


def test_a_small_model_agrees_with_onnxruntime(tmp_path) -> None:
    path = small_cnn_onnx(tmp_path / "cnn.onnx")
    library = TvmUntunedBackend(local_device()).model_artifact(path)
    assert_matches_onnxruntime(library, onnx.load(str(path)))


def test_tuning_fills_a_database_that_later_builds_reuse(tmp_path) -> None:
    spec = OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=3, padding=1, activation="relu")
    backend = TvmBackend(local_device(), tune_trials=TRIALS)
    library = backend.artifact(spec)
    record = backend.records[spec.key]
    assert (record.tasks, record.tuned_tasks, record.cached) == (1, 1, False)
    assert record.tune_s > 0 and record.compile_s > 0
    assert_matches_onnxruntime(library, build_model(spec))

    again = TvmBackend(local_device(), tune_trials=TRIALS)
    assert again.artifact(spec) == library and again.records[spec.key].cached
    # The same kernel inside a "model" is found in the database: compiled, not tuned again.
    model_path = tmp_path / "same-conv.onnx"
    onnx.save(build_model(spec), model_path)
    again.model_artifact(model_path)
    assert again.records[f"model:{model_path}"].tuned_tasks == 0


def test_an_op_that_cannot_be_built_fails_alone_and_the_campaign_goes_on(tmp_path, quick_protocol) -> None:
    """An op TVM could not compile (its sizes exceed int64) is now refused before it is built:
    no host has the memory for it. Either way it is one failed row and the campaign goes on."""
    specs = [OpSpec("add", (1, 8, 14, 14)), UNCOMPILABLE, OpSpec("globalavgpool", (1, 8, 14, 14))]
    with Store(tmp_path / "m.db") as store:
        report = Campaign(local_device(), "tvm-untuned", store, quick_protocol, show_progress=False).run(
            specs
        )
        assert (report.measured, report.failed) == (2, 1)
        failed = store.get("local", "tvm-untuned", UNCOMPILABLE.key)
        ok = store.get("local", "tvm-untuned", specs[0].key)
    assert failed.status == "failed"
    assert "it was not built or measured" in failed.error_msg
    assert ok.ok and ok.median_ms > 0 and ok.backend_version == load_tvm().__version__


def test_hwlat_measure_tvm_prints_json_latency(tmp_path) -> None:
    model = tiny_cnn_onnx(tmp_path / "tiny.onnx")
    out = io.StringIO()
    with redirect_stdout(out):
        status = hwlat_cli.main(
            [
                "measure",
                str(model),
                "--device",
                "local",
                "--backend",
                "tvm",
                "--tune-trials",
                str(TRIALS),
                "--json",
                "--quick",
                "--db",
                str(tmp_path / "m.db"),
            ]
        )
    assert status == 0
    result = json.loads(out.getvalue())  # stdout holds nothing but the JSON object
    assert result["backend"] == "tvm" and result["backend_version"] == load_tvm().__version__
    assert result["latency_ms"] > 0


def test_an_aarch64_library_is_cross_compiled() -> None:
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("no aarch64 cross compiler: apt-get install -y g++-aarch64-linux-gnu")
    board = Device(
        "board", host="board.invalid", tvm_target="llvm -mtriple=aarch64-linux-gnu -mattr=+neon", threads=4
    )
    backend = TvmUntunedBackend(board)
    assert backend.target == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": ["+neon"],
        "num-cores": 4,
    }
    library = backend.artifact(OpSpec("conv", (1, 16, 14, 14), out_channels=16, kernel=3, padding=1))
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2  # 64-bit ELF
    assert struct.unpack("<H", header[18:20])[0] == 183  # e_machine: EM_AARCH64


def test_targets_are_read_from_strings_and_checked() -> None:
    assert parse_target("llvm -mcpu=cortex-a72 -mattr=+neon,+dotprod -num-cores=4 -fast-math") == {
        "kind": "llvm",
        "mcpu": "cortex-a72",
        "mattr": ["+neon", "+dotprod"],
        "num-cores": 4,
        "fast-math": True,
    }
    local = device_target(local_device(threads=2))
    assert local["mcpu"] == load_tvm().target.codegen.llvm_get_system_cpu() and local["num-cores"] == 2
    assert cross_compiler(local) is None
    with pytest.raises(TvmTargetError, match="has no tvm_target"):
        device_target(Device("pi", host="pi.invalid"))
    with pytest.raises(TvmTargetError, match="num-cores='many' must be int"):
        parse_target("llvm -num-cores=many")
    with pytest.raises(TvmTargetError, match="TVM rejects target"):
        device_target(Device("pi", host="pi.invalid", tvm_target={"kind": "llvm", "colour": "red"}))
    with pytest.raises(TvmTargetError, match="apt-get install -y g\\+\\+-mips64-linux-gnu"):
        cross_compiler({"kind": "llvm", "mtriple": "mips64-linux-gnu"})


def test_a_tvm_campaign_over_ssh_tunes_on_the_device(sshd_factory, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    server = sshd_factory("sshd-tvm")
    device = server.device("sshtvm", backends=("ort", "tvm"), tvm_target=host_cpu_target())
    specs = [
        OpSpec("conv", (1, 8, 12, 12), out_channels=8, kernel=3, padding=1, activation="relu6"),
        OpSpec("add", (1, 8, 12, 12)),
    ]
    backend = TvmBackend(device, tune_trials=TRIALS)
    with Store(tmp_path / "m.db") as store:
        report = Campaign(device, backend, store, TimingProtocol.quick(), show_progress=False).run(specs)
        assert (report.measured, report.failed) == (2, 0), report.failures
        rows = [store.get("sshtvm", "tvm", s.key) for s in specs]
    for spec, row in zip(specs, rows, strict=True):
        assert backend.records[spec.key].tuned_tasks == 1  # tuned now, through the device's RPC server
        assert row.ok and row.median_ms > 0 and row.backend_version == load_tvm().__version__
