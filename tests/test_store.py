"""Store: rows round-trip, resume bookkeeping, export, and clear errors."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from hwlat.errors import ConfigError
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.store import Store, StoreError


def make(key: str, samples=(1.0, 2.0, 3.0), **kw) -> Measurement:
    return Measurement(
        device="local",
        backend="ort",
        key=key,
        samples_ms=list(samples),
        number=10,
        settings={"threads": 1},
        host={"cpu_model": "x"},
        **kw,
    )


def test_round_trip_and_stats(tmp_path) -> None:
    with Store(tmp_path / "m.db") as store:
        store.save(make("a", samples=(1.0, 2.0, 3.0, 4.0, 5.0), disturbed=True, disturbance="canary"))
        got = store.get("local", "ort", "a")
    assert got is not None
    assert got.samples_ms == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert got.median_ms == 3.0
    assert got.p10_ms == pytest.approx(1.4) and got.p90_ms == pytest.approx(4.6)
    assert got.disturbed and got.disturbance == "canary"
    assert got.settings == {"threads": 1} and got.host == {"cpu_model": "x"}


def test_wal_and_one_row_per_key(tmp_path) -> None:
    path = tmp_path / "m.db"
    with Store(path) as store:
        store.save(make("a"))
        store.save(make("a", samples=(5.0,)))
        assert store.count() == 1
        assert store.get("local", "ort", "a").samples_ms == [5.0]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_done_keys_skip_clean_and_failed_but_not_disturbed(tmp_path) -> None:
    with Store(tmp_path / "m.db") as store:
        store.save(make("clean"))
        store.save(make("shaky", disturbed=True))
        store.save(make("broken", samples=(), status="failed", error_msg="boom"))
        store.save(Measurement(device="other", backend="ort", key="elsewhere"))
        assert store.done_keys("local", "ort") == {"clean", "broken"}
        assert [m.key for m in store.measurements(device="local", clean_only=True)] == ["clean"]


def test_canary_reference_keeps_the_fastest(tmp_path) -> None:
    with Store(tmp_path / "m.db") as store:
        settings = {"threads": 1}
        assert store.canary_reference("local", "ort", settings) is None
        store.update_canary_reference("local", "ort", settings, 0.30)
        store.update_canary_reference("local", "ort", settings, 0.35)
        store.update_canary_reference("local", "ort", settings, 0.25)
        assert store.canary_reference("local", "ort", settings) == 0.25
        assert store.canary_reference("local", "ort", {"threads": 2}) is None


def test_export_csv_and_json(tmp_path) -> None:
    with Store(tmp_path / "m.db") as store:
        store.save(make("a"))
        store.save(make("b", samples=(4.0,)))
        assert store.export(tmp_path / "m.csv", "csv") == 2
        assert store.export(tmp_path / "m.json", "json", device="local") == 2
        with pytest.raises(ConfigError, match="unknown export format 'xml'"):
            store.export(tmp_path / "m.xml", "xml")
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [r["key"] for r in rows] == ["a", "b"]
    assert json.loads(rows[0]["samples_ms"]) == [1.0, 2.0, 3.0]
    data = json.loads((tmp_path / "m.json").read_text())
    assert data[1]["median_ms"] == 4.0 and data[1]["host"] == {"cpu_model": "x"}


def test_bad_paths_say_what_to_do(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist; create it or pass --db"):
        Store(tmp_path / "missing" / "m.db")
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite " * 100)
    with pytest.raises(StoreError, match="not a usable hwlat database"):
        Store(junk)
