"""Few-shot latency transfer: a new device's latencies from a few samples and reference devices.

Data sets (device x architecture latency tables of NAS-Bench-201's 15,625 cells):
  help    HELP's tables (Lee et al., NeurIPS 2021): read from ``--help-data``, the
          ``data/nasbench201`` folder of https://github.com/HayeonLee/HELP (``git clone`` it;
          nothing is downloaded here). HELP's protocol: its 9 meta-training devices are the
          references, its 6 meta-test devices the targets; samples come from the first 900
          architectures, the held-out set is architectures 900-1899; on each target the fastest
          and slowest 10% of both are left out, as HELP's loader does.
  help-strict  the same, but the references are known on the first 900 architectures only (as
          HELP's meta-training uses them): their latencies on held-out architectures are
          predicted from the encoding by an ArchLatencyRegressor fitted on those 900 (per device).
  help-tuning  HELP's 4 meta-validation devices (references: the 9) and each meta-training device
          (references: the other 8), on seeds from 1000: where the defaults were chosen.
  local   architectures measured on this machine under configurations that stand in for devices
          (ONNX Runtime 1 and 2 threads, arena off, basic graph optimisation, int8 QDQ; TVM's
          untuned pipeline); each configuration is a target with the others as references.
          ``--measure`` measures ``--configs`` into ``--db`` (a re-run resumes) and caches the
          table in ``--table``; without it the cached table is read. Each ORT
          configuration takes ~5 min for 150 architectures on a loaded 2-core machine; TVM
          compiles every network (20-35 s each there), over an hour for 150.

    python -m benchmarks.bench_fewshot --measure --archs 150 \
        --configs ort-1t,ort-2t,ort-noarena,ort-basic,ort-int8
    python -m benchmarks.bench_fewshot --help-data HELP/data/nasbench201 --strict --seeds 100

For each data set, sample count and method: Spearman's rank correlation and the share of
held-out architectures predicted within +-10%, averaged over the targets, as mean +- standard
deviation over ``--seeds`` random draws of the samples; then the same per target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge, RidgeCV
from threadpoolctl import threadpool_limits

from hwlat.predictors import ArchLatencyRegressor

SPACE = "nb201"
# label -> (Device fields changed from the local device, backend, dtype of the model)
LOCAL_CONFIGS: dict[str, tuple[dict, str, str]] = {
    "ort-1t": ({}, "ort", "float32"),
    "ort-2t": ({"threads": 2}, "ort", "float32"),
    "ort-noarena": ({"memory_arena": False}, "ort", "float32"),
    "ort-basic": ({"graph_optimization": "basic"}, "ort", "float32"),
    "ort-int8": ({}, "ort", "int8"),
    "tvm-untuned": ({}, "tvm-untuned", "float32"),
}
HELP_REFERENCES = (
    "1080ti_1",
    "1080ti_32",
    "1080ti_256",
    "silver_4114",
    "silver_4210r",
    "samsung_a50",
    "pixel3",
    "essential_ph_1",
    "samsung_s7",
)
HELP_VALID = ("titanx_1", "titanx_32", "titanx_256", "gold_6240")
HELP_TARGETS = ("titan_rtx_256", "gold_6226", "fpga", "pixel2", "raspi4", "eyeriss")
HELP_PUBLISHED = {  # HELP's Table 3, 10 samples (its code also feeds 10 fixed architectures' latencies)
    "titan_rtx_256": 0.987,
    "gold_6226": 0.989,
    "fpga": 0.985,
    "pixel2": 0.802,
    "raspi4": 0.890,
    "eyeriss": 0.940,
}
SAMPLES = (5, 10, 20)
TUNING_SEED = 1000  # help-tuning draws its samples from seeds 1000.. so reported seeds (0..) stay unseen


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg())


# ----- data: local configurations ---------------------------------------------------------------
def measure_local(work: Path, out: Path, db: Path, n_archs: int, seed: int, configs: list[str], log) -> Path:
    """Measure ``n_archs`` random NAS-Bench-201 architectures under the local ``configs``.

    One configuration at a time over all architectures, so that a configuration's numbers
    are taken apart in time from the others' (contention then does not correlate devices).
    Rows in the store are reused; the table goes to ``out`` (rewritten after
    each configuration).
    """
    import onnx

    from hwlat.devices.device import local_device
    from hwlat.predictors.building.training import quantized_networks
    from hwlat.profiler.campaign import Campaign, model_key
    from hwlat.profiler.protocol import TimingProtocol
    from hwlat.profiler.store import Store
    from hwlat.search.spaces import get_space

    space = get_space(SPACE)
    rng = np.random.default_rng(seed)
    archs: list[tuple[int, ...]] = []
    while len(archs) < n_archs:
        arch = tuple(int(v) for v in space.sample(rng))
        if arch not in archs:
            archs.append(arch)
    directory = work / "networks"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for arch in archs:
        path = directory / f"{SPACE}-{'-'.join(map(str, arch))}.onnx"
        if not path.exists():
            onnx.save(space.to_onnx(arch), path)
        paths.append(path)
    log(f"{len(paths)} networks exported")
    table = {"space": SPACE, "seed": seed, "archs": [list(a) for a in archs], "configs": {}}
    base = local_device()
    # One retry: under load most passes are flagged anyway, and a flagged row is kept (and counted).
    protocol = TimingProtocol(max_retries=1)
    with Store(db) as store:
        for label in configs:
            changes, backend, dtype = LOCAL_CONFIGS[label]
            device = dataclasses.replace(base, name=f"local-fewshot-{label}", **changes)
            models = paths if dtype == "float32" else quantized_networks(paths, dtype)
            stored = {p: store.get(device.name, backend, model_key(p), "model") for p in models}
            todo = [p for p in models if stored[p] is None or not stored[p].ok]
            started = time.time()
            if todo:
                campaign = Campaign(device, backend, store, protocol, show_progress=False)
                stored.update(zip(todo, campaign.measure_models(todo), strict=True))
            rows = [stored[p] for p in models]
            table["configs"][label] = {
                "latency_ms": [m.median_ms if m.ok else None for m in rows],
                "flagged": [bool(m.ok and m.disturbed) for m in rows],
                "load": load() if todo else "earlier run (rows reused from the store)",
                "measured": len(todo),
                "wall_s": round(time.time() - started, 1),
            }
            flagged = sum(table["configs"][label]["flagged"])
            log(f"{label}: {len(todo)} measured, {flagged} of {len(rows)} flagged disturbed")
            # Written after every configuration: an interrupted run still leaves the finished ones.
            out.write_text(json.dumps(table, indent=1))
    return out


# ----- data sets --------------------------------------------------------------------------------
@dataclasses.dataclass
class Task:
    """One target device: its latencies, the references', who may be sampled, who is held out."""

    name: str
    target_ms: np.ndarray  # (archs,)
    reference_ms: np.ndarray  # (archs, references); held-out rows may be predictions (help-strict)
    references: tuple[str, ...]
    pool: np.ndarray  # indices the samples are drawn from
    held_out: np.ndarray | None  # indices scored; None: every architecture of the pool not sampled


