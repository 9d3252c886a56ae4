"""SSH benchmark: what does reaching a device over SSH cost, and does it change the numbers?

1. The same 100 ops profiled locally, over loopback SSH (a private sshd, this machine's
   Python), and locally again: wall time, share of the campaign spent timing ops,
   per-op overhead, and agreement of the medians (SSH vs local, next to local vs local,
   which is the noise band of this machine right now). The ops are split into rounds,
   each run local / SSH / local, so that the three passes see the same background load
   of a shared machine; every round is a new campaign (a new connection and agent).
2. Resume: a 100-op campaign over SSH whose sshd is SIGKILLed half-way and restarted
   3 s later; it must end with exactly 100 measurements and no key twice.

Usage: python -m benchmarks.bench_ssh [--ops 100] [--skip-agreement] [--skip-resume]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from hwlat.devices.device import local_device
from hwlat.profiler.backends import OrtBackend
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from tests.sshd_fixtures import PrivateSshd, sshd_available

ROOT = Path(__file__).resolve().parents[1]


def op_set(n: int) -> list[OpSpec]:
    """MobileNet-style ops: pointwise, depthwise 3/5/7 (stride 1 and 2), full 3x3, add, pooling."""
    specs = []
    for res, cin in ((112, 16), (56, 24), (28, 40), (14, 80), (7, 160)):
        for expand in (3, 6):
            mid = cin * expand
            specs += [
                OpSpec("conv", (1, cin, res, res), out_channels=mid, activation="relu6"),
                OpSpec("conv", (1, mid, res, res), out_channels=cin),
            ]
            for k in (3, 5, 7):
                for stride in (1, 2):
                    specs.append(
                        OpSpec(
                            "conv",
                            (1, mid, res, res),
                            out_channels=mid,
                            kernel=k,
                            stride=stride,
                            padding=k // 2,
                            groups=mid,
                            activation="relu6",
                        )
                    )
        specs += [
            OpSpec("conv", (1, cin, res, res), out_channels=cin, kernel=3, padding=1),
            OpSpec("add", (1, cin, res, res)),
            OpSpec("globalavgpool", (1, cin * 6, res, res)),
        ]
    specs += [OpSpec("gemm", (1, c), out_channels=1000) for c in (576, 960, 1024, 1280)]
    specs.append(OpSpec("maxpool", (1, 64, 112, 112), kernel=3, stride=2, padding=1))
    assert len(specs) >= n, len(specs)
    return specs[:n]


def timed_campaign(store: Store, device, specs: list[OpSpec], protocol: TimingProtocol) -> dict:
    report = Campaign(device, "ort", store, protocol, show_progress=False).run(specs, force=True)
    rows = sorted((store.get(device.name, "ort", s.key) for s in specs), key=lambda m: m.created_at)
    # Steady state: between two stored ops, the time the agent was not timing the second one.
    gaps = [b.created_at - a.created_at - b.wall_s for a, b in itertools.pairwise(rows)]
    return {
        "wall_s": report.wall_s,
        "timing_s": report.timing_s,
        "measured": report.measured,
        "disturbed": report.disturbed,
        "gaps_s": gaps,
    }


def overhead_row(name: str, runs: list[dict]) -> str:
    wall, timing = sum(r["wall_s"] for r in runs), sum(r["timing_s"] for r in runs)
    gaps = [g for r in runs for g in r["gaps_s"]]
    fixed = (wall - timing - sum(gaps)) / len(runs)  # connect, start the agent, canary, shut down
    return (
        f"| {name} | {wall:.1f} | {timing:.1f} | {100 * timing / wall:.1f}% | {fixed:.2f} | "
        f"{statistics.median(gaps) * 1e3:.1f} | {statistics.fmean(gaps) * 1e3:.1f} | "
        f"{max(gaps) * 1e3:.0f} | {sum(r['measured'] for r in runs)} | "
        f"{sum(r['disturbed'] for r in runs)} |"
    )


def agreement_row(name: str, a: dict, b: dict, clean: bool = True) -> str:
    keys = [k for k in a if k in b and (a[k].clean and b[k].clean if clean else a[k].ok and b[k].ok)]
    if not keys:
        return f"| {name} | 0 | - | - | - | - |"
    diffs = sorted(abs(b[k].median_ms / a[k].median_ms - 1) for k in keys)
    within = lambda t: 100 * sum(d <= t for d in diffs) / len(diffs)  # noqa: E731
    return (
        f"| {name} | {len(keys)} | {100 * statistics.median(diffs):.1f}% | "
        f"{100 * diffs[int(0.9 * (len(diffs) - 1))]:.1f}% | {within(0.05):.0f}% | {within(0.10):.0f}% |"
    )


def agreement(server: PrivateSshd, specs: list[OpSpec], db: Path, rounds: int) -> None:
    """Local, SSH, local again on each of ``rounds`` slices, so all three see the same load."""
    protocol = TimingProtocol()
    devices = {
        "local (1st)": replace(local_device(), name="local-a"),
        "ssh loopback": server.device("ssh-loopback"),
        "local (2nd)": replace(local_device(), name="local-b"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in devices}
    with Store(db) as store:
        for i in range(rounds):
            for name, device in devices.items():
                runs[name].append(timed_campaign(store, device, specs[i::rounds], protocol))
                print(f"round {i + 1}/{rounds} {name}: {runs[name][-1]}", file=sys.stderr)
        rows = {name: {m.key: m for m in store.measurements(device=d.name)} for name, d in devices.items()}
    n = len(specs)
    print(f"\n## {n} ops, default protocol, 1 thread, ONNX Runtime, in {rounds} interleaved rounds\n")
    print(
        "| pass | wall s | timing s | share timing | fixed s per campaign (start-up + shut-down) | "
        "overhead ms/op, median | mean | max | measured | flagged disturbed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(overhead_row(name, r))
    a, s, b = (rows[k] for k in ("local (1st)", "ssh loopback", "local (2nd)"))
    print("\n| medians compared | ops | median abs rel diff | p90 | within 5% | within 10% |")
    print("|---|---|---|---|---|---|")
    for clean in (True, False):
        which = "clean in both" if clean else "all, flagged ones too"
        print(agreement_row(f"ssh vs local (1st), {which}", a, s, clean))
        print(agreement_row(f"ssh vs local (2nd), {which}", b, s, clean))
        print(agreement_row(f"local (2nd) vs local (1st), {which}: noise band", a, b, clean))


def resume(server: PrivateSshd, specs: list[OpSpec], db: Path) -> None:
    device = server.device("ssh-resume")
    with Store(db) as store:
        campaign = Campaign(
            device, "ort", store, TimingProtocol.quick(), show_progress=False, reconnect_timeout_s=120
        )
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(report=campaign.run(specs)))
        started = time.monotonic()
        worker.start()
        while store.count() < len(specs) // 2:
            time.sleep(0.01)
        at_kill = store.count()
        server.kill()
        killed_at = time.monotonic() - started
        time.sleep(3.0)
        server.start()
        worker.join()
        report = result["report"]
        rows = store.measurements(device=device.name)
        keys = [m.key for m in rows]
    print(f"\n## Resume: {len(specs)} ops over SSH, sshd SIGKILLed half-way, back 3 s later\n")
    print(
        f"sshd killed at {killed_at:.1f} s with {at_kill} ops stored; campaign ended after "
        f"{report.wall_s:.1f} s"
    )
    print(f"report: {report.summary()}")
    print(
        f"rows stored: {len(rows)}; distinct keys: {len(set(keys))}; requested: {len(specs)}; "
        f"every requested key stored: {set(keys) == {s.key for s in specs}}; "
        f"statuses: {sorted({m.status for m in rows})}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved local/ssh/local rounds")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args()
    if not sshd_available():
        print("sshd is not installed (apt-get install openssh-server)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    os.environ.setdefault("HWLAT_CACHE", str(tmp / "cache"))
    specs = op_set(args.ops)
    backend = OrtBackend(local_device())
    for spec in specs:  # build every op model first: both passes then time transport, not onnx.save
        backend.artifact(spec)
    print(
        f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
        f"(1/5/15 min), {os.cpu_count()} CPUs"
    )
    server = PrivateSshd(tmp / "sshd").start()
    try:
        if not args.skip_agreement:
            agreement(server, specs, tmp / "agreement.db", args.rounds)
        if not args.skip_resume:
            resume(server, specs, tmp / "resume.db")
    finally:
        server.stop()
    print(f"\nload after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
