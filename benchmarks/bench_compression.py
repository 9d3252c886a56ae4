"""Compression search benchmark: DDPG vs evolution vs random vs uniform pruning, per device.

Needs a predictor trained on the device (``hwlat train``); measures on that device (local by
default). Per model and latency budget, every agent gets the same number of episodes on the
same environment (same wall, same budgets) and seed; per run the table gives

  * the best score within budget (the digits CNN: held-out accuracy, a real accuracy; MobileNetV2
    and ResNet-18: the output-fidelity *proxy*, the mean of top-1 agreement and exp(-KL) against
    the original network on random inputs: the zoo networks have no trained weights, so their
    batch-norm statistics are first re-estimated on random inputs, without which MobileNetV2's
    output does not depend on its input at all);
  * its predicted and measured latency, and the share of the verified winners (the top
    ``--verify`` of each run, measured on the device) within the budget, and within the
    budget + the noise band;
  * wall time per episode (build, predict, score, agent).

``uniform`` is the best uniform baseline (one keep ratio for every layer, 0.25 to 1.0) whose
*measured* latency is within the budget: the agents' winners are compared with it at equal
measured latency. Budgets are 25%, 50% and 75% of the way from the smallest reachable
predicted latency to the original network's (``--budgets``).

With a predictor that costs int8 kernels, a last section compares int8-only policies (the
uniform int8 baselines, every layer int8) with mixed float32/int8 ones found by a joint
search (DDPG); without one it says it is skipped.

Usage:
    python -m benchmarks.bench_compression PREDICTOR [--models digits mobilenet_v2 resnet18]
        [--episodes 100] [--seeds 1] [--budgets 0.25 0.5 0.75] [--verify 3] [--resolution 224]
        [--device local] [--tvm-predictor P] [--out DIR] [--write]

``--write`` writes benchmarks/RESULTS-compression.md. A smoke run (about a minute; checks that
the script works, says nothing about the agents):
    python -m benchmarks.bench_compression PRED.json --models digits --episodes 6 --budgets 0.5 \\
        --verify 1 --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwlat.search.compression import (
    CompressionEnv,
    PredictorCostModel,
    compression_search,
    digits,
    verify_winners,
)

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("ddpg", "evolution", "random")


@dataclass
class Row:
    model: str
    budget_ms: float
    method: str
    seed: int
    score: float | None
    predicted_ms: float | None
    measured_ms: float | None
    verified: tuple[int, int, int] = (0, 0, 0)  # within budget, within noise band, measured
    seconds_per_episode: float | None = None
    note: str = ""


@dataclass
class ModelSetup:
    name: str
    model: object
    input_shape: tuple[int, ...]
    evaluate: object = None
    finetune: object = None
    calibration: object = None
    calibration_size: int = 16
    rows: list[Row] = field(default_factory=list)


def setups(names: list[str], resolution: int) -> list[ModelSetup]:
    from hwlat import zoo

    out = []
    for name in names:
        if name == "digits":
            out.append(
                ModelSetup(
                    "digits",
                    digits.pretrained_model(),
                    digits.INPUT_SHAPE,
                    digits.evaluate,
                    digits.finetune,
                    digits.calibration_inputs(),
                    32,
                )
            )
        else:
            shape = (1, 3, resolution, resolution)
            out.append(ModelSetup(name, recalibrate_batchnorm(zoo.build(name), shape), shape))
    return out


def recalibrate_batchnorm(model, input_shape, batches: int = 4, batch: int = 16, seed: int = 0):
    """Re-estimate a random-weight network's batch-norm statistics on random normal inputs (the
    calibration inputs' distribution): with the default statistics (mean 0, variance 1) deep
    activations vanish and the output hardly depends on the input."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, *input_shape[1:], generator=generator))
    return model.eval()


def mobilenet_v2_224():
    """The zoo's MobileNetV2 with batch-norm statistics re-estimated, as a factory for the command
    line: ``PYTHONPATH=. hwlat compress --model benchmarks.bench_compression:mobilenet_v2_224``."""
    from hwlat import zoo

    return recalibrate_batchnorm(zoo.build("mobilenet_v2"), (1, 3, 224, 224))


def make_env(setup: ModelSetup, cost_model, method: str, budget_ms: float, analysis=None, seed: int = 0):
    return CompressionEnv(
        setup.model,
        setup.input_shape,
        cost_model,
        method=method,
        latency_ms=budget_ms,
        evaluate=setup.evaluate,
        finetune=setup.finetune,
        calibration=setup.calibration,
        calibration_size=setup.calibration_size,
        round_to=4 if setup.name == "digits" else 8,
        label=setup.name,
        seed=seed,
        analysis=analysis,
    )