@dataclasses.dataclass
class DataSet:
    name: str
    choices: list[dict]  # space.to_dict(arch) per architecture
    tasks: list[Task]
    first_seed: int = 0
    note: str = ""


def local_dataset(path: Path) -> DataSet:
    from hwlat.search.spaces import get_space

    table = json.loads(path.read_text())
    space = get_space(table["space"])
    labels = list(table["configs"])
    ms = np.array([[np.nan if v is None else v for v in table["configs"][c]["latency_ms"]] for c in labels]).T
    ok = np.all(np.isfinite(ms), axis=1)
    archs = [a for a, keep in zip(table["archs"], ok, strict=True) if keep]
    ms = ms[ok]
    flagged = {c: int(np.sum(np.array(table["configs"][c]["flagged"])[ok])) for c in labels}
    tasks = []
    for j, target in enumerate(labels):
        refs = [i for i in range(len(labels)) if i != j]
        tasks.append(
            Task(target, ms[:, j], ms[:, refs], tuple(labels[i] for i in refs), np.arange(len(ms)), None)
        )
    loads = "; ".join(f"{c}: {table['configs'][c]['load']}" for c in labels)
    note = (
        f"{len(ms)} architectures ({int((~ok).sum())} with a failed configuration left out); "
        f"flagged disturbed: {flagged}; load while measuring: {loads}"
    )
    return DataSet(path.stem, [space.to_dict(a) for a in archs], tasks, note=note)


