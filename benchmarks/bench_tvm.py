"""TVM benchmark: what tuning costs and buys, against ONNX Runtime, on this machine.

1. ops     - a standard set of MobileNet-style ops on the local device with ONNX Runtime,
             tuned TVM (MetaSchedule, --trials per kernel) and untuned TVM: latency per op,
             tuning and compile time per op; then the same TVM campaign again in a fresh
             store, which must find every library in the compile cache. Table + PNG plot.
2. model   - `hwlat measure MNV2.onnx --device local --backend tvm --json` on a
             MobileNetV2-style model written here (torch, exported with dynamo=False),
             next to the same command with --backend ort.
3. aarch64 - one op cross-compiled for aarch64 (g++-aarch64-linux-gnu): the library's ELF
             header must say AArch64 (`file` is asked too when it is installed).
4. ssh     - 20 ops over a loopback SSH device (a private sshd, this machine's Python),
             tuned on that device through TVM's RPC server, in a fresh cache; then the same
             20 ops timed locally and over SSH, interleaved, with the libraries tuned there:
             the medians must agree within the local-vs-local noise.

Usage: nice -n 10 python -m benchmarks.bench_tvm [--sections ops,model,aarch64,ssh] [--trials 64]
           [--model-trials 8] [--ssh-trials 16] [--out DIR] [--plot benchmarks/RESULTS-tvm.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwlat.devices.device import local_device
from hwlat.profiler.backends import get_backend
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

ROOT = Path(__file__).resolve().parents[1]

STANDARD_OPS = [
    OpSpec("conv", (1, 3, 224, 224), out_channels=32, kernel=3, stride=2, padding=1, activation="relu6"),
    OpSpec("conv", (1, 64, 56, 56), out_channels=64, kernel=3, padding=1, activation="relu"),
    OpSpec("conv", (1, 32, 28, 28), out_channels=192, kernel=1, activation="relu6"),
    OpSpec("conv", (1, 192, 28, 28), out_channels=192, kernel=3, padding=1, groups=192, activation="relu6"),
    OpSpec(
        "conv",
        (1, 144, 56, 56),
        out_channels=144,
        kernel=3,
        stride=2,
        padding=1,
        groups=144,
        activation="relu6",
    ),
    OpSpec("conv", (1, 192, 28, 28), out_channels=32, kernel=1),
    OpSpec("conv", (1, 320, 7, 7), out_channels=1280, kernel=1, activation="relu6"),
    OpSpec("gemm", (1, 1280), out_channels=1000),
    OpSpec("add", (1, 32, 28, 28)),
    OpSpec("globalavgpool", (1, 1280, 7, 7)),
    OpSpec("maxpool", (1, 64, 56, 56), kernel=3, stride=2, padding=1),
    OpSpec("act", (1, 96, 14, 14), activation="hardswish"),
]


def ssh_ops() -> list[OpSpec]:
    """Twenty small MobileNet-style ops (small, so that tuning them on the device stays short)."""
    specs = [
        OpSpec(
            "conv",
            (1, c, 14, 14),
            out_channels=c,
            kernel=k,
            padding=k // 2,
            groups=c if dw else 1,
            activation="relu6",
        )
        for c in (16, 32)
        for k in (1, 3, 5)
        for dw in (False, True)
        if not (dw and k == 1)
    ]
    specs += [OpSpec("add", (1, c, 14, 14)) for c in (16, 32)]
    specs += [OpSpec("mul", (1, c, 14, 14), broadcast="channel") for c in (16, 32)]
    specs += [OpSpec("globalavgpool", (1, c, 7, 7)) for c in (32, 64)]
    specs += [OpSpec("gemm", (1, c), out_channels=100) for c in (64, 256)]
    specs += [
        OpSpec("shuffle", (1, 32, 14, 14), groups=2),
        OpSpec("act", (1, 32, 14, 14), activation="hardswish"),
    ]
    assert len(specs) == 20
    return specs


def mobilenet_v2_onnx(path: Path, width: float = 1.0, resolution: int = 224) -> Path:
    """MobileNetV2 (Sandler et al. 2018): inverted residuals, ReLU6, linear bottlenecks."""
    import torch
    from torch import nn

    def c(ch: float) -> int:
        return max(8, int(ch * width + 4) // 8 * 8)

    def conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> list:
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, cout, 1, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    layers = conv_bn(3, c(32), 3, 2)
    cin = c(32)
    for expand, cout, repeats, stride in settings:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, c(cout), stride if i == 0 else 1, expand))
            cin = c(cout)
    layers += conv_bn(cin, 1280, 1, 1)
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))
    torch.manual_seed(0)
    torch.onnx.export(
        net.eval(),
        torch.randn(1, 3, resolution, resolution),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
    )
    return path


# ----- sections ----------------------------------------------------------------
def bench_ops(args, out: Path, protocol: TimingProtocol) -> dict:
    device = local_device()
    rows: dict[str, dict] = {s.key: {"op": s} for s in STANDARD_OPS}
    with Store(out / "ops.db") as store:
        for name in ("ort", "tvm-untuned", "tvm"):
            backend = get_backend(name, device, **({"tune_trials": args.trials} if name == "tvm" else {}))
            started = time.monotonic()
            report = Campaign(device, backend, store, protocol).run(STANDARD_OPS, force=True)
            print(f"{report.summary()} (with building: {time.monotonic() - started:.0f} s)", flush=True)
            for spec in STANDARD_OPS:
                m = store.get("local", name, spec.key)
                rows[spec.key][name] = m.median_ms if m and m.ok else None
                if name == "tvm":
                    rows[spec.key]["tvm_disturbed"] = bool(m and m.disturbed)
                    record = getattr(backend, "records", {}).get(spec.key)
                    rows[spec.key]["tune_s"] = record.tune_s if record else None
                    rows[spec.key]["compile_s"] = record.compile_s if record else None
                    rows[spec.key]["cached"] = record.cached if record else None
    # The re-run: a fresh store, the same cache: nothing is tuned or compiled again.
    rerun = get_backend("tvm", device, tune_trials=args.trials)
    started = time.monotonic()
    with Store(out / "ops-rerun.db") as store:
        Campaign(device, rerun, store, protocol, show_progress=False).run(STANDARD_OPS)
    hits = sum(r.cached for k, r in rerun.records.items() if k in rows)
    rerun_s = time.monotonic() - started
    lines = [
        "| op | ORT ms | TVM tuned ms | TVM untuned ms | tuned / ORT | tuning s | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        ort, tuned, untuned = row["ort"], row["tvm"], row["tvm-untuned"]
        ratio = f"{tuned / ort:.2f}" if ort and tuned else "-"
        flag = " (disturbed)" if row.get("tvm_disturbed") else ""
        lines.append(
            f"| `{row['op'].key}` | {_ms(ort)} | {_ms(tuned)}{flag} | {_ms(untuned)} | {ratio} | "
            f"{_s(row['tune_s'])} | {_s(row['compile_s'])} |"
        )
    tuned_total = sum(r["tune_s"] or 0 for r in rows.values())
    summary = (
        f"tuning: {tuned_total:.0f} s for {len(rows)} ops ({args.trials} trials per kernel); "
        f"re-run in a fresh store: {hits}/{len(rows)} libraries from the compile cache, "
        f"{rerun_s:.0f} s including measuring"
    )
    print("\n".join(lines) + "\n" + summary)
    _plot(list(rows.values()), args.plot, args.trials)
    return {"table": lines, "summary": summary, "rows": [{**r, "op": r["op"].key} for r in rows.values()]}


def _plot(rows: list[dict], path: Path, trials: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op'].op} {'x'.join(map(str, r['op'].input_shape[1:]))}" for r in rows]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.27
    for i, (name, label) in enumerate(
        (("ort", "ONNX Runtime"), ("tvm", f"TVM tuned ({trials} trials)"), ("tvm-untuned", "TVM untuned"))
    ):
        ax.bar(
            [x + (i - 1) * width for x in range(len(rows))], [r[name] or 0 for r in rows], width, label=label
        )
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms, log scale), 1 thread")
    ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=8)
    ax.legend()
    ax.set_title("Per-op latency on this machine: ONNX Runtime vs TVM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_model(args, out: Path) -> dict:
    model = mobilenet_v2_onnx(out / "mobilenet_v2.onnx")
    results = {}
    for backend, extra in (("ort", []), ("tvm", ["--tune-trials", str(args.model_trials)])):
        command = [
            "hwlat",
            "measure",
            str(model),
            "--device",
            "local",
            "--backend",
            backend,
            *extra,
            "--json",
            "--db",
            str(out / "model.db"),
            "--no-progress",
        ]
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "hwlat.cli", *command[1:]], cwd=ROOT, capture_output=True, text=True
        )
        wall = time.monotonic() - started
        print("$ " + " ".join(command) + f"   ({wall:.0f} s)\n{proc.stdout.strip()}", flush=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            results[backend] = {"error": proc.stderr[-500:]}
            continue
        results[backend] = {**json.loads(proc.stdout), "command": " ".join(command), "wall_s": wall}
    return results


def bench_aarch64(out: Path) -> dict:
    from hwlat.devices.device import Device

    board = Device(
        "board",
        host="board.invalid",
        backends=("tvm",),
        threads=4,
        tvm_target="llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72 -mattr=+neon",
    )
    library = get_backend("tvm-untuned", board).artifact(STANDARD_OPS[3])
    copy = out / "conv-dw-aarch64.so"
    shutil.copy(library, copy)
    header = copy.read_bytes()[:20]
    machine = struct.unpack("<H", header[18:20])[0]
    described = (
        subprocess.run(["file", str(copy)], capture_output=True, text=True).stdout.strip()
        if shutil.which("file")
        else "(`file` is not installed here)"
    )
    result = {
        "library": str(copy),
        "elf": header[:4] == b"\x7fELF",
        "elf64": header[4] == 2,
        "e_machine": machine,
        "aarch64": machine == 183,
        "file": described,
    }
    print(json.dumps(result, indent=1))
    return result


def bench_ssh(args, out: Path, protocol: TimingProtocol) -> dict:
    """Tune the 20 ops through the loopback device (a fresh cache unless --keep-ssh-cache), then
    time them in rounds of 5 ops: local, SSH, local again, each pass a new campaign on the
    libraries tuned there, so that all three passes of a round see the same background load;
    local vs local is the noise band the SSH-vs-local difference is judged against."""
    from hwlat.profiler.backends.tvm.tune import load_tvm
    from tests.sshd_fixtures import PrivateSshd, sshd_available

    if not sshd_available():
        return {"skipped": "OpenSSH server not installed (apt-get install -y openssh-server)"}
    os.environ.pop("SSH_AUTH_SOCK", None)
    cache = os.environ["HWLAT_CACHE"]
    os.environ["HWLAT_CACHE"] = str(out / "ssh-cache")
    if not args.keep_ssh_cache:  # fresh: every kernel is tuned on the device
        shutil.rmtree(out / "ssh-cache", ignore_errors=True)
    cpu = load_tvm().target.codegen.llvm_get_system_cpu()
    server = PrivateSshd(Path(tempfile.mkdtemp(prefix="hwlat-bench-sshd-"))).start()
    specs = ssh_ops()
    medians: dict[str, dict[str, list]] = {s.key: {"ssh": [], "local": []} for s in specs}
    try:
        device = server.device("loopback", backends=("ort", "tvm"), tvm_target=f"llvm -mcpu={cpu}")
        backend = get_backend("tvm", device, tune_trials=args.ssh_trials)
        started = time.monotonic()
        with Store(out / "ssh-tune.db") as store:
            remote = Campaign(device, backend, store, protocol).run(specs, force=True)
        remote_s = time.monotonic() - started
        tuned = sum(r.tuned_tasks for k, r in backend.records.items() if k in medians)
        print(f"{remote.summary()} ({tuned} kernels tuned through the device's RPC server)", flush=True)
        for start in range(0, len(specs), 5):
            chunk = specs[start : start + 5]
            for where, dev in (("local", local_device()), ("ssh", device), ("local", local_device())):
                with Store(out / f"ssh-agree-{where}.db") as store:
                    Campaign(
                        dev,
                        get_backend("tvm", dev, tune_trials=args.ssh_trials),
                        store,
                        protocol,
                        show_progress=False,
                    ).run(chunk, force=True)
                    for spec in chunk:
                        m = store.get(dev.name, "tvm", spec.key)
                        medians[spec.key][where].append((m.median_ms, m.disturbed) if m and m.ok else None)
    finally:
        server.stop()
        os.environ["HWLAT_CACHE"] = cache
    lines = [
        "| op | SSH ms | local ms (1st, 2nd) | SSH vs local | local vs local |",
        "|---|---:|---:|---:|---:|",
    ]
    ssh_diffs, noise = [], []
    for key, m in medians.items():
        if None in m["ssh"] + m["local"]:
            lines.append(f"| `{key}` | failed | | | |")
            continue
        (r, rd), (a, ad), (b, bd) = m["ssh"][0], m["local"][0], m["local"][1]
        loc = (a + b) / 2
        ssh_diffs.append((r - loc) / loc)
        noise.append(abs(a - b) / loc)
        flag = " (disturbed)" if rd or ad or bd else ""
        lines.append(
            f"| `{key}` | {r:.4f} | {a:.4f}, {b:.4f} | {ssh_diffs[-1]:+.1%}{flag} | {noise[-1]:.1%} |"
        )
    summary = "no op measured on both"
    if ssh_diffs:
        summary = (
            f"{len(ssh_diffs)}/{len(specs)} ops on both; (SSH - local) / local: median "
            f"{statistics.median(ssh_diffs):+.1%}, median of |.| "
            f"{statistics.median(map(abs, ssh_diffs)):.1%}; local vs local: median "
            f"{statistics.median(noise):.1%}; {tuned} kernels tuned on the device in "
            f"{remote_s:.0f} s ({args.ssh_trials} trials each)"
        )
    print("\n".join(lines) + "\n" + summary)
    return {
        "table": lines,
        "summary": summary,
        "measured_remote": remote.measured,
        "failed_remote": remote.failed,
        "tuned_kernels": tuned,
    }


def _ms(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "failed"


def _s(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="ops,model,aarch64,ssh")
    parser.add_argument("--trials", type=int, default=64, help="tuning trials per kernel, ops section")
    parser.add_argument("--model-trials", type=int, default=8, help="tuning trials per kernel, model")
    parser.add_argument("--ssh-trials", type=int, default=16, help="tuning trials per kernel, ssh section")
    parser.add_argument(
        "--keep-ssh-cache",
        action="store_true",
        help="ssh section: reuse what an earlier run tuned on the device",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "hwlat-bench-tvm",
        help="databases, models and the compile cache (default: a temp folder)",
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "RESULTS-tvm.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HWLAT_CACHE", str(args.out / "cache"))  # tuning database, libraries
    protocol = TimingProtocol()
    print(f"load before: {os.getloadavg()}", flush=True)
    results: dict = {"load_before": os.getloadavg()}
    sections = args.sections.split(",")
    if "aarch64" in sections:
        results["aarch64"] = bench_aarch64(args.out)
    if "ops" in sections:
        results["ops"] = bench_ops(args, args.out, protocol)
    if "model" in sections:
        results["model"] = bench_model(args, args.out)
    if "ssh" in sections:
        results["ssh"] = bench_ssh(args, args.out, protocol)
    results["load_after"] = os.getloadavg()
    print(f"load after: {os.getloadavg()}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
