"""benchmarks/bench_store.py at its tiniest, so that it keeps running (its numbers are not checked)."""

from __future__ import annotations

import pytest

from benchmarks import bench_store
from hwlat.profiler.store import Store
from hwlat.profiler.store.leases import ttl_s


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_one_writer_commits_every_row_while_a_reader_reads(kind, tmp_path, request, capsys) -> None:
    db = request.getfixturevalue("pg_url") if kind == "postgresql" else str(tmp_path / "w.db")
    run = bench_store.write_run(db, kind, writers=1, rows=4, prefill=3)
    assert (run.committed, run.stored, run.errors) == (4, 4, [])
    assert len(run.commit_ms) == 4 and run.idle_get_ms and run.get_ms and run.done_keys_ms
    bench_store.print_writes([run])
    assert f"| {kind} | 1 | 4 |" in capsys.readouterr().out


def test_one_search_worker_stores_each_trial_once(tmp_path, capsys) -> None:
    from tests.synthetic import synthetic_predictor

    predictor = synthetic_predictor(100).save(tmp_path / "p.json")
    run = bench_store.search_run(str(tmp_path / "s.db"), "sqlite", 1, 6, predictor, tmp_path)
    assert run.ok, run.stderr
    assert run.numbers == list(range(6)) and run.per_worker == [6] and 0 < run.evaluations <= 6
    bench_store.print_search([run])
    assert "| sqlite | 1 | 6 |" in capsys.readouterr().out


def test_lease_round_trips_and_hand_overs(tmp_path, capsys) -> None:
    db = str(tmp_path / "l.db")
    Store(db).close()
    trips = bench_store.lease_round_trips(db, 2)
    released = bench_store.handover(db, "released", hold_s=0.3)
    killed = bench_store.handover(db, "killed", hold_s=0.3)
    assert len(trips) == 2
    for h in (released, killed):  # the waiter got the device after the holder was gone, not before
        assert 0 < h.handover_s <= h.waited_s
    assert killed.handover_s < ttl_s()  # a dead holder is seen, not waited out
    bench_store.print_leases([("sqlite", trips, [released, killed])])
    assert "| sqlite |" in capsys.readouterr().out
