"""Shared-store benchmark: what the store costs when many processes share one (issue 13).

1. Writes: 1, 4 and 16 writer processes, each a campaign on its own device (it holds the
   device's lease, reads done_keys and the canary reference, then commits one Measurement per
   op through ``Store.save``, as ``Campaign`` does), against a SQLite file and a PostgreSQL
   server; measurements/s committed by all writers together, commit latency, and the latency
   of a read-only reader meanwhile (``Store.get`` of a stored op, ``done_keys`` of a device),
   next to the same reads with no writer. Medians over ``--repeats`` fresh stores. Store
   errors (lock timeouts, failed commits, a store that would not open) are counted: must be 0.
2. Search: one study, ``hwlat search --worker`` in 1, 2 and 4 processes on one store, with a
   synthetic latency predictor and a trivial objective (``counted_accuracy`` below), so the
   store is the bottleneck; trials/s from the study's creation to its last trial (and wall
   time with the processes' start-up). Checked: each trial number 0..budget-1 stored once, no
   claim left, and no architecture evaluated more often than trials hold it (none twice).
3. Leases: acquire + release round trip (``DeviceLease`` in one process); and the hand-over:
   the time from a holder's release (or SIGKILL) until a second campaign waiting for the
   device (default poll, as ``Campaign`` waits) holds it.

PostgreSQL is a private server on loopback (tests/pg_fixtures.py) with durable commits (fsync
on), as SQLite's are; both write to this machine's disk.

Usage: python -m benchmarks.bench_store [--writers 1 4 16] [--rows 100] [--repeats 3]
           [--workers 1 2 4] [--budget 1000] [--leases 50] [--handovers 5] [--skip-search] ...
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from hwlat.devices.device import local_device
from hwlat.profiler.agent import host_facts
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store, StoreError, schema
from hwlat.profiler.store.leases import DeviceLease, current_leases

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "ort"
EVAL_LOG_ENV = "HWLAT_BENCH_EVAL_LOG"
# Writers and lease holders are forked: they start in milliseconds instead of re-importing hwlat.
_MP = multiprocessing.get_context("fork")


# ----- 1. writes and reads -------------------------------------------------------------------
def campaign_row(device: str, i: int, host: dict, rng: random.Random) -> Measurement:
    """A row shaped as a campaign stores it: a real op key, 9 per-call samples, the device's
    settings, the timing protocol and the host facts."""
    spec = OpSpec("conv", (1, 8 + i, 28, 28), out_channels=32, kernel=3, padding=1, activation="relu")
    samples = [1.0 + 0.02 * rng.random() for _ in range(9)]
    return Measurement(
        device=device,
        backend=BACKEND,
        key=spec.key,
        samples_ms=samples,
        number=40,
        canary_ratio=1.0 + 0.05 * rng.random(),
        wall_s=0.6,
        backend_version="1.32.0",
        settings=local_device().settings(),
        protocol=TimingProtocol().to_dict(),
        host=host,
        started_at=time.time() - 0.6,
    )


@dataclass
class WriterResult:
    committed: int = 0
    errors: list[str] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    started: float = 0.0  # unix time of the first commit attempt
    ended: float = 0.0


def _writer(db: str, device: str, rows: int, host: dict, barrier, results) -> None:
    """One campaign: open the store, hold the device, then commit ``rows`` measurements."""
    out = WriterResult()
    rng = random.Random(device)
    try:
        store = Store(db)
    except StoreError as exc:
        out.errors.append(f"open: {exc}")
        barrier.wait()
        results.put(out)
        return
    settings = local_device().settings()
    try:
        with DeviceLease(store, device, "bench_store writer", wait=False):
            store.done_keys(device, BACKEND)
            store.canary_reference(device, BACKEND, settings)
            store.update_canary_reference(device, BACKEND, settings, 0.5)
            pending = [campaign_row(device, i, host, rng) for i in range(rows)]
            barrier.wait()
            out.started = time.time()
            for m in pending:
                t = time.perf_counter()
                try:
                    store.save(m)
                except StoreError as exc:
                    out.errors.append(str(exc))
                    continue
                out.commit_ms.append((time.perf_counter() - t) * 1e3)
                out.committed += 1
            out.ended = time.time()
    except StoreError as exc:
        out.errors.append(str(exc))
    finally:
        store.close()
        results.put(out)


def _reader(db: str, keys: list[str], stop, results) -> None:
    """A report reading while campaigns write: a stored op by key, and a device's done keys."""
    get_ms, done_ms = _read_loop(db, keys, stop=stop)
    results.put((get_ms, done_ms))


