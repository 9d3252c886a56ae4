"""The store on a real PostgreSQL server, and device leases (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from hwlat.devices.device import local_device
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.opspec import OpSpec, write_jsonl
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store, StoreError, schema
from hwlat.profiler.store.leases import DeviceBusyError, DeviceLease, current_leases, holder_id

ROOT = Path(__file__).resolve().parents[1]


def small_ops(n: int) -> list[OpSpec]:
    return [OpSpec("conv", (1, 8 + 8 * i, 14, 14), out_channels=16, kernel=3, padding=1) for i in range(n)]


def test_sqlite_and_postgresql_give_identical_exports_for_the_same_campaign(tmp_path, pg_url) -> None:
    with Store(tmp_path / "m.db") as store:
        Campaign(local_device(), "ort", store, TimingProtocol.quick(), show_progress=False).run(small_ops(4))
        rows = store.measurements()
        store.export(tmp_path / "sqlite.json", "json")
        store.export(tmp_path / "sqlite.csv", "csv")
    with Store(pg_url) as pg:
        for m in rows:
            pg.save(m)
    with Store(pg_url, readonly=True) as pg:
        assert pg.count() == 4
        pg.export(tmp_path / "pg.json", "json")
        pg.export(tmp_path / "pg.csv", "csv")
    assert (tmp_path / "pg.json").read_text() == (tmp_path / "sqlite.json").read_text()
    assert (tmp_path / "pg.csv").read_text() == (tmp_path / "sqlite.csv").read_text()


def test_a_postgresql_database_of_another_program_is_refused(postgres) -> None:
    url = postgres.create_database()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (name TEXT)")
    engine.dispose()
    with pytest.raises(StoreError, match="not an hwlat store"):
        Store(url)


def _profile(db: str, ops: Path, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "hwlat.cli",
        "profile",
        "--ops",
        str(ops),
        "--db",
        db,
        "--quick",
        "--min-repeat-ms",
        "40",
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _leased(db: str) -> bool:
    try:
        with Store(db, readonly=True) as store:
            return bool(current_leases(store.engine))
    except StoreError:  # not created yet
        return False


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_two_campaigns_on_one_device_take_turns(kind, tmp_path, request) -> None:
    db = request.getfixturevalue("pg_url") if kind == "postgresql" else str(tmp_path / "m.db")
    # The first campaign lasts long enough (16 ops of at least 9 x 120 ms, ~20 s) for the second
    # to start (a new interpreter, imports) and find it running, however fast the machine.
    write_jsonl(small_ops(16), tmp_path / "a.jsonl")
    write_jsonl([OpSpec("add", (1, 16 + 8 * i, 14, 14)) for i in range(6)], tmp_path / "b.jsonl")
    first = _profile(db, tmp_path / "a.jsonl", "--min-repeat-ms", "120")
    deadline = time.monotonic() + 120
    while not _leased(db) and time.monotonic() < deadline:  # the first holds the device first
        time.sleep(0.2)
    second = _profile(db, tmp_path / "b.jsonl")
    out_a, err_a = first.communicate(timeout=300)
    out_b, err_b = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err_a + err_b
    assert "device local is in use by hwlat profile" in err_b  # the second one waited, and said for whom
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hwlat.cli",
            "db",
            "export",
            "--db",
            db,
            "--format",
            "json",
            "-o",
            str(tmp_path / "out.json"),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    rows = json.loads((tmp_path / "out.json").read_text())
    assert len(rows) == 22 and len({r["key"] for r in rows}) == 22
    a = [r for r in rows if r["key"].startswith("conv")]
    b = [r for r in rows if r["key"].startswith("add")]
    windows = sorted((r["started_at"], r["created_at"], r["key"][:3]) for r in rows)
    assert all(w[0] < w[1] for w in windows)
    assert max(r["created_at"] for r in a) <= min(r["started_at"] for r in b)  # no overlap in time
    with Store(db, readonly=True) as store:
        assert current_leases(store.engine) == []  # released on exit


def test_no_wait_exits_at_once_naming_the_holder(tmp_path) -> None:
    with Store(tmp_path / "m.db") as store, DeviceLease(store, "local", "hwlat profile --ops mine"):
        write_jsonl(small_ops(1), tmp_path / "a.jsonl")
        proc = _profile(str(tmp_path / "m.db"), tmp_path / "a.jsonl", "--no-wait")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert err.startswith("hwlat: error: device 'local' is in use by hwlat profile --ops mine")
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("reaped", [True, False])
def test_the_lease_of_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path, reaped) -> None:
    db = tmp_path / "m.db"
    Store(db).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hwlat.profiler.store import Store; "
            "from hwlat.profiler.store.leases import DeviceLease; "
            f"s = Store({str(db)!r}); l = DeviceLease(s, 'pi', 'holder').__enter__(); "
            "print('held', flush=True); "
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with Store(db) as store:
        assert [lease.device for lease in current_leases(store.engine)] == ["pi"]
        with pytest.raises(DeviceBusyError):
            DeviceLease(store, "pi", wait=False).__enter__()
        holder.send_signal(signal.SIGKILL)
        if reaped:
            holder.wait()
        else:  # a zombie until its parent waits for it: dead all the same
            while _state(holder.pid) != "Z":
                time.sleep(0.01)
        with DeviceLease(store, "pi", wait=False):
            (lease,) = current_leases(store.engine)
            assert lease.pid == os.getpid()
    holder.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _lease_in_child(db: str, answers) -> None:
    with Store(db) as store:
        try:
            with DeviceLease(store, "pi", "child", wait=False):
                answers.put(("took the parent's device", holder_id()))
        except DeviceBusyError:
            answers.put(("busy", holder_id()))


def test_a_forked_child_is_another_holder(tmp_path) -> None:
    """multiprocessing forks on Linux: the child must not inherit the parent's holder id or leases."""
    fork = multiprocessing.get_context("fork")
    answers = fork.Queue()
    with Store(tmp_path / "m.db") as store, DeviceLease(store, "pi", "parent", wait=False):
        child = fork.Process(target=_lease_in_child, args=(str(tmp_path / "m.db"), answers))
        child.start()
        answer, child_holder = answers.get(timeout=60)
        child.join(timeout=60)
        (lease,) = current_leases(store.engine)
    assert answer == "busy" and child_holder != holder_id() and lease.holder == holder_id()


