"""Generated malformed inputs (seeded, small, fast): OpSpec lines, ONNX files and other programs'
SQLite files. Each is refused with the error hwlat names for it, or skipped with a message where
the command is lenient, and never raises anything else; nothing already stored changes."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import TensorProto, helper, numpy_helper

from hwlat import cli as hwlat_cli
from hwlat.errors import EXIT_ERROR, EXIT_FAILED, HwlatError, ModelFileError
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.onnx_models import load_model, make_model
from hwlat.profiler.opspec import InvalidOpSpecError, OpSpec, read_jsonl
from hwlat.profiler.store import Store
from tests.synthetic import synthetic_predictor

SEED = 14

# ----- OpSpec lines -----------------------------------------------------------------------------
VALID = [
    {"op": "conv", "input_shape": [1, 16, 28, 28], "out_channels": 32, "kernel": 3, "padding": 1},
    {"op": "conv", "input_shape": [1, 32, 14, 14], "out_channels": 32, "kernel": 3, "groups": 32},
    {"op": "gemm", "input_shape": [1, 256], "out_channels": 10, "bias": True, "activation": "relu"},
    {"op": "add", "input_shape": [1, 8, 8, 8], "broadcast": "channel"},
    {"op": "concat", "input_shape": [1, 24, 7, 7], "parts": [8, 16]},
    {"op": "maxpool", "input_shape": [1, 8, 16, 16], "kernel": 3, "stride": 2, "padding": 1},
    {"op": "act", "input_shape": [1, 8, 4, 4], "activation": "hardswish"},
    {"op": "conv", "input_shape": [1, 16, 8, 8], "out_channels": 16, "kernel": 1, "dtype": "int8"},
    {"key": OpSpec("shuffle", (1, 32, 14, 14), groups=2).key},
]
WRONG_TYPES = [None, True, False, "3", "", 3.5, -1, 0, [], {}, [[1]], {"a": 1}, "\u00fc", 1e308]
# Whole numbers, the last (as JSON text) beyond Python's 4300-digit limit for int(): json.loads
# refuses it, and json.dumps cannot write it, so it goes into the line as text.
HUGE = [10**30, 2**63, -(2**63), 10**300, 10**999, -(10**20), 2**64 + 1, "9" * 5000]
_DIGITS = "@@digits@@"
WEIRD_TEXT = ["\u202econv", "c\u00f6nv", "conv\u0000", "\ud800", "\U0001f600", "relu\n6", "x" * 10_000]


def _fields(data: dict) -> list[str]:
    return list(data)


def mutate(rng: random.Random) -> tuple[str, bytes]:
    """One malformed line: (what was done, the line's bytes)."""
    data = json.loads(json.dumps(rng.choice(VALID)))
    kind = rng.choice(
        [
            "wrong type",
            "huge",
            "unicode",
            "nested",
            "truncated",
            "missing",
            "unknown",
            "bytes",
            "not an object",
        ]
    )
    field = rng.choice(_fields(data))
    digits = None
    if kind == "wrong type":
        keys = ["", "conv", "\u00fc", "conv-in:1x", 5, None]
        data[field] = rng.choice(WRONG_TYPES if field != "key" else keys)
    elif kind == "huge":
        numeric = [f for f in data if isinstance(data[f], (int, list)) and not isinstance(data[f], bool)]
        if numeric:
            f = rng.choice(numeric)
            value = rng.choice(HUGE)
            digits, value = (value, _DIGITS) if isinstance(value, str) else (None, value)
            if isinstance(data[f], list) and data[f]:
                data[f][rng.randrange(len(data[f]))] = value
            else:
                data[f] = value
        else:  # a key: a huge size inside it
            data[field] = data[field].replace("in:1x", f"in:{rng.choice(HUGE)}x", 1)
    elif kind == "unicode":
        texts = [f for f in data if isinstance(data[f], str)]
        data[rng.choice(texts)] = rng.choice(WEIRD_TEXT)
    elif kind == "nested":
        depth = rng.choice([2, 50, 5_000, 100_000])
        if field == "key":
            return kind, ("[" * depth + json.dumps(data) + "]" * depth).encode()
        return kind, json.dumps(data).replace(
            json.dumps(data[field]), "[" * depth + "1" + "]" * depth, 1
        ).encode()
    elif kind == "missing":
        del data[field]
    elif kind == "unknown":
        data[rng.choice(["kernel_size", "Op", "stride ", "\u00fc"])] = 1
    elif kind == "not an object":
        return kind, json.dumps(rng.choice([list(data.values()), field, 7, None])).encode()
    line = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if kind == "huge" and digits:
        line = line.replace(f'"{_DIGITS}"'.encode(), digits.encode())
    if kind == "truncated":
        line = line[: rng.randrange(1, len(line))]
    elif kind == "bytes":
        noisy = bytearray(line)
        for _ in range(rng.randint(1, 4)):
            noisy[rng.randrange(len(noisy))] = rng.randrange(128, 256)
        line = bytes(noisy)
    return kind, line


def mutants(n: int) -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    found = []
    while len(found) < n:
        kind, line = mutate(rng)
        text = line.decode("utf-8", "replace").strip()
        if text and not text.startswith("#") and b"\n" not in line and b"\r" not in line:
            found.append((kind, line))
    return found


def classify(tmp_path: Path, lines: list[tuple[str, bytes]]) -> tuple[list[int], list[int]]:
    """(refused, read) line indices, each line read alone in strict mode: only InvalidOpSpecError
    naming the file and line may come out."""
    refused, read = [], []
    for i, (_, line) in enumerate(lines):
        path = tmp_path / f"one-{i}.jsonl"
        path.write_bytes(line + b"\n")
        try:
            specs = read_jsonl(path)
        except InvalidOpSpecError as exc:
            assert str(exc).startswith(f"{path}:1: "), str(exc)
            refused.append(i)
        else:
            assert len(specs) == 1 and isinstance(specs[0], OpSpec)
            read.append(i)
    return refused, read


def test_malformed_opspec_lines_are_refused_or_read_never_anything_else(tmp_path) -> None:
    lines = mutants(400)
    refused, read = classify(tmp_path, lines)
    kinds_refused = {lines[i][0] for i in refused}
    assert len(refused) > 300  # the generator does make bad lines, of every kind
    assert kinds_refused >= {
        "wrong type",
        "unicode",
        "nested",
        "truncated",
        "missing",
        "unknown",
        "bytes",
        "not an object",
    }
    # All in one file, lenient: each bad line is reported with its line number, the rest read.
    together = tmp_path / "all.jsonl"
    together.write_bytes(b"\n".join(line for _, line in lines) + b"\n")
    invalid: list[str] = []
    specs = read_jsonl(together, invalid)
    assert len(specs) == len(read)
    assert [int(m.split(":")[1]) for m in invalid] == [i + 1 for i in refused]


def test_the_profile_command_skips_every_bad_line_and_measures_the_rest(tmp_path) -> None:
    lines = mutants(120)
    refused, _ = classify(tmp_path, lines)
    good = OpSpec("add", (1, 8, 8, 8))
    too_big = [  # valid ops no memory holds: refused before they are built
        {"op": "add", "input_shape": [1, 10**200, 8, 8]},
        {"op": "conv", "input_shape": [1, 8, 8, 8], "out_channels": 10**400, "kernel": 1},
        {"op": "gemm", "input_shape": [1, 8], "out_channels": 10**30},
    ]
    body = [lines[i][1] for i in refused] + [json.dumps(good.to_dict()).encode()]
    body += [json.dumps(op).encode() for op in too_big]
    ops, db = tmp_path / "ops.jsonl", tmp_path / "m.db"
    ops.write_bytes(b"\n".join(body) + b"\n")
    with Store(db) as store:
        store.save(Measurement(device="local", backend="ort", key="kept-before", samples_ms=[1.0]))
    proc = subprocess.run(
        [sys.executable, "-m", "hwlat.cli", "profile", "--ops", ops, "--db", db, "--quick", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("hwlat: skipped ")]
    assert [int(line.split(":")[2]) for line in skipped] == list(range(1, len(refused) + 1))
    assert "1 measured, 0 already stored, 3 failed" in proc.stdout
    assert proc.stdout.count("it was not built or measured") == 3
    with Store(db, readonly=True) as store:
        rows = {m.key: m for m in store.measurements()}
    assert rows["kept-before"].samples_ms == [1.0]
    assert rows[good.key].ok
    assert sorted(m.status for k, m in rows.items() if k not in ("kept-before", good.key)) == ["failed"] * 3


def test_a_file_of_only_bad_lines_is_one_error(tmp_path, capsys) -> None:
    lines = mutants(40)
    refused, _ = classify(tmp_path, lines)
    ops = tmp_path / "ops.jsonl"
    ops.write_bytes(b"\n".join(lines[i][1] for i in refused) + b"\n")
    status = hwlat_cli.main(["profile", "--ops", str(ops), "--db", str(tmp_path / "m.db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_ERROR and len(err) == 1, err
    assert (
        err[0].startswith(f"hwlat: error: {ops}:1: ") and f"and {len(refused) - 1} more bad lines" in err[0]
    )


def test_a_key_that_is_not_a_string_is_an_invalid_opspec(tmp_path) -> None:
    path = tmp_path / "ops.jsonl"
    path.write_text('{"key": 5}\n')
    with pytest.raises(InvalidOpSpecError):
        read_jsonl(path)


def test_a_number_of_5000_digits_is_an_invalid_opspec(tmp_path) -> None:
    path = tmp_path / "ops.jsonl"
    path.write_text('{"op": "add", "input_shape": [1, ' + "9" * 5000 + ", 8, 8]}\n")
    with pytest.raises(InvalidOpSpecError):
        read_jsonl(path)


# ----- ONNX files -------------------------------------------------------------------------------
def small_net() -> bytes:
    """Conv -> Relu -> Add (residual) -> GlobalAveragePool -> Flatten -> Gemm, with weights."""
    rng = __import__("numpy").random.default_rng(0)

    def weight(name: str, *shape: int):
        return numpy_helper.from_array(rng.standard_normal(shape).astype("float32"), name)

    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Add", ["r1", "x"], ["a1"], name="add1"),
        helper.make_node("GlobalAveragePool", ["a1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[weight("w1", 8, 8, 3, 3), weight("b1", 8), weight("w2", 10, 8), weight("b2", 10)],
    )
    return make_model(graph).SerializeToString()


def broken_models(rng: random.Random, good: bytes, n: int) -> list[tuple[str, bytes]]:
    found = []
    for _ in range(n):
        kind = rng.choice(["truncated", "random", "flipped", "spliced"])
        data = bytearray(good)
        if kind == "truncated":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "random":
            data = bytearray(rng.randbytes(rng.randint(1, 3000)))
        elif kind == "flipped":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 40))
        found.append((kind, bytes(data)))
    return found


def special_models() -> dict[str, bytes]:
    """Models that parse but no runtime runs: an op ONNX does not define, ONNX from the future."""
    import onnx

    unknown = onnx.load_from_string(small_net())
    unknown.graph.node[1].op_type = "FancyRelu"
    future_opset = onnx.load_from_string(small_net())
    future_opset.opset_import[0].version = 99
    future_ir = onnx.load_from_string(small_net())
    future_ir.ir_version = 99
    return {
        "unknown op": unknown.SerializeToString(),
        "future opset": future_opset.SerializeToString(),
        "future IR": future_ir.SerializeToString(),
        "empty": b"",
        "text": b"ir_version: 8\ngraph { node { op_type: 'Relu' } }\n",
    }


@pytest.fixture(scope="module")
def predictor():
    return synthetic_predictor()


def test_damaged_onnx_files_are_model_file_errors_never_a_traceback(tmp_path, predictor) -> None:
    good = small_net()
    cases = broken_models(random.Random(SEED), good, 300) + list(special_models().items())
    outcomes: dict[str, int] = {}
    for i, (_, data) in enumerate(cases):
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(data)
        try:
            load_model(path)
        except ModelFileError as exc:
            assert str(path) in str(exc)
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            continue
        for strict in (True, False):  # what loads is predicted, or refused by an hwlat error
            try:
                predictor.predict(path, strict=strict)
            except HwlatError:
                outcomes["not predicted"] = outcomes.get("not predicted", 0) + 1
    assert outcomes["refused"] > 200


@pytest.mark.parametrize("kind", ["unknown op", "future opset", "future IR", "empty", "text", "truncated"])
@pytest.mark.parametrize("command", ["predict", "measure"])
def test_predict_and_measure_refuse_a_bad_model_in_one_line(kind, command, tmp_path, capsys) -> None:
    data = special_models().get(kind) or small_net()[:700]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    db = tmp_path / "m.db"
    with Store(db) as store:
        store.save(Measurement(device="local", backend="ort", key="kept-before", samples_ms=[1.0]))
    args = ["--predictor", str(_predictor_file(tmp_path))] if command == "predict" else ["--db", str(db)]
    status = hwlat_cli.main([command, str(path), *args])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert status == EXIT_ERROR and len(err) == 1 and err[0].startswith("hwlat: error: "), captured.err
    assert str(path) in err[0] and captured.out == ""
    with Store(db, readonly=True) as store:
        assert [m.key for m in store.measurements()] == ["kept-before"]


def _predictor_file(tmp_path: Path) -> Path:
    return synthetic_predictor(n=60).save(tmp_path / "p.json")


# ----- other programs' SQLite files -------------------------------------------------------------
def foreign_databases(tmp_path: Path) -> dict[str, Path]:
    """SQLite files hwlat did not write: unrelated tables, a WAL-mode file, a table that happens to
    be called measurements, and an hwlat_meta table whose version is not a number."""
    made = {}
    for name, sql in {
        "unrelated": "CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('ada');",
        "wal": "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        "measurements": "CREATE TABLE measurements (sensor TEXT, value REAL); "
        "INSERT INTO measurements VALUES ('t', 1);",
        "meta": "CREATE TABLE hwlat_meta (key TEXT, value TEXT); "
        "INSERT INTO hwlat_meta VALUES ('schema_version', 'x');",
    }.items():
        path = tmp_path / f"{name}.sqlite"
        with sqlite3.connect(path) as db:
            db.executescript(sql)
        db.close()
        made[name] = path
    return made


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "export", "-o", "{out}/x.csv"],
        ["devices", "list"],
        ["table", "export", "--space", "nb201", "-o", "{out}/t.csv"],
        ["table", "import", "{out}/t.csv", "--device", "phone"],
        ["profile", "--ops", "{out}/ops.jsonl", "--quick"],
        ["db", "migrate"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_another_programs_database_is_refused_and_left_unchanged(argv, tmp_path, capsys) -> None:
    out = tmp_path / "files"
    out.mkdir()
    (out / "t.csv").write_text("key,mean_ms\nblock-a,1.0\n")
    (out / "ops.jsonl").write_text('{"op": "add", "input_shape": [1, 8, 8, 8]}\n')
    for kind, db in foreign_databases(tmp_path).items():
        before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
        status = hwlat_cli.main([a.format(out=out) for a in argv] + ["--db", str(db)])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == EXIT_ERROR and len(err) == 1, (kind, err)
        assert err[0].startswith(f"hwlat: error: {db} is not an hwlat store"), (kind, err)
        assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()} == before, kind
        assert sorted(p.name for p in out.iterdir()) == ["ops.jsonl", "t.csv"], kind