def _read_loop(db: str, keys: list[str], n: int | None = None, stop=None) -> tuple[list[float], list[float]]:
    get_ms: list[float] = []
    done_ms: list[float] = []
    rng = random.Random(0)
    with Store(db, readonly=True) as store:
        for i in itertools.count():
            if (n is not None and i >= n) or (stop is not None and stop.is_set() and i > 0):
                break
            t = time.perf_counter()
            assert store.get(READER_DEVICE, BACKEND, rng.choice(keys)) is not None
            get_ms.append((time.perf_counter() - t) * 1e3)
            if i % 5 == 0:
                t = time.perf_counter()
                store.done_keys(READER_DEVICE, BACKEND)
                done_ms.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.005)  # a report, not a busy loop: leave the CPUs to the writers
    return get_ms, done_ms


READER_DEVICE = "report-device"


@dataclass
class WriteRun:
    backend: str  # "sqlite" or "postgresql"
    writers: int
    rows: int  # per writer
    committed: int
    stored: int  # rows of the writers' devices in the store afterwards
    errors: list[str]
    seconds: float  # first commit attempt to last commit, all writers
    commit_ms: list[float]
    idle_get_ms: list[float]
    get_ms: list[float]
    done_keys_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.committed / self.seconds if self.seconds > 0 else 0.0