def test_a_lease_from_another_host_is_taken_over_only_after_it_expires(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HWLAT_LEASE_TTL_S", "3")
    with Store(tmp_path / "m.db") as store:
        now = time.time()
        with store.engine.begin() as conn:
            conn.execute(
                sa.insert(schema.leases).values(
                    device="pi",
                    holder="elsewhere:1:x",
                    host="not-" + socket.gethostname(),
                    pid=1,
                    command="hwlat profile (another controller)",
                    acquired_at=now,
                    expires_at=now + 2.0,
                )
            )
        started = time.monotonic()
        with DeviceLease(store, "pi", poll_s=0.2):
            waited = time.monotonic() - started
            (lease,) = current_leases(store.engine)
        assert 1.5 < waited < 10 and lease.pid == os.getpid()


def test_a_held_lease_is_renewed_and_shown_by_devices_list(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HWLAT_LEASE_TTL_S", "1.5")
    from hwlat import cli

    with Store(tmp_path / "m.db") as store, DeviceLease(store, "local", "hwlat measure x.onnx"):
        first = current_leases(store.engine)[0].expires_at
        time.sleep(1.2)
        assert current_leases(store.engine)[0].expires_at > first  # renewed in the background
        assert cli.main(["devices", "list", "--db", str(tmp_path / "m.db")]) == 0
    out = capsys.readouterr().out
    assert "hwlat measure x.onnx" in out and f"pid {os.getpid()}" in out


def _trial_numbers(db: str, study: str) -> list[int]:
    with Store(db, readonly=True) as store, store.engine.connect() as conn:
        t, s = schema.trials, schema.studies
        query = sa.select(t.c.number).join(s, s.c.id == t.c.study_id).where(s.c.name == study)
        return sorted(conn.execute(query).scalars())


def test_three_workers_share_a_study_and_a_killed_one_loses_no_trial(pg_url, tmp_path) -> None:
    from tests.synthetic import synthetic_predictor

    predictor = synthetic_predictor(200).save(tmp_path / "p.json")
    budget = 30
    argv = [
        sys.executable,
        "-m",
        "hwlat.cli",
        "search",
        "--space",
        "proxyless",
        "--predictor",
        str(predictor),
        "--latency-ms",
        "1000",
        "--objective",
        "tests.slow_objective:accuracy",
        "--budget",
        str(budget),
        "--batch-size",
        "2",
        "--db",
        pg_url,
        "--study",
        "shared",
        "--worker",
        "--no-progress",
    ]
    env = {**os.environ, "HWLAT_STALE_CLAIM_S": "4"}
    workers = [
        subprocess.Popen(
            [*argv, "-o", str(tmp_path / f"w{i}")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 240
    victim = f":{workers[0].pid}:"
    while not (
        _has_study(pg_url) and len(_trial_numbers(pg_url, "shared")) >= 2 and _claims_of(pg_url, victim)
    ):
        assert time.monotonic() < deadline, "the workers stored nothing"
        time.sleep(0.2)
    held = [n for (n,) in _claims_of(pg_url, victim)]
    workers[0].send_signal(signal.SIGKILL)  # mid-way, holding claims it will never finish
    for w in workers[1:]:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    assert _trial_numbers(pg_url, "shared") == list(range(budget))  # each trial once, none lost
    with Store(pg_url, readonly=True) as store, store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.trial_claims)).scalar() == 0
        t = schema.trials
        finished_by = dict(conn.execute(sa.select(t.c.number, t.c.worker).where(t.c.number.in_(held))).all())
    assert held and all(victim not in finished_by[n] for n in held)  # the survivors took its claims over


def _claims_of(db: str, worker: str) -> list:
    with Store(db, readonly=True) as store, store.engine.connect() as conn:
        c = schema.trial_claims
        return conn.execute(sa.select(c.c.number).where(c.c.worker.contains(worker))).all()


def _has_study(db: str) -> bool:
    try:
        with Store(db, readonly=True) as store, store.engine.connect() as conn:
            return conn.execute(sa.select(schema.studies.c.id)).first() is not None
    except StoreError:  # no worker has created the schema yet
        return False


def _claim_and_store(db: str, study_id: int, budget: int, answers) -> None:
    """A search worker's storage traffic at full speed: claim the next free numbers, store them."""
    from hwlat.search.storage import SearchStorage, SearchStorageError
    from hwlat.search.trial import Trial

    worker, stored, errors = holder_id(), 0, []
    deadline = time.monotonic() + 90  # a claim left behind stalls the others until the stale time
    with SearchStorage(db) as storage:
        while len(storage.trials(study_id)) < budget and time.monotonic() < deadline:
            numbers = storage.claim_next(study_id, budget, 0, [(0,)] * 3, worker)
            mine = [Trial(number, 0, (0,), (1.0,), True, time.time()) for number in numbers]
            try:
                stored += len(storage.add_trials(study_id, mine, worker=worker))
            except SearchStorageError as exc:
                errors.append(str(exc))
                break
    answers.put((stored, errors))


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_workers_claiming_and_storing_at_full_speed_store_each_trial_once(kind, tmp_path, request) -> None:
    """A claim checked that its number was not stored, then inserted the claim: a worker storing that
    number in between left the claim behind, and the claimant failed to store it ("stored already")."""
    from hwlat.search.storage import SearchStorage

    db = request.getfixturevalue("pg_url") if kind == "postgresql" else str(tmp_path / "m.db")
    with SearchStorage(db) as storage:
        study_id = storage.create_study("race", {}).id
    budget, fork = 300, multiprocessing.get_context("fork")
    answers = fork.Queue()
    procs = [fork.Process(target=_claim_and_store, args=(db, study_id, budget, answers)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [answers.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [e for _, errors in results for e in errors] == []
    assert sum(stored for stored, _ in results) == budget
    with SearchStorage(db) as storage:
        assert [t.number for t in storage.trials(study_id)] == list(range(budget))
        assert storage.claims(study_id) == []


def test_a_worker_whose_claim_was_taken_over_drops_that_trial(tmp_path) -> None:
    from hwlat.search.storage import SearchStorage
    from hwlat.search.trial import Trial

    def stored(trials: list[Trial], worker: str) -> list[int]:
        return [t.number for t in storage.add_trials(study, trials, worker=worker)]

    def trial(number: int, value: float) -> Trial:
        return Trial(number, 0, (number,), (value,), True, time.time())

    with SearchStorage(tmp_path / "m.db") as storage:
        study = storage.create_study("s", {}).id
        assert storage.claim_next(study, 2, 0, [(0,), (1,)], "slow") == [0, 1]
        for number in (0, 1):
            assert storage.take_over(study, number, "slow", "fast")  # "slow" stalled past the stale time
        assert stored([trial(0, 1.0)], "fast") == [0]
        # the stalled worker comes back: trial 0 is stored already, trial 1 is no longer its own
        assert stored([trial(0, 2.0), trial(1, 2.0)], "slow") == []
        assert stored([trial(1, 3.0)], "fast") == [1]
        assert [(t.number, t.values) for t in storage.trials(study)] == [(0, (1.0,)), (1, (3.0,))]
        assert storage.claims(study) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_batch_is_claimed_at_once_on_the_lowest_free_numbers(kind, tmp_path, request) -> None:
    """Claims were made number by number, racing workers retrying one commit per number: 4 workers
    stored 4x fewer trials/s than one on PostgreSQL (benchmarks/bench_store.py)."""
    from hwlat.search.storage import SearchStorage
    from hwlat.search.trial import Trial

    db = request.getfixturevalue("pg_url") if kind == "postgresql" else str(tmp_path / "c.db")
    with SearchStorage(db) as storage:
        study = storage.create_study("s", {}).id
        assert storage.claim_next(study, 6, 0, [(1,), (2,)], "a") == [0, 1]
        assert storage.claim_next(study, 6, 0, [(3,)], "b") == [2]
        storage.add_trials(study, [Trial(0, 0, (1,), (1.0,), True, time.time())], worker="a")
        assert storage.take_over(study, 1, "a", "b")
        # 0 stored, 1 and 2 claimed by b: the next free are 3, 4, 5, and the budget ends there
        assert storage.claim_next(study, 6, 1, [(4,), (5,), (6,), (7,)], "c") == [3, 4, 5]
        assert storage.claim_next(study, 6, 1, [(8,)], "a") == []
        storage.release(study, "b")  # b stopped: its numbers are free again, lowest first
        assert storage.claim_next(study, 6, 2, [(9,)], "a") == [1]
        claims = storage.claims(study)
        assert [(c.number, c.arch, c.worker) for c in claims] == [
            (1, (9,), "a"),
            (3, (4,), "c"),
            (4, (5,), "c"),
            (5, (6,), "c"),
        ]
