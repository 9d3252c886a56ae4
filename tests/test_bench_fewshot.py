"""benchmarks/bench_fewshot.py's plumbing: HELP's file layout and split, the local table,
the evaluation loop and its table, on synthetic devices whose latency is a per-operator sum
(written in HELP's own format with torch.save, read back through the benchmark's loader)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from benchmarks import bench_fewshot as bench
from hwlat.search.spaces import get_space
from hwlat.search.spaces.nb201 import OPS, genotype_string

SPACE = get_space("nb201")
N_ARCHS = 1900  # HELP's split needs architectures 0-1899


def _op_ms(rng: np.random.Generator) -> np.ndarray:
    """Per-operator cost of one synthetic device; 'none' is free."""
    return np.r_[0.0, rng.uniform(0.05, 3.0, len(OPS) - 1)]


@pytest.fixture(scope="module")
def help_dir(tmp_path_factory):
    """HELP's data/nasbench201 layout: latency/<device>.pt and str_arch2idx.pt."""
    root = tmp_path_factory.mktemp("help")
    (root / "latency").mkdir()
    rng = np.random.default_rng(0)
    every = np.array(list(itertools.product(range(len(OPS)), repeat=6)))
    ops = every[rng.permutation(len(every))[:N_ARCHS]]  # (archs, edges) operator indices
    genotypes = [genotype_string(tuple(OPS[i] for i in row)) for row in ops]
    torch.save({g: i for i, g in enumerate(genotypes)}, root / "str_arch2idx.pt")
    per_op = np.stack([(ops == k).sum(axis=1) for k in range(len(OPS))], axis=1)  # (archs, ops)
    references = {d: _op_ms(rng) for d in (*bench.HELP_REFERENCES, *bench.HELP_VALID)}
    basis = np.stack([references[d] for d in bench.HELP_REFERENCES])
    for name, cost in references.items():
        torch.save(torch.tensor(1.0 + per_op @ cost), root / "latency" / f"{name}.pt")
    for name in bench.HELP_TARGETS:  # a positive mix of the references' operator costs
        cost = rng.dirichlet(np.ones(len(basis))) @ basis
        torch.save(torch.tensor(1.0 + per_op @ cost), root / "latency" / f"{name}.pt")
    return root


def test_help_split_follows_helps_loader(help_dir):
    (data,) = bench.help_datasets(help_dir, strict=False, tuning=False, log=print)
    assert data.name == "help" and len(data.choices) == N_ARCHS
    assert [t.name for t in data.tasks] == list(bench.HELP_TARGETS)
    for task in data.tasks:
        assert task.reference_ms.shape == (N_ARCHS, len(bench.HELP_REFERENCES))
        assert len(task.pool) == 720 and len(task.held_out) == 800
        assert task.pool.max() < 900 and task.held_out.min() >= 900
        # The target's fastest and slowest 10% of the held-out range are left out.
        held = np.sort(task.target_ms[900:1900])
        assert task.target_ms[task.held_out].min() == held[100]
        assert task.target_ms[task.held_out].max() == held[899]


def test_missing_device_is_named(help_dir, tmp_path):
    (tmp_path / "latency").mkdir()
    for f in (help_dir / "latency").glob("*.pt"):
        if f.stem != "fpga":
            (tmp_path / "latency" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "str_arch2idx.pt").write_bytes((help_dir / "str_arch2idx.pt").read_bytes())
    with pytest.raises(SystemExit, match="fpga"):
        bench.help_datasets(tmp_path, strict=False, tuning=False, log=print)


def test_evaluate_and_table(help_dir):
    (data,) = bench.help_datasets(help_dir, strict=False, tuning=False, log=print)
    methods = {m: bench.METHODS[m] for m in (bench.BASELINE, bench.NEW)}
    results = bench.evaluate(data, methods, (10,), seeds=2, log=print)
    for m in methods:
        rho = results[10, m]["spearman"]
        assert rho.shape == (2, len(bench.HELP_TARGETS)) and np.all(np.isfinite(rho))
    # Noise-free positive mixes of the references: the new estimator ranks them almost exactly.
    assert results[10, bench.NEW]["spearman"].mean() > 0.95
    text = bench.markdown(data, results, (10,), seeds=2)
    assert "| 10 | new |" in text and "| 10 | ridge on log references |" in text
    assert all(f"| {t} |" in text for t in bench.HELP_TARGETS)


def test_local_table_drops_architectures_a_configuration_failed_on(tmp_path):
    rng = np.random.default_rng(1)
    archs = [list(SPACE.sample(rng)) for _ in range(8)]
    configs = {
        c: {"latency_ms": list(rng.uniform(0.2, 2.0, 8)), "flagged": [False] * 8, "load": "x", "measured": 8}
        for c in ("ort-1t", "ort-2t", "ort-int8")
    }
    configs["ort-2t"]["latency_ms"][3] = None
    path = tmp_path / "local-nb201.json"
    path.write_text(json.dumps({"space": "nb201", "seed": 0, "archs": archs, "configs": configs}))
    data = bench.local_dataset(path)
    assert len(data.choices) == 7 and "1 with a failed configuration left out" in data.note
    assert [t.name for t in data.tasks] == ["ort-1t", "ort-2t", "ort-int8"]
    assert data.tasks[1].references == ("ort-1t", "ort-int8")
    assert data.tasks[1].reference_ms.shape == (7, 2) and data.tasks[1].held_out is None


def test_structure_reports_rank_and_oracle(help_dir):
    (data,) = bench.help_datasets(help_dir, strict=False, tuning=False, log=print)
    text = bench.structure(data)
    # Synthetic latencies are sums over 5 operator counts plus a constant: rank <= 5 in ms.
    assert "15 devices x" in text and "k=1:" in text
    oracle = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| fpga |")]
    assert len(oracle) == 1 and oracle[0] > 0.95
