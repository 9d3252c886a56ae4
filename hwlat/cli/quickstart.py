"""``hwlat quickstart``: the whole toolkit once, on one device, into one report folder.

profile the space's kernels in context -> train a predictor -> pick a budget -> search
-> measure the winners -> summary. Every step writes to the store first, so running the
command again resumes instead of starting over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwlat.cli.search import no_second_round
from hwlat.devices.device import Device
from hwlat.predictors.building.training import TrainingConfig, train_predictor
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.search.feasibility import InfeasibleBudgetError
from hwlat.search.objectives import LatencyObjective, searched_budget_ms
from hwlat.search.proxies import get_proxy
from hwlat.search.runner import run_search
from hwlat.search.spaces import get_space
from hwlat.search.strategies import get_strategy
from hwlat.search.study import Study
from hwlat.search.verify import (
    DEFAULT_NOISE_BAND,
    Verification,
    corrected_margin_pct,
    format_verification,
    verify_winners,
)

Log = Callable[[str], None]


@dataclass
class QuickstartConfig:
    space: str = "proxyless"
    resolution: int = 224
    backend: str = "ort"
    strategy: str = "evolution"
    evaluations: int = 2000
    verify: int = 5
    latency_ms: float | None = None  # None: pick the budget from the space (see choose_budget)
    budget_quantile: float = 0.25  # ... as this quantile of random networks' predicted latency
    sampled_kernels: int = 150
    random_networks: int = 6
    calibration_networks: int = 10
    seed: int = 0


@dataclass
class SearchRound:
    """One search under the budget less a safety margin, and its winners as measured."""

    name: str
    margin_pct: float
    searched_ms: float
    study: Study
    latency: LatencyObjective
    results: list[Verification] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "safety_margin_pct": self.margin_pct,
            "searched_ms": self.searched_ms,
            "evaluations": len(self.study.trials),
            "winners_within_budget": sum(r.meets_budget for r in self.results),
            "winners_measured": sum(r.measured_ms is not None for r in self.results),
        }


def choose_budget(predictor, space, quantile: float, seed: int, n: int = 2000) -> float:
    """A budget that about ``quantile`` of random networks meet: tight enough to matter."""
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    return float(np.quantile(predictor.predict_batch(space, archs), quantile))


def run_quickstart(
    device: Device, store: Store, out_dir: Path, config: QuickstartConfig | None = None, log: Log = print
) -> dict:
    """Run every step; returns the summary that is also written to ``out_dir/summary.md``."""
    config = config or QuickstartConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    space = get_space(config.space, resolutions=(config.resolution,))
    started = time.monotonic()
    steps: list[str] = []

    def step(title: str) -> None:
        log(f"\n== step {len(steps) + 1}/5: {title} ({time.monotonic() - started:.0f} s so far)")
        steps.append(title)

    step(
        f"profile the {config.space} space's kernels and train a latency predictor for "
        f"{device.name}/{config.backend}"
    )
    log(
        "Each kernel is timed between a producer and a consumer like those around it in a CNN, "
        "and read from ONNX Runtime's profiler, so it costs what it costs inside a real network."
    )
    training = TrainingConfig(
        sampled_kernels=config.sampled_kernels,
        random_networks=config.random_networks,
        calibration_networks=config.calibration_networks,
        random_state=config.seed,
        kernel_protocol=TimingProtocol.quick(),
    )
    predictor = train_predictor(device, store, training, space, config.backend, log=log)
    predictor_path = predictor.save(out_dir / "predictor.json")
    log(f"predictor saved to {predictor_path}")

    step("choose the latency budget")
    budget = config.latency_ms or choose_budget(predictor, space, config.budget_quantile, config.seed)
    how = (
        "given"
        if config.latency_ms
        else (f"the {config.budget_quantile:.0%} quantile of 2,000 random networks' predicted latency")
    )
    log(f"budget {budget:.2f} ms ({how})")

    step(
        f"search {config.evaluations} architectures with {config.strategy}, maximising FLOPs "
        f"(accuracy proxy) under the budget"
    )

    def search(margin_pct: float, name: str) -> SearchRound:
        searched_ms = searched_budget_ms(budget, margin_pct)
        log(f"searching under {searched_ms:.2f} ms: the budget less a {margin_pct:.1f}% safety margin")
        latency = LatencyObjective(predictor, budget_ms=searched_ms, device=device.name)
        study, report = run_search(
            space,
            [get_proxy("flops"), latency],
            get_strategy(config.strategy, random_state=config.seed),
            config.evaluations,
            out_dir / name,
            top_k=config.verify,
            store=store,
            study_name=f"quickstart-{config.space}-{config.resolution}-{device.name}-{name}",
        )
        log(report.summary())
        return SearchRound(name, margin_pct, searched_ms, study, latency)

    def verify(round_: SearchRound) -> None:
        round_.results = verify_winners(
            round_.study,
            round_.latency,
            device,
            store,
            config.verify,
            out_dir / round_.name,
            backend=config.backend,
            budget_ms=budget,
        )
        log(format_verification(round_.results))

    margin_pct = predictor.safety_margin_pct()
    log(f"safety margin {margin_pct:.1f}%: the 90th percentile of the predictor's calibration residuals")
    rounds = [search(margin_pct, "search")]

    step(f"measure the top {config.verify} winners end to end on {device.name}")
    verify(rounds[0])
    corrected = corrected_margin_pct(rounds[0].results, margin_pct)
    if corrected is not None:
        slowest = max(100 * (r.measured_ms / r.predicted_ms - 1) for r in rounds[0].results if r.measured_ms)
        log(
            f"\nwinners ran up to {slowest:.1f}% slower than predicted, more than the {margin_pct:.1f}% "
            "margin: the predictor errs alike on the networks in this corner of the space, so the "
            f"search runs again under a {corrected:.1f}% margin (the 95% upper prediction bound of "
            "their slowdowns) and its winners are measured"
        )
        try:
            rounds.append(search(corrected, "search-round2"))
        except InfeasibleBudgetError as exc:  # round 1 stands, and its summary is written
            log(no_second_round(exc, corrected, out_dir / rounds[0].name))
        else:
            verify(rounds[-1])
    final = rounds[-1]

    step("write the summary")
    measured = [r for r in final.results if r.measured_ms is not None]
    summary = {
        "device": device.name,
        "backend": config.backend,
        "space": config.space,
        "resolution": config.resolution,
        "budget_ms": budget,
        "safety_margin_pct": final.margin_pct,
        "predictor": str(predictor_path),
        "search_dir": str(out_dir / final.name),
        "evaluations": sum(len(r.study.trials) for r in rounds),  # every round's, counted
        "rounds": [r.to_dict() for r in rounds],
        "winners_measured": len(measured),
        "winners_within_budget": sum(r.meets_budget for r in measured),
        "winners_within_budget_plus_noise": sum(r.meets_budget_within_noise for r in measured),
        "median_abs_error_pct": float(np.median([abs(r.error_pct) for r in measured])) if measured else None,
        "mean_signed_error_pct": float(np.mean([r.error_pct for r in measured])) if measured else None,
        "wall_s": round(time.monotonic() - started, 1),
    }
    lines = [
        f"# hwlat quickstart on {device.name}/{config.backend}",
        "",
        *(f"{i}. {s}" for i, s in enumerate(steps, 1)),
        "",
        f"- predictor: `{predictor_path}`",
        f"- budget: {budget:.2f} ms ({how})",
    ]
    for r in rounds:
        lines += [
            "",
            f"## {r.name}: searched under {r.searched_ms:.2f} ms, the budget less a {r.margin_pct:.1f}% "
            f"safety margin ({len(r.study.trials)} evaluations; Pareto front, trials and winners' ONNX "
            f"in `{out_dir / r.name}`)",
            "",
            "```",
            format_verification(r.results),
            "```",
        ]
    if len(rounds) > 1:
        lines += ["", "The first round's winners ran over the budget; the second round's are the result."]
    lines += ["", f"Wall time: {summary['wall_s']:.0f} s."]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    log(
        f"\nreport: {out_dir}/summary.md  (of {len(measured)} measured winners, "
        f"{summary['winners_within_budget']} within the budget and "
        f"{summary['winners_within_budget_plus_noise']} within it plus the "
        f"{DEFAULT_NOISE_BAND:.0%} measurement noise band; {summary['wall_s']:.0f} s in all)"
    )
    return summary
