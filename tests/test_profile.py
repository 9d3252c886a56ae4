"""Local campaigns end to end: real agent, real ONNX Runtime, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hwlat.devices.device import local_device
from hwlat.profiler.backends import OrtBackend
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.opspec import OpSpec, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

ROOT = Path(__file__).resolve().parents[1]
# ~1 s per run on these machines: long enough to interrupt, small enough to fit memory.
HUGE = OpSpec("conv", (1, 128, 224, 224), out_channels=128, kernel=3, padding=1)
# 59 GFLOP per run: the quick protocol's 6+ runs take several seconds even on a fast core.
HUGER = OpSpec("conv", (1, 256, 224, 224), out_channels=256, kernel=3, padding=1)


def twenty_ops() -> list[OpSpec]:
    specs = [
        OpSpec(
            "conv",
            (1, c, 28, 28),
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
    specs += [OpSpec("add", (1, c, 28, 28)) for c in (16, 32)]
    specs += [OpSpec("mul", (1, c, 28, 28), broadcast="channel") for c in (16, 32)]
    specs += [OpSpec("globalavgpool", (1, c, 7, 7)) for c in (32, 64)]
    specs += [OpSpec("gemm", (1, c), out_channels=100) for c in (64, 256)]
    specs += [
        OpSpec("shuffle", (1, 32, 14, 14), groups=2),
        OpSpec("act", (1, 32, 14, 14), activation="hardswish"),
    ]
    assert len(specs) == 20
    return specs


def hwlat(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "hwlat.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows(db: Path) -> list[tuple]:
    return (
        sqlite3.connect(db)
        .execute("SELECT key, status, disturbed, created_at FROM measurements WHERE kind='op'")
        .fetchall()
    )


def test_profile_fills_the_store_and_a_rerun_measures_only_what_is_not_clean(tmp_path) -> None:
    ops, db = tmp_path / "ops.jsonl", tmp_path / "m.db"
    write_jsonl(twenty_ops(), ops)
    first = hwlat(
        "profile", "--device", "local", "--backend", "ort", "--ops", str(ops), "--db", str(db), "--quick"
    )
    assert "20 measured, 0 already stored, 0 failed" in first.stdout
    assert "[local/ort] 20/20 100%" in first.stderr  # progress with ETA goes to stderr
    stored = rows(db)
    assert len(stored) == 20 and {r[1] for r in stored} == {"ok"}
    disturbed = sum(r[2] for r in stored)
    second = hwlat(
        "profile", "--device", "local", "--backend", "ort", "--ops", str(ops), "--db", str(db), "--quick"
    )
    assert f"{disturbed} measured, {20 - disturbed} already stored" in second.stdout
    after = {r[0]: r for r in rows(db)}
    assert len(after) == 20
    assert all(after[r[0]][3] == r[3] for r in stored if not r[2])  # clean rows untouched


def test_a_killed_campaign_resumes_without_duplicates(tmp_path) -> None:
    ops, db = tmp_path / "ops.jsonl", tmp_path / "m.db"
    write_jsonl(twenty_ops(), ops)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hwlat.cli",
            "profile",
            "--ops",
            str(ops),
            "--db",
            str(db),
            "--quick",
            "--no-progress",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(rows(db)) >= 6:
                break
        except sqlite3.OperationalError:  # the campaign has not created its tables yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = rows(db)
    assert 6 <= len(before) < 20, "the campaign should have been killed half-way"
    clean_before = [r for r in before if not r[2]]
    rerun = hwlat("profile", "--ops", str(ops), "--db", str(db), "--quick")
    assert f"{len(clean_before)} already stored" in rerun.stdout
    after = rows(db)
    assert sorted(r[0] for r in after) == sorted(s.key for s in twenty_ops())  # each once
    assert len(after) == 20
    by_key = {r[0]: r for r in after}
    assert all(by_key[r[0]][3] == r[3] for r in clean_before)


def test_an_op_that_times_out_is_stored_as_failed_and_the_campaign_goes_on(tmp_path) -> None:
    small = [OpSpec("add", (1, 8, 8, 8)), OpSpec("add", (1, 16, 8, 8))]
    protocol = TimingProtocol(**{**TimingProtocol.quick().to_dict(), "op_timeout_s": 1.5})
    with Store(tmp_path / "m.db") as store:
        report = Campaign(local_device(), "ort", store, protocol, show_progress=False).run(
            [small[0], HUGER, small[1]]
        )
        assert (report.measured, report.failed) == (2, 1)
        failed = store.get("local", "ort", HUGER.key)
        assert failed.status == "failed" and "no answer" in failed.error_msg
        assert store.get("local", "ort", small[1].key).ok


def test_an_op_whose_agent_is_killed_is_a_transient_failure_measured_again_by_a_rerun(tmp_path) -> None:
    small = [OpSpec("add", (1, 8, 8, 8)), OpSpec("add", (1, 16, 8, 8))]
    with Store(tmp_path / "m.db") as store:
        campaign = Campaign(local_device(), "ort", store, TimingProtocol.quick(), show_progress=False)

        def kill_agent_during_huge_op() -> None:
            while store.get("local", "ort", small[0].key) is None:
                time.sleep(0.01)
            time.sleep(0.3)  # the agent is now timing HUGE
            os.kill(campaign._session.hello["pid"], signal.SIGKILL)

        killer = threading.Thread(target=kill_agent_during_huge_op)
        killer.start()
        report = campaign.run([small[0], HUGE, small[1]])
        killer.join()
        assert (report.measured, report.failed) == (2, 1)
        killed = store.get("local", "ort", HUGE.key)
        assert killed.status == "transient" and "agent process died" in killed.error_msg
        assert store.get("local", "ort", small[1].key).ok
        # No --force: the next run measures the op whose agent was killed again.
        assert HUGE.key not in store.done_keys("local", "ort")
        again = Campaign(local_device(), "ort", store, TimingProtocol.quick(), show_progress=False)
        again.run([small[0], HUGE, small[1]])
        assert store.get("local", "ort", HUGE.key).ok


def configured_agent(campaign: Campaign) -> int | None:
    """The pid of the campaign's agent once it is configured (measuring or about to)."""
    session = campaign._session
    return session.hello.get("pid") if session is not None and session.configured else None


