"""Campaigns over SSH with real faults: sshd killed mid-way, the agent killed, Ctrl-C, a dead device.

The agent is "crashed" by SIGKILL from outside while it measures: that is what the
OOM killer or a segfaulting runtime does to it, and no op can be made to crash
ONNX Runtime on purpose and portably.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from hwlat import cli as hwlat_cli
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.opspec import OpSpec, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

ROOT = Path(__file__).resolve().parents[1]
# Each op takes ~0.3 s: long enough that a kill lands while the agent measures.
SLOW = replace(TimingProtocol.quick(), min_repeat_ms=100.0, repeat=3)


@pytest.fixture(autouse=True)
def _no_ssh_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def small_ops(n: int) -> list[OpSpec]:
    return [
        OpSpec(
            "conv",
            (1, 8 + 4 * (i // 3), 14, 14),
            out_channels=8,
            kernel=(1, 3, 5)[i % 3],
            padding=(0, 1, 2)[i % 3],
        )
        for i in range(n)
    ]


def agents_on(server) -> list[psutil.Process]:
    """Agent processes started in this server's workdir (the "device" is this machine)."""
    workdir = str(server.root / "work")
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(workdir in arg and arg.endswith(".py") for arg in p.info["cmdline"] or [])
    ]


def wait_until(condition, timeout_s: float = 60.0, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return False


def test_two_devices_in_parallel_while_a_third_is_unreachable(sshd_a, sshd_b, tmp_path, capsys) -> None:
    inventory = tmp_path / "devices.toml"
    inventory.write_text(
        sshd_a.inventory("a", threads=1, cpu_affinity=(0,), labels=("lab",))
        + sshd_b.inventory("b", threads=2, labels=("lab",))
        + sshd_a.inventory("down", port=_closed_port(), labels=("lab",))
    )
    ops, db = tmp_path / "ops.jsonl", tmp_path / "m.db"
    write_jsonl(small_ops(4), ops)
    status = hwlat_cli.main(
        [
            "profile",
            "--label",
            "lab",
            "--inventory",
            str(inventory),
            "--ops",
            str(ops),
            "--db",
            str(db),
            "--quick",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 1, err  # one device failed, the others finished
    assert "down: FAILED: device 'down': connection refused by 127.0.0.1" in err
    assert "a/ort: 4 measured" in out and "b/ort: 4 measured" in out
    assert "[a/ort] 4/4 100%" in err and "[b/ort] 4/4 100%" in err  # a progress line per device
    with Store(db) as store:
        settings = {m.device: m.settings for m in store.measurements() if m.ok}
        assert len(store.measurements()) == 8
    assert settings["a"]["threads"] == 1 and settings["a"]["cpu_affinity"] == [0]
    assert settings["b"]["threads"] == 2


def test_sshd_killed_mid_campaign_resumes_with_every_op_exactly_once(sshd_factory, tmp_path) -> None:
    server = sshd_factory("sshd-kill")
    specs = small_ops(12)
    with Store(tmp_path / "m.db") as store:
        campaign = Campaign(
            server.device(),
            "ort",
            store,
            TimingProtocol.quick(),
            show_progress=False,
            reconnect_timeout_s=60,
            batch_size=5,
        )
        result = {}
        worker = threading.Thread(target=lambda: result.update(report=campaign.run(specs)))
        worker.start()
        assert wait_until(lambda: store.count() >= 6)
        server.kill()
        time.sleep(1.5)  # the campaign finds the port closed and backs off
        server.start()
        worker.join(120)
        report = result["report"]
        stored = store.measurements(device="sshdev")
    assert report.reconnects >= 1 and report.failed == 0
    assert sorted(m.key for m in stored) == sorted(s.key for s in specs)  # each once, none lost
    assert all(m.ok for m in stored)
    assert wait_until(lambda: not agents_on(server), 15)


def test_an_op_that_kills_the_agent_is_stored_as_failed_and_the_campaign_goes_on(sshd_a, tmp_path) -> None:
    specs = small_ops(6)
    killed: list[int] = []
    assert wait_until(lambda: not agents_on(sshd_a), 15)  # only this test's agent will be there
    with Store(tmp_path / "m.db") as store:

        def killer() -> None:
            assert wait_until(lambda: store.count() >= 2)
            time.sleep(0.1)  # into the third op
            for p in agents_on(sshd_a):
                killed.append(p.pid)
                p.send_signal(signal.SIGKILL)

        thread = threading.Thread(target=killer)
        thread.start()
        report = Campaign(sshd_a.device(), "ort", store, SLOW, show_progress=False).run(specs)
        thread.join()
        stored = {m.key: m for m in store.measurements(device="sshdev")}
    assert len(killed) == 1
    failed = [m for m in stored.values() if not m.ok]
    assert len(stored) == 6 and len(failed) == 1 and report.failed == 1 and report.reconnects == 0
    assert "agent process died" in failed[0].error_msg
    later = [s.key for s in specs][[s.key for s in specs].index(failed[0].key) + 1 :]
    assert later and all(stored[k].ok for k in later)  # a fresh agent took over


def test_a_30_op_campaign_whose_agent_is_killed_3_times_ends_with_30_rows_after_one_rerun(
    sshd_factory, tmp_path, caplog
) -> None:
    """Killed mid-op, killed while the replacement starts (retried with back-off, no op lost),
    killed on the last op: one re-run without --force leaves every op measured, once."""
    server = sshd_factory("sshd-agent-kills")
    specs = small_ops(30)
    killed: list[int] = []
    while_starting: list[bool] = []
    with Store(tmp_path / "m.db") as store:
        campaign = Campaign(server.device(), "ort", store, SLOW, show_progress=False, batch_size=8)

        def kill(p: psutil.Process) -> None:
            killed.append(p.pid)
            p.send_signal(signal.SIGKILL)

        def killer() -> None:
            assert wait_until(lambda: store.count() >= 4)  # 1. mid-op (the fifth)
            time.sleep(0.1)
            for p in agents_on(server):
                kill(p)
            # 2. its replacement, the moment it appears: before it has said hello.
            assert wait_until(lambda: any(p.pid not in killed for p in agents_on(server)), 30, 0.005)
            while_starting.append(campaign._session is None)
            for p in agents_on(server):
                if p.pid not in killed:
                    kill(p)
            assert wait_until(lambda: store.count() >= 29, 300)  # 3. during the last op
            time.sleep(0.1)
            for p in agents_on(server):
                if p.pid not in killed:
                    kill(p)

        thread = threading.Thread(target=killer)
        with caplog.at_level("WARNING", logger="hwlat.profiler.campaign"):
            thread.start()
            report = campaign.run(specs)
            thread.join()
        first = {m.key: m for m in store.measurements(device="sshdev")}
        again = Campaign(server.device(), "ort", store, SLOW, show_progress=False).run(specs)
        final = store.measurements(device="sshdev")
    assert len(killed) >= 3 and while_starting == [True]
    assert "the agent died while starting" in caplog.text and report.reconnects == 0
    transient = [k for k, m in first.items() if not m.ok]
    assert len(first) == 30 and report.failed == len(transient) == 2  # kills 1 and 3 cost one op each
    assert all(first[k].status == "transient" for k in transient) and specs[-1].key in transient
    redo = len(transient) + sum(m.ok and m.disturbed for m in first.values())  # and rows load disturbed
    assert (again.measured, again.failed) == (redo, 0)
    assert sorted(m.key for m in final) == sorted(s.key for s in specs) and all(m.ok for m in final)
    with sqlite3.connect(tmp_path / "m.db") as db:
        assert db.execute("SELECT count(*), count(DISTINCT key) FROM measurements").fetchone() == (30, 30)
    assert wait_until(lambda: not agents_on(server), 15)


def test_ctrl_c_keeps_what_was_measured_and_stops_the_remote_agent(sshd_a, tmp_path) -> None:
    inventory, ops, db = tmp_path / "devices.toml", tmp_path / "ops.jsonl", tmp_path / "m.db"
    inventory.write_text(sshd_a.inventory("pi"))
    write_jsonl(small_ops(10), ops)
    # About a second per op, so that the eight ops left after the second one outlast the
    # checks below and the signal (at 0.4 s per op a fresh-clone run once finished all ten before the signal).
    argv = [
        sys.executable,
        "-m",
        "hwlat.cli",
        "profile",
        "--device",
        "pi",
        "--inventory",
        str(inventory),
        "--ops",
        str(ops),
        "--db",
        str(db),
        "--quick",
        "--min-repeat-ms",
        "300",
        "--repeat",
        "3",
        "--no-progress",
    ]
    env = {**os.environ, "SSH_AUTH_SOCK": ""}
    # A shell's background job starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition whatever ran the tests.
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert wait_until(lambda: _count(db) >= 2)
    assert agents_on(sshd_a)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; everything measured so far is stored" in err
    assert wait_until(lambda: not agents_on(sshd_a), 10), "the remote agent survived Ctrl-C"
    kept = _count(db)
    assert 2 <= kept < 10
    rerun = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already stored, 0 failed" in rerun.stdout  # (disturbed rows are measured again)
    assert _count(db) == 10


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM measurements WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_model_with_its_weights_in_a_file_of_their_own_is_measured_over_ssh(sshd_a, tmp_path) -> None:
    """torch.onnx.export's default writes MODEL.onnx.data next to MODEL.onnx; the device is sent
    one file, with the weights inside."""
    import torch
    from torch import nn

    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 4))
    path = tmp_path / "default.onnx"
    with torch.no_grad():
        torch.onnx.export(module.eval(), (torch.randn(1, 3, 16, 16),), path)
    assert (tmp_path / "default.onnx.data").exists()
    with Store(tmp_path / "m.db") as store:
        m = Campaign(
            sshd_a.device(), "ort", store, TimingProtocol.quick(), show_progress=False
        ).measure_model(path)
    assert m.ok, m.error_msg
    assert m.median_ms > 0
    assert "memory_error" not in m.extra and m.model_rss_mb > 0  # the memory probe runs there too
    assert m.extra["model_bytes"] == path.stat().st_size + (tmp_path / "default.onnx.data").stat().st_size