def write_run(db: str, kind: str, writers: int, rows: int, prefill: int = 100) -> WriteRun:
    """One fresh store: ``prefill`` rows for the reader, then ``writers`` campaigns at once."""
    host = host_facts()
    rng = random.Random(1)
    with Store(db) as store:
        for i in range(prefill):
            store.save(campaign_row(READER_DEVICE, i, host, rng))
    keys = [campaign_row(READER_DEVICE, i, host, rng).key for i in range(prefill)]
    idle_get_ms, _ = _read_loop(db, keys, n=50)
    barrier = _MP.Barrier(writers + 1)
    results, reads, stop = _MP.Queue(), _MP.Queue(), _MP.Event()
    procs = [
        _MP.Process(target=_writer, args=(db, f"dev{w:02d}", rows, host, barrier, results))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)  # every writer opened the store and holds its device
    reader = _MP.Process(target=_reader, args=(db, keys, stop, reads))
    reader.start()
    outs = [results.get(timeout=600) for _ in procs]
    stop.set()
    get_ms, done_ms = reads.get(timeout=60)
    for p in [*procs, reader]:
        p.join(timeout=60)
    with Store(db, readonly=True) as store, store.engine.connect() as conn:
        t = schema.measurements
        stored = conn.execute(
            sa.select(sa.func.count()).select_from(t).where(t.c.device != READER_DEVICE)
        ).scalar_one()
        assert current_leases(store.engine) == [], "a writer's lease was not released"
    timed = [o for o in outs if o.started]
    return WriteRun(
        kind,
        writers,
        rows,
        committed=sum(o.committed for o in outs),
        stored=stored,
        errors=[e for o in outs for e in o.errors],
        seconds=max(o.ended for o in timed) - min(o.started for o in timed) if timed else 0.0,
        commit_ms=[x for o in outs for x in o.commit_ms],
        idle_get_ms=idle_get_ms,
        get_ms=get_ms,
        done_keys_ms=done_ms,
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_writes(runs: list[WriteRun]) -> None:
    print(
        "\n| store | writers | rows each | measurements/s (median of repeats) | min-max | commit ms p50 | "
        "p99 | max | reader get ms p50, no writer | get ms p50 while writing | p99 | done_keys ms p50 | "
        "rows stored / expected | store errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, int], list[WriteRun]] = {}
    for r in runs:
        groups.setdefault((r.backend, r.writers), []).append(r)
    for (kind, writers), rs in groups.items():
        rates = [r.per_s for r in rs]
        commit = [x for r in rs for x in r.commit_ms]
        gets = [x for r in rs for x in r.get_ms]
        print(
            f"| {kind} | {writers} | {rs[0].rows} | {statistics.median(rates):.0f} | "
            f"{min(rates):.0f}-{max(rates):.0f} | {_pct(commit, 0.5):.1f} | {_pct(commit, 0.99):.1f} | "
            f"{max(commit, default=float('nan')):.0f} | "
            f"{statistics.median(x for r in rs for x in r.idle_get_ms):.2f} | {_pct(gets, 0.5):.2f} | "
            f"{_pct(gets, 0.99):.1f} | {_pct([x for r in rs for x in r.done_keys_ms], 0.5):.2f} | "
            f"{sum(r.stored for r in rs)} / {sum(r.writers * r.rows for r in rs)} | "
            f"{sum(len(r.errors) for r in rs)} |"
        )
    for r in runs:
        for error in r.errors[:3]:
            print(f"error ({r.backend}, {r.writers} writers): {error}")


# ----- 2. one study, several search workers ----------------------------------------------------
def counted_accuracy(arch) -> float:
    """The search's objective: trivial, and it logs each evaluation (to count duplicates)."""
    log = os.environ.get(EVAL_LOG_ENV)
    if log:
        with open(Path(log) / f"{os.getpid()}.jsonl", "a") as fh:
            fh.write(json.dumps([int(v) for v in arch]) + "\n")
    return float(sum(arch))


@dataclass
class SearchRun:
    backend: str
    workers: int
    budget: int
    returncodes: list[int]
    numbers: list[int]  # stored trial numbers, sorted
    claims_left: int
    evaluations: int  # objective calls, all workers
    over_evaluated: int  # architectures evaluated more often than trials hold them
    per_worker: list[int]  # trials stored by each worker
    search_s: float  # study created -> last trial stored
    all_in_per_s: float  # trials/s while every worker was storing (NaN: one finished before another began)
    wall_s: float  # processes started -> all exited
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return (
            all(rc == 0 for rc in self.returncodes)
            and self.numbers == list(range(self.budget))
            and self.claims_left == 0
            and self.over_evaluated == 0
        )


def search_run(db: str, kind: str, workers: int, budget: int, predictor: Path, tmp: Path) -> SearchRun:
    """``workers`` processes of ``hwlat search --worker`` on one new study."""
    study = f"bench-{kind}-{workers}"
    evals = tmp / f"evals-{study}"
    evals.mkdir()
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
        "benchmarks.bench_store:counted_accuracy",
        "--budget",
        str(budget),
        "--db",
        db,
        "--study",
        study,
        "--worker",
        "--top",
        "0",
        "--no-progress",
    ]
    env = {**os.environ, EVAL_LOG_ENV: str(evals)}
    started = time.time()
    procs = [
        subprocess.Popen(
            [*argv, "-o", str(tmp / f"out-{study}-{i}")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    wall = time.time() - started
    with Store(db, readonly=True) as store, store.engine.connect() as conn:
        s, t, c = schema.studies, schema.trials, schema.trial_claims
        study_id, created = conn.execute(sa.select(s.c.id, s.c.created_at).where(s.c.name == study)).one()
        rows = conn.execute(
            sa.select(t.c.number, t.c.arch, t.c.worker, t.c.created_at).where(t.c.study_id == study_id)
        ).all()
        claims_left = conn.execute(
            sa.select(sa.func.count()).select_from(c).where(c.c.study_id == study_id)
        ).scalar_one()
    firsts: dict[str, float] = {}
    lasts: dict[str, float] = {}
    for r in rows:
        firsts[r.worker] = min(firsts.get(r.worker, r.created_at), r.created_at)
        lasts[r.worker] = max(lasts.get(r.worker, r.created_at), r.created_at)
    start, end = max(firsts.values(), default=0.0), min(lasts.values(), default=0.0)
    in_window = sum(start < r.created_at <= end for r in rows)
    all_in = in_window / (end - start) if len(firsts) == workers and end > start else float("nan")
    calls = Counter(line for f in evals.iterdir() for line in f.read_text().splitlines())
    held = Counter(json.dumps(json.loads(r.arch)) for r in rows)
    return SearchRun(
        kind,
        workers,
        budget,
        [p.returncode for p in procs],
        sorted(r.number for r in rows),
        claims_left,
        evaluations=sum(calls.values()),
        over_evaluated=sum(1 for arch, n in calls.items() if n > held[arch]),
        per_worker=sorted(Counter(r.worker for r in rows).values(), reverse=True),
        search_s=max((r.created_at for r in rows), default=created) - created,
        all_in_per_s=all_in,
        wall_s=wall,
        stderr="".join(errs),
    )


def print_search(runs: list[SearchRun]) -> None:
    print(
        "\n| store | workers | trials | trials/s (study created -> last trial) | trials/s while all workers "
        "stored | wall s (with start-up) | trials per worker | objective calls | each number once, none "
        "lost | no claim left | none evaluated twice |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        rate = len(r.numbers) / r.search_s if r.search_s > 0 else float("nan")
        print(
            f"| {r.backend} | {r.workers} | {len(r.numbers)} | {rate:.0f} | {r.all_in_per_s:.0f} | "
            f"{r.wall_s:.1f} | "
            f"{'/'.join(map(str, r.per_worker))} | {r.evaluations} | "
            f"{r.numbers == list(range(r.budget))} | {r.claims_left == 0} | {r.over_evaluated == 0} |"
        )
    for r in runs:
        if not r.ok:
            print(f"FAILED ({r.backend}, {r.workers} workers): exit {r.returncodes}; {r.stderr[-2000:]}")


# ----- 3. leases -------------------------------------------------------------------------------
def lease_round_trips(db: str, n: int) -> list[float]:
    """Milliseconds to take and give back a free device's lease, ``n`` times in one process."""
    out = []
    with Store(db) as store:
        for _ in range(n):
            t = time.perf_counter()
            with DeviceLease(store, "bench-rt", "bench_store", wait=False):
                pass
            out.append((time.perf_counter() - t) * 1e3)
    return out


def _holder(db: str, hold_s: float, ready, events) -> None:
    with Store(db) as store:
        with DeviceLease(store, "bench-handover", "bench_store holder", wait=False):
            ready.set()
            time.sleep(hold_s)
        events.put(("released", time.time()))


def _waiter(db: str, events) -> None:
    with Store(db) as store:
        started = time.time()
        with DeviceLease(store, "bench-handover", "bench_store waiter", report_every_s=3600):
            events.put(("acquired", time.time(), started))


@dataclass
class Handover:
    how: str  # "released" or "killed"
    waited_s: float  # the waiter's whole wait
    handover_s: float  # holder gone -> waiter holds it


def handover(db: str, how: str, hold_s: float = 1.5) -> Handover:
    """A second campaign waits for the device; the holder releases it (or is SIGKILLed)."""
    events, ready = _MP.Queue(), _MP.Event()
    holder = _MP.Process(target=_holder, args=(db, 3600.0 if how == "killed" else hold_s, ready, events))
    holder.start()
    ready.wait(timeout=60)
    waiter = _MP.Process(target=_waiter, args=(db, events))
    waiter.start()
    gone = None
    if how == "killed":
        time.sleep(hold_s)
        gone = time.time()
        os.kill(holder.pid, signal.SIGKILL)
    got: dict = {}
    while "acquired" not in got or (how == "released" and "released" not in got):
        event, *times = events.get(timeout=120)
        got[event] = times
    holder.join(timeout=60)
    waiter.join(timeout=60)
    acquired, started = got["acquired"]
    gone = got["released"][0] if how == "released" else gone
    return Handover(how, acquired - started, acquired - gone)


def print_leases(rows: list[tuple[str, list[float], list[Handover]]]) -> None:
    print(
        "\n| store | acquire+release ms p50 | p90 | max | hand-over after release s, median | max | "
        "hand-over after SIGKILL s, median | max | waiter polls every |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    poll = inspect.signature(DeviceLease).parameters["poll_s"].default  # what a campaign waits with
    for kind, rts, hos in rows:
        rel = [h.handover_s for h in hos if h.how == "released"]
        kil = [h.handover_s for h in hos if h.how == "killed"]
        print(
            f"| {kind} | {_pct(rts, 0.5):.2f} | {_pct(rts, 0.9):.2f} | {max(rts):.2f} | "
            f"{statistics.median(rel):.2f} | {max(rel):.2f} | {statistics.median(kil):.2f} | "
            f"{max(kil):.2f} | {poll:g} s |"
        )


# ----- driver ----------------------------------------------------------------------------------
@contextmanager
def stores(kinds: list[str], tmp: Path) -> Iterator[dict]:
    """``{"sqlite": new_db(), "postgresql": new_db()}``: each call gives a new empty store."""
    from tests.pg_fixtures import PrivatePostgres, pg_available

    made: dict = {}
    server = None
    counter = itertools.count()
    if "sqlite" in kinds:
        made["sqlite"] = lambda: str(tmp / f"s{next(counter)}.db")
    if "postgresql" in kinds:
        reason = pg_available()
        if reason:
            print(f"PostgreSQL skipped: {reason}", file=sys.stderr)
        else:
            server = PrivatePostgres(fsync=True)
            made["postgresql"] = server.create_database
    try:
        yield made
    finally:
        if server is not None:
            server.stop()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min), {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rows", type=int, default=100, help="measurements per writer")
    parser.add_argument("--repeats", type=int, default=3, help="fresh stores per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--budget", type=int, default=1000, help="trials per study")
    parser.add_argument("--leases", type=int, default=50, help="lease round trips")
    parser.add_argument("--handovers", type=int, default=3, help="hand-overs of each kind")
    parser.add_argument("--skip-writes", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-leases", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    os.environ.setdefault("HWLAT_CACHE", str(tmp / "cache"))
    print(f"load before: {load()}")
    failed = False
    with stores(args.stores, tmp) as new_db:
        if not args.skip_writes:
            runs = []
            for kind, writers, rep in itertools.product(new_db, args.writers, range(args.repeats)):
                runs.append(write_run(new_db[kind](), kind, writers, args.rows))
                print(f"{kind} {writers} writers #{rep}: {runs[-1].per_s:.0f}/s", file=sys.stderr)
            print(f"\n## Writes: {args.rows} measurements per writer, {args.repeats} repeats (load {load()})")
            print_writes(runs)
            failed |= any(r.errors or r.stored != r.writers * r.rows for r in runs)
        if not args.skip_search:
            from tests.synthetic import synthetic_predictor

            predictor = synthetic_predictor(200).save(tmp / "predictor.json")
            sruns = []
            for kind, workers in itertools.product(new_db, args.workers):
                sruns.append(search_run(new_db[kind](), kind, workers, args.budget, predictor, tmp))
                print(f"{kind} {workers} workers: {sruns[-1].search_s:.1f} s", file=sys.stderr)
            print(f"\n## Search: one study, {args.budget} trials, evolution (load {load()})")
            print_search(sruns)
            failed |= not all(r.ok for r in sruns)
        if not args.skip_leases:
            rows = []
            for kind in new_db:
                db = new_db[kind]()
                Store(db).close()
                hos = [handover(db, how) for how in ("released", "killed") for _ in range(args.handovers)]
                rows.append((kind, lease_round_trips(db, args.leases), hos))
            print(f"\n## Leases: {args.leases} round trips, {args.handovers} hand-overs each (load {load()})")
            print_leases(rows)
    print(f"\nload after: {load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
