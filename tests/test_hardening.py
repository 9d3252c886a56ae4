"""Bad input, one clear error, nothing lost (issue 14): numeric arguments, predictor files, table
imports and unreachable SSH hosts, each through the real ``hwlat`` command. Every case exits 2
with one ``hwlat: error:`` line that names the problem and the fix, no traceback, and leaves the
store's measurements as they were."""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hwlat import cli as hwlat_cli
from hwlat.errors import EXIT_ERROR
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.store import Store
from tests.synthetic import synthetic_predictor


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = hwlat_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_hwlat(*argv: str | Path) -> tuple[int, str, str]:
    """The command in a fresh process, as a user runs it (its own logging set-up, nothing shared)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hwlat.cli", *map(str, argv)], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_error_line(status: int, err: str, *words: str) -> str:
    """Exit 2, stderr is exactly one ``hwlat: error:`` line holding ``words``; returns the line."""
    lines = err.strip().splitlines()
    assert status == EXIT_ERROR, err
    assert len(lines) == 1 and lines[0].startswith("hwlat: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_with_rows(tmp_path) -> Path:
    """A store holding two measurements that no refused command may change."""
    path = tmp_path / "kept.db"
    with Store(path) as store:
        for key in ("add-in:1x8x8x8-bcast:none-dtype:float32", "block-a"):
            store.save(Measurement(device="local", backend="ort", key=key, samples_ms=[1.0, 1.1, 0.9]))
    return path


def stored_rows(path: Path) -> list[tuple]:
    with Store(path, readonly=True) as store:
        return sorted((m.device, m.backend, m.kind, m.key, tuple(m.samples_ms)) for m in store.measurements())


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory) -> Path:
    return synthetic_predictor().save(tmp_path_factory.mktemp("pred") / "p.json")


# ----- 1. numeric arguments ---------------------------------------------------------------------
def _commands(parser: argparse.ArgumentParser, prefix: str = "hwlat"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def test_no_numeric_option_takes_a_bare_int_or_float() -> None:
    """Every number the CLI reads goes through a range-checked type (options.integer/number)."""
    bare = [
        f"{name} {action.option_strings[0]}"
        for name, parser in _commands(hwlat_cli.build_parser())
        for action in parser._actions
        if action.type in (int, float)
    ]
    assert bare == []


BAD_NUMBERS = [
    (["search", "--budget", "0"], "--budget", "whole number >= 1"),
    (["search", "--budget", "-1"], "--budget", "whole number >= 1"),
    (["search", "--budget", "1.5"], "--budget", "not a whole number"),
    (["search", "--latency-ms", "inf"], "--latency-ms", "finite number > 0"),
    (["search", "--latency-ms", "nan"], "--latency-ms", "finite number > 0"),
    (["search", "--latency-ms", "0"], "--latency-ms", "finite number > 0"),
    (["search", "--latency-ms", "-3"], "--latency-ms", "finite number > 0"),
    (["search", "--noise-band", "-0.1"], "--noise-band", "finite number >= 0"),
    (["search", "--verify-repeats", "0"], "--verify-repeats", "whole number >= 1"),
    (["search", "--seed", "-1"], "--seed", "whole number >= 0"),
    (["search", "--repeat", "-2"], "--repeat", "whole number >= 1"),
    (["search", "--min-repeat-ms", "nan"], "--min-repeat-ms", "finite number > 0"),
    (["profile", "--adaptive", "--budget-minutes", "0"], "--budget-minutes", "finite number > 0"),
    (["profile", "--adaptive", "--budget-minutes", "1e400"], "--budget-minutes", "finite number > 0"),
    (["profile", "--ops", "x.jsonl", "--repeat", "-1"], "--repeat", "whole number >= 1"),
    (["profile", "--ops", "x.jsonl", "--cooldown-ms", "-5"], "--cooldown-ms", "finite number >= 0"),
    (["profile", "--ops", "x.jsonl", "--tune-trials", "0"], "--tune-trials", "whole number >= 1"),
    (["profile", "--space", "proxyless", "--resolution", "0"], "--resolution", "whole number >= 1"),
    (["measure", "m.onnx", "--min-repeat-ms=-inf"], "--min-repeat-ms", "finite number > 0"),
    (["train", "-o", "p.json", "--calibration-networks", "0"], "--calibration-networks", ">= 1"),
    (["train", "-o", "p.json", "--sampled-kernels", "-1"], "--sampled-kernels", ">= 0"),
    (["validate", "--predictor", "p.json", "--models", ".", "--repeats", "0"], "--repeats", ">= 1"),
    (["quickstart", "--evaluations", "0"], "--evaluations", "whole number >= 1"),
    (["quickstart", "--latency-ms", "inf"], "--latency-ms", "finite number > 0"),
    (
        ["compress", "--model", "m.onnx", "--predictor", "p.json", "--out", "o", "--episodes", "0"],
        "--episodes",
        ">= 1",
    ),
    (
        ["compress", "--model", "m.onnx", "--predictor", "p.json", "--out", "o", "--lbound", "1.5"],
        "--lbound",
        "<= 1",
    ),
    (
        ["compress", "--model", "m.onnx", "--predictor", "p.json", "--out", "o", "--memory-mb", "nan"],
        "--memory-mb",
        "> 0",
    ),
    (["quantize", "m.onnx", "-o", "q.onnx", "--random", "0"], "--random", "whole number >= 1"),
    (["table", "export", "--space", "nb201", "-o", "t.csv", "--resolution", "-32"], "--resolution", ">= 1"),
]


@pytest.mark.parametrize(("argv", "option", "fix"), BAD_NUMBERS, ids=[" ".join(c[0]) for c in BAD_NUMBERS])
def test_a_number_out_of_range_is_one_config_error(argv, option, fix, store_with_rows, capsys) -> None:
    before = digest(store_with_rows)
    needs = {"search": ["--space", "nb201", "--predictor", "p.json", "-o", "out"]}.get(argv[0], [])
    if argv[0] == "search" and "--latency-ms" not in argv:
        needs = [*needs, "--latency-ms", "5"]
    db = ["--db", str(store_with_rows)] if argv[0] in ("search", "profile", "train", "measure") else []
    status, _, err = run_cli(capsys, *argv, *needs, *db)
    line = assert_one_error_line(status, err, option, fix, f"see hwlat {argv[0]}")
    assert "usage:" not in line
    assert digest(store_with_rows) == before


def test_a_missing_argument_is_one_line_too(capsys) -> None:
    status, _, err = run_cli(capsys, "search", "--space", "nb201")
    assert_one_error_line(status, err, "required", "--predictor", "see hwlat search --help")


def test_an_inventory_timeout_that_is_not_finite_is_refused_with_file_and_line(tmp_path, capsys) -> None:
    inventory = tmp_path / "devices.toml"
    inventory.write_text('[devices.pi]\nhost = "10.0.0.9"\nconnect_timeout_s = nan\n')
    status, _, err = run_cli(capsys, "devices", "list", "--inventory", inventory)
    assert_one_error_line(status, err, f"{inventory}:3", "connect_timeout_s", "finite number of seconds")


# ----- 2. predictor files -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from onnx import TensorProto, helper

    from hwlat.profiler.onnx_models import make_model

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
    )
    path = tmp_path_factory.mktemp("model") / "relu.onnx"
    path.write_bytes(make_model(graph).SerializeToString())
    return path


def _edit(data: dict, change: str) -> None:
    regressor = data["regressor"]
    tree = regressor["models"]["all"]["trees"]["trees"][0]
    if change == "no table":
        del data["table"]
    elif change == "entry not a number":
        data["table"]["entries"]["conv-in:1x8x8x8"] = "fast"
    elif change == "overhead nan":
        data["table"]["overhead"]["intercept_ms"] = float("nan")
    elif change == "older features":
        regressor["features"] = regressor["features"][:-1]
    elif change == "tree loops":
        split = next(i for i, f in enumerate(tree["feature"]) if f >= 0)
        tree["left"][split] = split
    elif change == "feature index out of range":
        tree["feature"][0] = 10_000
    elif change == "kind":
        data["kind"] = "neural"
    elif change == "old version":
        data["version"] = 0
    elif change == "unknown regressor parameter":
        regressor["params"]["depth"] = 3
    elif change == "roofline zero":
        data["roofline"] = {"gflops": 0, "gbps": 8.0}


PREDICTOR_DAMAGE = [
    ("no table", "missing field table"),
    ("entry not a number", "table.entries['conv-in:1x8x8x8']: expected a finite number"),
    ("overhead nan", "table.overhead.intercept_ms: expected a finite number, found nan"),
    ("older features", "regressor.features: the kernel regressor was trained on the features of another"),
    ("tree loops", "a split's child must come after it"),
    ("feature index out of range", "regressor.models.all.trees.trees[0].feature[0]: expected a whole number"),
    ("kind", "kind: expected one of 'lut', 'gbdt', found 'neural'"),
    ("old version", "predictor format version 0"),
    ("unknown regressor parameter", "regressor.params: unknown fields depth"),
    ("roofline zero", "roofline.gflops"),
]


@pytest.mark.parametrize(("change", "words"), PREDICTOR_DAMAGE, ids=[c for c, _ in PREDICTOR_DAMAGE])
def test_a_damaged_predictor_file_is_one_format_error_naming_the_field(
    change, words, predictor_file, small_model, tmp_path, capsys
) -> None:
    data = json.loads(predictor_file.read_text())
    _edit(data, change)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    status, out, err = run_cli(capsys, "predict", small_model, "--predictor", bad)
    assert_one_error_line(status, err, str(bad), words, "train it again with hwlat train")
    assert out == ""


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (None, "not readable JSON"),  # the real file, truncated
        ("[" * 100_000, "not readable JSON"),
        ('{"format": "hwlat-latency-predictor", "version": 1, "n": ' + "9" * 5000 + "}", "not readable JSON"),
        ("[1, 2]", "is not an hwlat latency predictor"),
        ("\xff\xfe garbage", "not readable JSON"),
    ],
    ids=["truncated", "deeply nested", "a 5000-digit number", "a JSON list", "not UTF-8"],
)
def test_a_predictor_file_that_is_not_json_is_one_format_error(
    text, words, predictor_file, small_model, tmp_path, capsys
) -> None:
    bad = tmp_path / "bad.json"
    if text is None:
        bad.write_bytes(predictor_file.read_bytes()[:5000])
    else:
        bad.write_bytes(text.encode("latin-1"))
    status, _, err = run_cli(capsys, "predict", small_model, "--predictor", bad)
    assert_one_error_line(status, err, str(bad), words)


# ----- 3. table import --------------------------------------------------------------------------
GOOD_ROWS = "key,mean_ms,std_ms,count\nblock-x,1.5,0.1,10\nblock-y,2.5,0.2,10\n"

BAD_TABLES = [
    ("t.csv", GOOD_ROWS + "block-z,1.0,0.1,1e400\n", "t.csv:4", "count must be a whole number"),
    ("t.csv", GOOD_ROWS + "block-z,1.0,0.1,-3\n", "t.csv:4", "count must be a whole number"),
    ("t.csv", GOOD_ROWS + "block-z,1.0,0.1,2.5\n", "t.csv:4", "count must be a whole number"),
    ("t.csv", GOOD_ROWS + "block-z,inf,0.1,1\n", "t.csv:4", "mean and std must be finite and >= 0"),
    ("t.csv", GOOD_ROWS + "block-z,nan,0.1,1\n", "t.csv:4", "mean and std must be finite and >= 0"),
    ("t.csv", GOOD_ROWS + "block-z,-1,0.1,1\n", "t.csv:4", "mean and std must be finite and >= 0"),
    ("t.csv", GOOD_ROWS + "block-z,1e400,0,1\n", "t.csv:4", "mean and std must be finite and >= 0"),
    ("t.csv", GOOD_ROWS + "block-x,9.9,0.1,1\n", "t.csv:4", "'block-x' is given twice (first on line 2)"),
    ("t.csv", GOOD_ROWS + " block-z,1,0,1\n", "t.csv:4", "' block-z' is not a block key"),
    ("t.csv", GOOD_ROWS + '"block\tz",1,0,1\n', "t.csv:4", "'block\\tz' is not a block key"),
    ("t.csv", GOOD_ROWS + ",1,0,1\n", "t.csv:4", "'' is not a block key"),
    ("t.csv", GOOD_ROWS + "conv-in:1x3x8-out:8,1,0,1\n", "t.csv:4", "key 'conv-in:1x3x8-out:8'"),
    (
        "t.json",
        '{"entries": {\n "block-x": {"mean": 1.5},\n "block-y": {"mean": 1e400}\n}}',
        "t.json",
        "mean and std must be finite",
    ),
    ("t.json", '{"entries": {"block-x": {"mean": NaN}}}', "t.json", "mean and std must be finite"),
    ("t.json", '{"entries": {"block-x": {"mean": 1, "count": 1e400}}}', "t.json", "count must be a whole"),
    ("t.json", '{"entries": {"block-x": {"mean": true}}}', "t.json", "must be numbers"),
    ("t.json", '{"entries": {"block-\\ud800": {"mean": 1}}}', "t.json", "is not a block key"),
    (
        "t.json",
        '{"entries": {\n "block-x": {"mean": 1.5},\n "block-y": {"mean": 2},\n "block-x": {"mean": 3}\n}}',
        "t.json:4",
        "'block-x' is given twice (first on line 2)",
    ),
    ("t.json", '{"entries": {"block-x": {"mean": 1, "mean": 2}}}', "t.json", "'mean' is given twice"),
    ("t.json", '{"entries": ' * 50_000, "t.json", "not readable JSON"),
    ("t.yaml", "block-x:\n  mean: 1.5\n  count: 1e400\n", "t.yaml:1", "count must be a whole number"),
    ("t.yaml", "block-x:\n  mean: .inf\n", "t.yaml:1", "mean and std must be finite"),
    ("t.yaml", "123:\n  mean: 1.5\n", "t.yaml:1", "123 is not a block key"),
    ("t.yaml", "[" * 50_000, "t.yaml", "not readable YAML"),
]


@pytest.mark.parametrize(
    ("name", "text", "where", "words"),
    BAD_TABLES,
    ids=[f"{n} {w}" for n, _, w, w2 in BAD_TABLES for w in [w2]],
)
def test_a_bad_table_is_refused_whole_and_the_store_is_unchanged(
    name, text, where, words, store_with_rows, tmp_path, capsys
) -> None:
    table = tmp_path / name
    table.write_text(text, encoding="utf-8")
    rows, before = stored_rows(store_with_rows), digest(store_with_rows)
    status, out, err = run_cli(capsys, "table", "import", table, "--device", "local", "--db", store_with_rows)
    assert_one_error_line(status, err, f"{tmp_path}/{where}", words)
    assert out == ""
    assert stored_rows(store_with_rows) == rows  # nothing imported, not even block-x before the bad line
    assert digest(store_with_rows) == before


def test_a_good_table_imports_every_entry(store_with_rows, tmp_path, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text(GOOD_ROWS)
    status, out, err = run_cli(capsys, "table", "import", table, "--device", "phone", "--db", store_with_rows)
    assert status == 0, err
    assert "imported 2 blocks" in out
    with Store(store_with_rows, readonly=True) as store:
        blocks = {m.key: m.extra for m in store.measurements(device="phone", kind="block")}
    assert blocks == {
        "block-x": {"mean_ms": 1.5, "std_ms": 0.1, "count": 10, "source": str(table)},
        "block-y": {"mean_ms": 2.5, "std_ms": 0.2, "count": 10, "source": str(table)},
    }


def test_an_import_whose_write_fails_half_way_stores_nothing(store_with_rows, tmp_path, capsys) -> None:
    """A real SQLite trigger refuses the third row, as a full disk would: the first two roll back."""
    import sqlite3

    with sqlite3.connect(store_with_rows) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON measurements WHEN NEW.key = 'block-z' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    table = tmp_path / "t.csv"
    table.write_text(GOOD_ROWS + "block-z,3.5,0.1,10\n")
    rows = stored_rows(store_with_rows)
    status, out, err = run_cli(capsys, "table", "import", table, "--device", "local", "--db", store_with_rows)
    assert_one_error_line(status, err, "cannot write to the store", "database or disk is full", "re-run")
    assert stored_rows(store_with_rows) == rows


# ----- 4. SSH hosts that cannot be reached ------------------------------------------------------
class TinyServer:
    """A TCP listener on loopback that does one thing with every connection: close it at once,
    send a line that is not an SSH greeting and close, or say nothing and hold it open."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if self.behaviour == "hold":
                self.held.append(conn)
                continue
            if self.behaviour == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "behaviour", "words"),
    [
        ("profile", "close", "closed the connection without an SSH greeting; is 'port' the SSH port"),
        ("measure", "close", "closed the connection without an SSH greeting; is 'port' the SSH port"),
        ("profile", "garbage", "closed the connection without an SSH greeting"),
        ("profile", "hold", "did not answer within 1 s"),
        ("profile", "refuse", "connection refused by 127.0.0.1"),
    ],
)
def test_an_ssh_host_that_is_not_there_is_one_line_naming_device_and_host(
    command, behaviour, words, store_with_rows, small_model, tmp_path
) -> None:
    server = TinyServer(behaviour) if behaviour != "refuse" else None
    port = server.port if server else _closed_port()
    inventory, ops = tmp_path / "devices.toml", tmp_path / "ops.jsonl"
    inventory.write_text(
        f'[devices.pi]\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout_s = 1\n'
        f'known_hosts = "{tmp_path}/known_hosts"\n'
    )
    ops.write_text('{"op": "add", "input_shape": [1, 8, 8, 8]}\n')
    rows = stored_rows(store_with_rows)
    what = ["--ops", ops] if command == "profile" else [small_model]
    try:
        status, _, err = run_hwlat(
            command, *what, "--device", "pi", "--inventory", inventory, "--db", store_with_rows
        )
    finally:
        if server:
            server.close()
    assert_one_error_line(status, err, "device 'pi'", f"127.0.0.1:{port}", words)
    assert "paramiko" not in err
    assert stored_rows(store_with_rows) == rows