def help_tables(directory: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    import torch

    from hwlat.search.spaces import get_space

    latency = {
        f.stem: np.asarray(torch.load(f, weights_only=True), dtype=np.float64)
        for f in sorted((directory / "latency").glob("*.pt"))
    }
    space = get_space(SPACE)
    index = torch.load(directory / "str_arch2idx.pt", weights_only=True)
    choices: list[dict] = [{} for _ in range(len(index))]
    for genotype, i in index.items():
        choices[i] = space.to_dict(space.from_genotype(genotype))
    return latency, choices


def _help_task(latency: dict, target: str, references: tuple[str, ...]) -> Task:
    """HELP's loader: samples from architectures 0-899, held out 900-1899, each without the
    target's fastest and slowest 10%."""
    y = latency[target]

    def middle(idx: np.ndarray) -> np.ndarray:
        order = idx[np.argsort(y[idx], kind="stable")]
        return order[int(0.1 * len(idx)) : int(0.9 * len(idx))]

    pool, held_out = middle(np.arange(900)), middle(np.arange(900, 1900))
    R = np.column_stack([latency[r] for r in references])
    return Task(target, y, R, references, pool, held_out)


def help_datasets(directory: Path, strict: bool, tuning: bool, log) -> list[DataSet]:
    latency, choices = help_tables(directory)
    missing = [d for d in (*HELP_REFERENCES, *HELP_VALID, *HELP_TARGETS) if d not in latency]
    if missing:
        raise SystemExit(f"{directory}/latency lacks {missing}: pass HELP's data/nasbench201 folder")
    out = [DataSet("help", choices, [_help_task(latency, t, HELP_REFERENCES) for t in HELP_TARGETS])]
    if strict:
        imputed = dict(latency)
        for r in HELP_REFERENCES:  # known on 0-899 only: the rest predicted from the encoding
            model = ArchLatencyRegressor(random_state=0).fit(choices[:900], latency[r][:900])
            imputed[r] = np.concatenate([latency[r][:900], model.predict(choices[900:])])
            rho = spearmanr(imputed[r][900:1900], latency[r][900:1900]).statistic
            log(f"help-strict: {r} predicted from the encoding on 900-1899, Spearman {rho:.3f}")
        tasks = [_help_task(imputed, t, HELP_REFERENCES) for t in HELP_TARGETS]
        for task in tasks:
            task.target_ms = latency[task.name]
        out.append(DataSet("help-strict", choices, tasks))
    if tuning:
        tasks = [_help_task(latency, t, HELP_REFERENCES) for t in HELP_VALID]
        tasks += [
            _help_task(latency, t, tuple(r for r in HELP_REFERENCES if r != t)) for t in HELP_REFERENCES
        ]
        out.append(DataSet("help-tuning", choices, tasks, first_seed=TUNING_SEED))
    return out


# ----- methods: (choices, log reference ms, target ms) of the samples -> predict(held out) ------------
Fit = Callable[[list[dict], np.ndarray, np.ndarray], Callable[[list[dict], np.ndarray], np.ndarray]]


def _with_references(choices: list[dict], R: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    return [
        {**c, **{f"ref:{n}": float(v) for n, v in zip(names, row, strict=True)}}
        for c, row in zip(choices, R, strict=True)
    ]


def regressor(**params) -> Fit:
    def fit(choices, R, y, names):
        keys = [f"ref:{n}" for n in names]
        model = ArchLatencyRegressor(reference=keys, **params).fit(_with_references(choices, R, names), y)
        return lambda c, Rq: model.predict(_with_references(c, Rq, names))

    return fit


def encoding_only(choices, R, y, names):
    model = ArchLatencyRegressor().fit(choices, y)
    return lambda c, Rq: model.predict(c)


def ridge(choices, R, y, names):
    """The natural baseline: ridge (scikit-learn's default penalty) on the log reference latencies."""
    model = Ridge(alpha=1.0).fit(np.log(R), np.log(y))
    return lambda c, Rq: np.exp(model.predict(np.log(Rq)))


def ridge_cv(choices, R, y, names):
    """The same, its penalty chosen by leave-one-out on the samples."""
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(np.log(R), np.log(y))
    return lambda c, Rq: np.exp(model.predict(np.log(Rq)))


def best_reference(choices, R, y, names):
    """The reference most correlated with the target on the samples, fitted log-linearly."""
    logs = np.log(R)
    corr = [abs(np.corrcoef(col, np.log(y))[0, 1]) if np.std(col) > 0 else 0.0 for col in logs.T]
    j = int(np.nanargmax(corr))
    slope, intercept = np.polyfit(logs[:, j], np.log(y), 1)
    return lambda c, Rq: np.exp(intercept + slope * np.log(Rq[:, j]))


def previous(choices, R, y, names):
    """ArchLatencyRegressor before this study (e2de33b): one ridge on the encoding (penalty 1)
    and the log reference latencies (penalty 1e-3), no standardisation."""
    from sklearn.feature_extraction import DictVectorizer

    vec = DictVectorizer(sparse=False).fit(choices)
    scale = np.r_[np.ones(len(vec.feature_names_)), np.full(R.shape[1], 1 / np.sqrt(1e-3))]

    def design(c, Rq):
        return np.column_stack([vec.transform(c), np.log(Rq)]) * scale

    model = Ridge(alpha=1.0).fit(design(choices, R), np.log(y))
    return lambda c, Rq: np.exp(model.predict(design(c, Rq)))


METHODS: dict[str, Fit] = {
    "encoding only (new)": encoding_only,
    "previous regressor": previous,
    "ridge on log references": ridge,
    "ridge, penalty by LOO": ridge_cv,
    "best single reference": best_reference,
    "new: no mixture": regressor(mixture=False),
    "new": regressor(),
}
BASELINE, NEW = "ridge on log references", "new"


# ----- evaluation ---------------------------------------------------------------------------------
def evaluate(data: DataSet, methods: dict[str, Fit], samples, seeds: int, log) -> dict:
    """{(n, method): {"spearman": (seeds, targets), "within_10": (seeds, targets)}}."""
    out = {}
    for n in samples:
        for name, method in methods.items():
            rho = np.zeros((seeds, len(data.tasks)))
            within = np.zeros_like(rho)
            for t, task in enumerate(data.tasks):
                for s in range(seeds):
                    rng = np.random.default_rng(data.first_seed + s)
                    picked = rng.choice(task.pool, n, replace=False)
                    held = task.held_out if task.held_out is not None else np.setdiff1d(task.pool, picked)
                    predict = method(
                        [data.choices[i] for i in picked],
                        task.reference_ms[picked],
                        task.target_ms[picked],
                        task.references,
                    )
                    p = predict([data.choices[i] for i in held], task.reference_ms[held])
                    truth = task.target_ms[held]
                    rho[s, t] = spearmanr(p, truth).statistic
                    within[s, t] = np.mean(np.abs(p / truth - 1) <= 0.10)
            out[n, name] = {"spearman": rho, "within_10": within}
            log(f"{data.name} n={n} {name}: Spearman {rho.mean():.3f}, within 10% {within.mean():.3f}")
    return out


def _cell(a: np.ndarray, percent: bool = False) -> str:
    """Mean over targets per seed, then mean +- sd over seeds."""
    per_seed = a.mean(axis=1) if a.ndim == 2 else a
    k = 100 if percent else 1
    return f"{k * per_seed.mean():.{1 if percent else 3}f} ± {k * per_seed.std():.{1 if percent else 3}f}"


def _scored(task: Task) -> np.ndarray:
    return task.held_out if task.held_out is not None else task.pool


def structure(data: DataSet) -> str:
    """How low-rank the device x architecture matrix is, and how much of each target the
    references can explain at all: a log-linear fit on the whole sampling pool (an oracle no
    few-shot method reaches), scored on the held-out architectures (in sample where the task
    has no held-out set: local)."""
    rows = np.unique(np.concatenate([np.r_[t.pool, _scored(t)] for t in data.tasks]))
    first = data.tasks[0]
    names = (first.name, *first.references)
    columns = [first.target_ms, *first.reference_ms.T]
    for t in data.tasks[1:]:
        if t.name not in names:
            names, columns = (*names, t.name), [*columns, t.target_ms]
    logs = np.log(np.column_stack(columns)[rows])
    z = (logs - logs.mean(axis=0)) / logs.std(axis=0)
    share = np.cumsum(np.linalg.svd(z, compute_uv=False) ** 2) / np.sum(z**2)
    lines = [
        f"### {data.name}: structure",
        "",
        f"{len(names)} devices x {len(rows)} architectures, log latencies standardised per device; "
        "share of variance in the first k singular directions: "
        + ", ".join(f"k={k + 1}: {100 * v:.1f}%" for k, v in enumerate(share[:5])),
        "",
        "| target | oracle: log-linear fit on the references over the whole pool, Spearman | within ±10% |",
        "|---|---|---|",
    ]
    for t in data.tasks:
        held = _scored(t)
        model = Ridge(alpha=1e-6).fit(np.log(t.reference_ms[t.pool]), np.log(t.target_ms[t.pool]))
        p = np.exp(model.predict(np.log(t.reference_ms[held])))
        truth = t.target_ms[held]
        rho = spearmanr(p, truth).statistic
        lines.append(f"| {t.name} | {rho:.3f} | {100 * np.mean(np.abs(p / truth - 1) <= 0.10):.1f}% |")
    return "\n".join(lines) + "\n"


def markdown(data: DataSet, results: dict, samples, seeds: int) -> str:
    methods = list(dict.fromkeys(m for _, m in results))
    lines = [f"### {data.name}", ""]
    if data.note:
        lines += [data.note, ""]
    lines += [
        f"Targets: {', '.join(t.name for t in data.tasks)}; {seeds} draws of the samples "
        f"(seeds {data.first_seed}-{data.first_seed + seeds - 1}); "
        "mean ± sd over draws of the mean over targets.",
        "",
        "| samples | method | Spearman | within ±10% (%) | beats ridge (Spearman, share of draws) |",
        "|---|---|---|---|---|",
    ]
    for n in samples:
        base = results[n, BASELINE]["spearman"].mean(axis=1)
        for m in methods:
            r = results[n, m]
            wins = float(np.mean(r["spearman"].mean(axis=1) > base)) if m != BASELINE else float("nan")
            lines.append(
                f"| {n} | {m} | {_cell(r['spearman'])} | {_cell(r['within_10'], True)} | "
                + ("" if m == BASELINE else f"{100 * wins:.0f}%")
                + " |"
            )
    lines += ["", "Per target, Spearman (mean ± sd over draws), ridge on log references -> new:", ""]
    lines += ["| target | " + " | ".join(f"n={n}" for n in samples) + " |", "|---|" + "---|" * len(samples)]
    for t, task in enumerate(data.tasks):
        base = [results[n, BASELINE]["spearman"][:, t] for n in samples]
        new = [results[n, NEW]["spearman"][:, t] for n in samples]
        cells = [f"{b.mean():.3f} -> {a.mean():.3f} ± {a.std():.3f}" for b, a in zip(base, new, strict=True)]
        lines.append(f"| {task.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/hwlat-fewshot"))
    parser.add_argument("--db", type=Path, help="measurement store (default WORK/hwlat.db)")
    parser.add_argument(
        "--table", type=Path, help="the local table, written by --measure (default WORK/local-nb201.json)"
    )
    parser.add_argument("--measure", action="store_true", help="measure the local table first (resumes)")
    parser.add_argument("--archs", type=int, default=150, help="architectures of the local table")
    parser.add_argument(
        "--help-data", type=Path, help="HELP's data/nasbench201 folder (a clone of HayeonLee/HELP)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="also help-strict (references on 900 archs only)"
    )
    parser.add_argument(
        "--tuning", action="store_true", help="also help-tuning (the devices defaults were chosen on)"
    )
    parser.add_argument(
        "--configs",
        default=",".join(LOCAL_CONFIGS),
        help=f"local configurations to measure, comma-separated (of {', '.join(LOCAL_CONFIGS)})",
    )
    parser.add_argument(
        "--structure", action="store_true", help="only the low-rank structure and the oracle fits"
    )
    parser.add_argument("--no-local", action="store_true", help="skip the local table")
    parser.add_argument("--seeds", type=int, default=100, help="random draws of the samples per target")
    parser.add_argument(
        "--samples", default=",".join(map(str, SAMPLES)), help="sample counts, comma-separated"
    )
    parser.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # One thread for the trees and BLAS: on a shared machine OpenMP's spinning threads made the
    # 900-sample fits of help-strict 100x slower.
    threadpool_limits(1)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s, {load()}] {msg}", flush=True)

    samples = [int(v) for v in args.samples.split(",")]
    methods = METHODS
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        methods = {m: METHODS[m] for m in dict.fromkeys([BASELINE, *wanted, NEW])}
    datasets: list[DataSet] = []
    cached = args.table or args.work / "local-nb201.json"
    if args.measure:
        configs = [c.strip() for c in args.configs.split(",")]
        unknown = [c for c in configs if c not in LOCAL_CONFIGS]
        if unknown:
            parser.error(f"unknown configurations {unknown}; choose from {', '.join(LOCAL_CONFIGS)}")
        measure_local(args.work, cached, args.db or args.work / "hwlat.db", args.archs, 0, configs, log)
    if not args.no_local and cached.exists():
        datasets.append(local_dataset(cached))
    elif not args.no_local:
        log(f"no local table at {cached}: run with --measure first")
    if args.help_data:
        datasets += help_datasets(args.help_data, args.strict, args.tuning, log)
    sections = []
    for data in datasets:
        sections.append(structure(data))
        if not args.structure:
            results = evaluate(data, methods, samples, args.seeds, log)
            sections.append(markdown(data, results, samples, args.seeds))
    print(f"\n{load()} at the end; {time.time() - started:.0f} s\n")
    print("\n".join(sections))


if __name__ == "__main__":
    main()