def measure_onnx(models: list, device, store, protocol, repeats: int, folder: Path) -> list:
    import onnx

    from hwlat.profiler.campaign import Campaign

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, proto in enumerate(models):
        path = folder / f"uniform-{i}.onnx"
        onnx.save(proto, str(path))
        paths.append(path)
    return Campaign(device, "ort", store, protocol, show_progress=False).measure_models(paths, repeats)


def run_model(setup: ModelSetup, cost_model, args, device, store, protocol) -> list[Row]:
    probe = make_env(setup, cost_model, "amc", 1e9)
    smallest = probe.minimum.latency_ms
    original = probe.cost(probe.full_policy()).latency_ms
    rows = []
    # uniform baselines: built, predicted and measured once per model
    uniform = [(r, probe.uniform(r)) for r in sorted(set(args.uniform))]
    measured = measure_onnx(
        [probe.compress(p, finetune=False).onnx for _, p in uniform],
        device,
        store,
        protocol,
        args.repeats,
        args.out / setup.name / "uniform",
    )
    uniform_scores = [probe.evaluate(p) for _, p in uniform]
    for fraction in args.budgets:
        budget = smallest + fraction * (original - smallest)
        fits = [
            (res, m)
            for res, m in zip(uniform_scores, measured, strict=True)
            if m.ok and m.median_ms is not None and m.median_ms <= budget
        ]
        if fits:
            res, m = max(fits, key=lambda x: x[0].score)
            rows.append(Row(setup.name, budget, "uniform", 0, res.score, res.latency_ms, m.median_ms))
        else:
            rows.append(Row(setup.name, budget, "uniform", 0, None, None, None, note="none within budget"))
        for agent in args.agents:
            for seed in range(args.seeds):
                env = make_env(setup, cost_model, "amc", budget, probe.analysis, seed)
                out = args.out / setup.name / f"{fraction:g}-{agent}-{seed}"
                options = {"warmup": min(20, max(2, args.episodes // 5))} if agent == "ddpg" else {}
                result = compression_search(
                    env,
                    agent,
                    args.episodes,
                    out,
                    seed=seed,
                    strategy_options=options,
                    top_k=args.verify,
                    uniform_ratios=None,  # measured above, once per model
                )
                best = result.best()
                checks = verify_winners(
                    result, device, store, args.verify, out, protocol=protocol, repeats=args.repeats
                )
                verified = (
                    sum(c.meets_budget for c in checks),
                    sum(c.meets_budget_within_noise for c in checks),
                    sum(c.measured_ms is not None for c in checks),
                )
                measured_best = next(
                    (c.measured_ms for c in checks if best is not None and c.episode == best.number), None
                )
                rows.append(
                    Row(
                        setup.name,
                        budget,
                        agent,
                        seed,
                        best.score if best else None,
                        best.latency_ms if best else None,
                        measured_best,
                        verified,
                        result.seconds_per_episode,
                    )
                )
                print(f"  {setup.name} {fraction:g} {agent} seed {seed} done", file=sys.stderr, flush=True)
    return rows


def int8_section(setup: ModelSetup, cost_model, args) -> str:
    if "int8" not in cost_model.dtypes():
        return (
            f"int8-only vs mixed ({setup.name}): skipped, the predictor has no int8 kernels "
            "(train one with int8 kernels to run this section)."
        )
    probe = make_env(setup, cost_model, "joint", 1e9)
    smallest = probe.minimum.latency_ms
    original = probe.cost(probe.full_policy()).latency_ms
    lines = [
        f"int8-only vs mixed ({setup.name}, predicted):",
        f"{'budget ms':>10} {'int8-only score':>16} {'ms':>8} {'mixed score':>12} {'ms':>8} "
        f"{'int8 layers':>12}",
    ]
    for fraction in args.budgets:
        budget = smallest + fraction * (original - smallest)
        only = [probe.evaluate(probe.uniform(r, "int8")) for r in sorted(set(args.uniform))]
        only = [r for r in only if r.latency_ms <= budget]
        best_only = max(only, key=lambda r: r.score) if only else None
        env = make_env(setup, cost_model, "joint", budget, probe.analysis)
        result = compression_search(env, "ddpg", args.episodes, uniform_ratios=None, write=False)
        best = result.best()
        n_int8 = f"{sum(d == 'int8' for d in best.policy.dtypes)}/{len(best.policy.dtypes)}" if best else "-"
        lines.append(
            f"{budget:10.4f} "
            + (
                f"{best_only.score:16.4f} {best_only.latency_ms:8.4f} "
                if best_only
                else f"{'-':>16} {'-':>8} "
            )
            + (
                f"{best.score:12.4f} {best.latency_ms:8.4f} {n_int8:>12}"
                if best
                else f"{'-':>12} {'-':>8} {'-':>12}"
            )
        )
    return "\n".join(lines)


def table(rows: list[Row], noise_band: float) -> str:
    lines = [
        f"{'model':<13} {'budget ms':>9} {'method':<10} {'seed':>4} {'score':>7} {'pred ms':>9} "
        f"{'meas ms':>9} {'verified within':>16} {'+band':>6} {'s/episode':>9}",
    ]
    for r in rows:
        score = f"{r.score:7.4f}" if r.score is not None else f"{'-':>7}"
        pred = f"{r.predicted_ms:9.4f}" if r.predicted_ms is not None else f"{'-':>9}"
        meas = f"{r.measured_ms:9.4f}" if r.measured_ms is not None else f"{'-':>9}"
        within, band, n = r.verified
        verified = f"{within}/{n}" if r.method != "uniform" else "-"
        banded = f"{band}/{n}" if r.method != "uniform" else "-"
        spe = f"{r.seconds_per_episode:9.2f}" if r.seconds_per_episode else f"{'-':>9}"
        lines.append(
            f"{r.model:<13} {r.budget_ms:9.4f} {r.method:<10} {r.seed:>4} {score} {pred} {meas} "
            f"{verified:>16} {banded:>6} {spe} {r.note}"
        )
    agents = [r for r in rows if r.method != "uniform"]
    within = sum(r.verified[0] for r in agents)
    band = sum(r.verified[1] for r in agents)
    total = sum(r.verified[2] for r in agents)
    lines.append(
        f"verified winners within budget: {within}/{total}; within budget + {noise_band:.0%} noise band: "
        f"{band}/{total}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictor", type=Path, help="a LatencyPredictor trained on the device")
    parser.add_argument("--models", nargs="+", default=["digits", "mobilenet_v2", "resnet18"])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument(
        "--uniform", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    )
    parser.add_argument("--verify", type=int, default=3, help="winners measured per run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per model (median clean pass kept)"
    )
    parser.add_argument("--resolution", type=int, default=224, help="input resolution of the zoo networks")
    parser.add_argument("--device", default="local")
    parser.add_argument("--inventory", type=Path)
    parser.add_argument("--db", default=None, help="measurement store (default <out>/bench.db)")
    parser.add_argument("--tvm-predictor", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hwlat-bench-compression"))
    parser.add_argument("--quick", action="store_true", help="the short timing protocol (smoke runs)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS-compression.md")
    args = parser.parse_args()

    from hwlat.devices.inventory import resolve_device
    from hwlat.profiler.protocol import TimingProtocol
    from hwlat.profiler.store import Store
    from hwlat.search.verify import DEFAULT_NOISE_BAND

    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    started = time.time()
    cost_model = PredictorCostModel.load(args.predictor)
    device = resolve_device(args.device, args.inventory)
    protocol = TimingProtocol.quick() if args.quick else TimingProtocol()
    sections = []
    rows: list[Row] = []
    with Store(args.db or args.out / "bench.db") as store:
        for setup in setups(args.models, args.resolution):
            rows += run_model(setup, cost_model, args, device, store, protocol)
            print(table([r for r in rows if r.model == setup.name], DEFAULT_NOISE_BAND), "\n", flush=True)
    sections.append(table(rows, DEFAULT_NOISE_BAND))
    for setup in setups(args.models, args.resolution):
        sections.append(int8_section(setup, cost_model, args))
        print(sections[-1], "\n", flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after}")
    if args.write:
        write_results(args, sections, load_before, load_after, time.time() - started)


def write_results(args, sections: list[str], load_before, load_after, seconds: float) -> Path:
    path = ROOT / "benchmarks" / "RESULTS-compression.md"
    command = " ".join(["python -m benchmarks.bench_compression", *sys.argv[1:]])
    text = [
        "# Compression search: DDPG vs evolution vs random vs uniform, per device",
        "",
        f"`{command}`, run on {time.strftime('%Y-%m-%d')} on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs), load average {load_before[0]:.1f} before and {load_after[0]:.1f} after; "
        f"{seconds / 60:.0f} minutes.",
        "",
        "Scores: the digits CNN's held-out accuracy (real); for MobileNetV2 and ResNet-18 the "
        "output-fidelity proxy (the mean of top-1 agreement and exp(-KL) against the original network "
        "on random inputs; random weights, batch-norm statistics re-estimated on random inputs), not an "
        "accuracy. `uniform` is the best uniform keep ratio whose measured latency is "
        "within the budget; `verified within` counts the winners measured within the budget.",
        "",
        *(f"```\n{s}\n```\n" for s in sections),
    ]
    path.write_text("\n".join(text))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