def kill_agent_after(campaign: Campaign, store: Store, counts: list[int], killed: list[int]) -> None:
    """SIGKILL the campaign's agent once the store holds each of ``counts`` rows, 0.1 s into the
    next op (as the OOM killer would); each time a fresh agent must have taken over."""
    for at in counts:
        deadline = time.monotonic() + 120
        while not (store.count() >= at and configured_agent(campaign) not in (None, *killed)):
            assert time.monotonic() < deadline, f"no agent measured op {at + 1}"
            time.sleep(0.01)
        time.sleep(0.1)
        pid = configured_agent(campaign)
        if pid is not None and pid not in killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)


def test_agents_killed_before_the_first_result_mid_batch_and_on_the_last_op_lose_nothing(tmp_path) -> None:
    """Each kill costs at most the op in flight, stored as a transient failure; one re-run without
    --force measures exactly those (and any a busy machine disturbed), and every op ends with one
    measured row."""
    specs = twenty_ops()[:10]
    slow = TimingProtocol(**{**TimingProtocol.quick().to_dict(), "min_repeat_ms": 100.0, "repeat": 3})
    killed: list[int] = []
    with Store(tmp_path / "m.db") as store:
        campaign = Campaign(local_device(), "ort", store, slow, show_progress=False, batch_size=4)
        killer = threading.Thread(target=kill_agent_after, args=(campaign, store, [0, 5, 9], killed))
        killer.start()
        report = campaign.run(specs)
        killer.join()
        first = {m.key: m for m in store.measurements()}
        again = Campaign(local_device(), "ort", store, slow, show_progress=False, batch_size=4).run(specs)
        final = store.measurements()
    assert len(killed) == 3 and report.reconnects == 0
    transient = sorted(k for k, m in first.items() if not m.ok)
    assert len(first) == 10 and 1 <= report.failed == len(transient) <= 3
    assert all(first[k].status == "transient" for k in transient)
    assert all("agent process died" in first[k].error_msg for k in transient)
    assert specs[0].key in transient and specs[-1].key in transient  # the first op and the last op
    # The re-run measures the killed ops, and rows a busy machine disturbed (README: flagged rows).
    redo = len(transient) + sum(m.ok and m.disturbed for m in first.values())
    assert (again.measured, again.skipped, again.failed) == (redo, 10 - redo, 0)
    assert sorted(m.key for m in final) == sorted(s.key for s in specs) and all(m.ok for m in final)
    with sqlite3.connect(tmp_path / "m.db") as db:  # one row per op in the table itself
        assert db.execute("SELECT count(*), count(DISTINCT key) FROM measurements").fetchone() == (10, 10)


def test_the_first_agent_killed_while_it_starts_is_started_again(tmp_path, caplog) -> None:
    """Killed before its hello (no word on stderr, unlike a missing runtime): a passing fault."""
    import psutil

    specs = twenty_ops()[:3]
    killed: list[int] = []

    def kill_first_agent() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for child in psutil.Process().children(recursive=True):
                try:
                    if any(arg.endswith("agent.py") for arg in child.cmdline()):
                        time.sleep(0.05)  # past the host's first write: the agent is importing
                        child.send_signal(signal.SIGKILL)
                        killed.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.005)

    with Store(tmp_path / "m.db") as store:
        campaign = Campaign(local_device(), "ort", store, TimingProtocol.quick(), show_progress=False)
        killer = threading.Thread(target=kill_first_agent)
        killer.start()
        with caplog.at_level("WARNING", logger="hwlat.profiler.campaign"):
            report = campaign.run(specs)
        killer.join()
        stored = store.measurements()
    # Killed before the host's first write even landed, it is a broken pipe: restarted as a
    # dropped link (rare; the sleep above makes the hello path the one tested).
    assert len(killed) == 1 and ("the agent died while starting" in caplog.text or report.reconnects == 1)
    assert (report.measured, report.failed) == (3, 0) and all(m.ok for m in stored) and len(stored) == 3


class BrokenFileBackend(OrtBackend):
    """ONNX Runtime given a file that is not a model: a real load error from the agent."""

    def artifact(self, spec: OpSpec) -> Path:
        if spec.op != "gemm":
            return super().artifact(spec)
        path = Path(os.environ["HWLAT_CACHE"]) / "broken.onnx"
        path.write_bytes(b"not a model")
        return path


def test_a_runtime_error_is_a_failed_row_not_a_dead_campaign(tmp_path) -> None:
    specs = [OpSpec("add", (1, 8, 8, 8)), OpSpec("gemm", (1, 8), out_channels=4), OpSpec("add", (1, 4, 8, 8))]
    with Store(tmp_path / "m.db") as store:
        report = Campaign(
            local_device(),
            BrokenFileBackend(local_device()),
            store,
            TimingProtocol.quick(),
            show_progress=False,
        ).run(specs)
        assert (report.measured, report.failed) == (2, 1)
        assert "InvalidProtobuf" in store.get("local", "ort", specs[1].key).error_msg


def test_disturbed_measurements_are_flagged_and_remeasured(tmp_path) -> None:
    """A canary reference far below anything reachable makes every canary look disturbed."""
    spec = OpSpec("add", (1, 8, 8, 8))
    device = local_device()
    with Store(tmp_path / "m.db") as store:
        store.update_canary_reference("local", "ort", device.settings(), 1e-6)
        report = Campaign(device, "ort", store, TimingProtocol.quick(), show_progress=False).run([spec])
        m = store.get("local", "ort", spec.key)
        assert report.disturbed == 1 and m.disturbed and m.attempts == 2
        assert "canary ran" in m.disturbance and m.canary_ratio > 100
        assert store.done_keys("local", "ort") == set()  # a re-run measures it again


def test_measure_reports_latency_size_and_memory(tmp_path) -> None:
    from hwlat.zoo import build, export_onnx

    path = export_onnx(build("mobilenet_v2_0.5"), tmp_path / "mbv2.onnx", resolution=96)
    out = json.loads(
        hwlat(
            "measure",
            str(path),
            "--device",
            "local",
            "--backend",
            "ort",
            "--json",
            "--db",
            str(tmp_path / "m.db"),
            "--quick",
        ).stdout
    )
    assert out["p10_ms"] <= out["latency_ms"] <= out["p90_ms"]
    assert out["model_bytes"] == path.stat().st_size
    assert out["params"] > 1_000_000
    assert out["peak_rss_mb"] > out["baseline_rss_mb"] > 0
    assert out["model_rss_mb"] == pytest.approx(out["peak_rss_mb"] - out["baseline_rss_mb"])
    assert out["load_rss_mb"] > 0 and "memory_error" not in out
    assert out["backend_version"] and out["threads"] == 1
    text = hwlat("measure", str(path), "--db", str(tmp_path / "m.db"), "--quick").stdout
    assert "ms median" in text and "MB while it runs" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "--ops", "missing.jsonl"], "missing.jsonl"),
        (
            [
                "profile",
                "--ops",
                "{bad}",
            ],
            "not valid JSON",
        ),
        (["profile", "--ops", "{ops}", "--device", "nowhere"], "no device named 'nowhere'"),
        (["profile", "--ops", "{ops}", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
        (["profile", "--ops", "{ops}", "--db", "/nonexistent/dir/m.db"], "does not exist (create it"),
        (["measure", "missing.onnx"], "model file missing.onnx does not exist"),
        (["profile", "--ops", "{ops}", "--inventory", "{inv}"], "unknown key 'hostname'"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, args: list[str], message: str) -> None:
    (tmp_path / "bad.jsonl").write_text('{"op": "conv"\n')
    write_jsonl([OpSpec("add", (1, 8, 8, 8))], tmp_path / "ops.jsonl")
    (tmp_path / "inv.toml").write_text('[devices.pi]\nhost = "pi.local"\nhostname = "x"\n')
    args = [
        a.format(bad=tmp_path / "bad.jsonl", ops=tmp_path / "ops.jsonl", inv=tmp_path / "inv.toml")
        for a in args
    ]
    proc = hwlat(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.startswith("hwlat: error:")
