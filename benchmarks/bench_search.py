"""Search benchmark: our strategies against random search and Optuna's NSGAIISampler.

Same objectives, same evaluation budget, same seeds for every method; per method the
median over seeds of
  * hypervolume of the feasible front (accuracy-like objective up, latency-like objective
    down, under a budget), normalised: on the synthetic problem by the exact front's
    hypervolume (1.0 = the true front), on the real space by the box from (fewest
    parameters, the budget) to (most parameters, fewest FLOPs) of the whole space (an
    unreachable corner: 1.0 is not attainable there);
  * the best primary objective within budget (the single-objective goal; on the synthetic
    problem as the gap to the exact optimum);
  * evaluations per second (strategy overhead + objective; the objectives here are cheap,
    so this mostly measures the strategy).

Problems:
  synthetic   search.synthetic.SyntheticProblem (12 decisions x 6 options, exact front by DP),
              maximise accuracy, latency <= 40% of the way from fastest to slowest.
  proxyless   ProxylessNAS space (22 decisions), maximise parameters subject to FLOPs <=
              a budget (a real space's structure with objectives computable without
              measurements; the predictor-based latency objective comes with the predictors).

Optuna (benchmark-only dependency: ``pip install optuna``) gets one categorical parameter
per decision and the budget through ``constraints_func``; its population size equals ours.

With ``--predictor P --latency-ms X``, a last section searches the proxyless space with
that latency predictor (evolution, FLOPs proxy), measures the top ``--verify`` winners on
the local device and reports the share that violate the budget when measured.

Usage: python -m benchmarks.bench_search [--evaluations 1000] [--seeds 5] [--problems synthetic proxyless]
                                         [--predictor P --latency-ms X [--verify 5]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwlat.search.feasibility import minimise
from hwlat.search.hypervolume import hypervolume
from hwlat.search.objectives import CallableObjective, Objective
from hwlat.search.pareto import pareto_front
from hwlat.search.proxies import FlopsObjective, ParamsObjective
from hwlat.search.strategies import get_strategy
from hwlat.search.strategies.base import canonical
from hwlat.search.study import Study
from hwlat.search.synthetic import SyntheticProblem

ROOT = Path(__file__).resolve().parents[1]

# "-warm": with the warm start hwlat search uses (the fastest network first, found by the
# feasibility check, whose evaluations count against the same budget); the others start cold,
# as Optuna does. Every method runs at its defaults (no setting was tuned for this benchmark).
METHODS = ("random", "evolution", "nsga2", "rl", "optuna-nsga2", "evolution-warm", "nsga2-warm", "rl-warm")
POPULATION = 50


@dataclass
class Problem:
    name: str
    space: object
    objectives: list[Objective]  # [primary (maximise), constrained (minimise, with budget)]
    reference: np.ndarray  # hypervolume box in loss space (-primary, constrained) ...
    ideal: np.ndarray  # ... fixed per problem, so methods and runs compare
    exact_front: np.ndarray | None = None  # (primary, constrained) pairs, when known
    optimum: float | None = None


@dataclass
class Run:
    method: str
    seed: int
    points: np.ndarray  # (n, 2) primary, constrained value of every evaluation
    seconds: float
    feasibility_evaluations: int = 0  # the warm start's feasibility check, inside the budget


def synthetic_problem() -> Problem:
    p = SyntheticProblem(n_decisions=12, n_options=6, seed=0)
    budget = p.min_latency_ms() + 0.4 * (p.max_latency_ms() - p.min_latency_ms())
    front = p.exact_front()
    front = front[front[:, 0] <= budget][:, ::-1]  # (accuracy, latency)
    reference = np.array([-front[:, 0].min(), budget])
    ideal = np.array([-front[:, 0].max(), front[:, 1].min()])
    return Problem(
        "synthetic", p.space, p.objectives(budget), reference, ideal, front, p.best_accuracy(budget)
    )


def proxyless_problem() -> Problem:
    from hwlat.search.spaces import get_space

    space = get_space("proxyless")
    rng = np.random.default_rng(12345)
    sample = FlopsObjective().evaluate(space, [space.sample(rng) for _ in range(200)])
    budget = float(np.percentile(sample, 25))  # three random networks in four are over it
    params, flops = ParamsObjective(), FlopsObjective("minimize", budget)
    negated = CallableObjective(
        lambda archs: -params.evaluate(space, archs), "-params", "minimize", batched=True
    )
    # Box: from (fewest parameters, the budget) to (most parameters, fewest FLOPs) of the
    # whole space, by coordinate descent (search.feasibility.minimise).
    reference = np.array([-minimise(space, params).value, budget])
    ideal = np.array([minimise(space, negated).value, minimise(space, flops).value])
    return Problem("proxyless", space, [params, flops], reference, ideal)


def run_ours(problem: Problem, method: str, seed: int, evaluations: int) -> Run:
    started = time.perf_counter()
    warm = method.endswith("-warm")
    study = Study(
        problem.space,
        problem.objectives,
        get_strategy(method.removesuffix("-warm"), random_state=seed),
        check_feasibility=warm,
        warm_start=warm,
    )
    # The feasibility check's evaluations come out of the same budget: every method evaluates
    # the objectives ``evaluations`` times in all.
    spent = sum(m.evaluations for m in study.minima.values())
    study.optimize(max(0, evaluations - spent))
    return Run(method, seed, study.values(), time.perf_counter() - started, spent)


def run_optuna(problem: Problem, seed: int, evaluations: int) -> Run:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = problem.objectives[1].budget
    # Optuna 5 reads constraints set on the trial; older versions need constraints_func.
    on_trial = hasattr(optuna.trial.Trial, "set_constraint")
    legacy = {} if on_trial else {"constraints_func": lambda t: [t.user_attrs["over"]]}
    sampler = optuna.samplers.NSGAIISampler(population_size=POPULATION, seed=seed, **legacy)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    decisions = problem.space.decisions
    points = []
    started = time.perf_counter()
    for _ in range(evaluations):
        trial = study.ask()
        raw = [trial.suggest_categorical(d.name, list(range(len(d.options)))) for d in decisions]
        arch = canonical(problem.space, raw)
        values = [float(o.evaluate(problem.space, [arch])[0]) for o in problem.objectives]
        if on_trial:
            trial.set_constraint("budget", values[1] - budget)
        else:
            trial.set_user_attr("over", values[1] - budget)
        study.tell(trial, values)
        points.append(values)
    return Run("optuna-nsga2", seed, np.array(points), time.perf_counter() - started)


def feasible_front(points: np.ndarray, budget: float) -> np.ndarray:
    losses = points * [-1, 1]
    index = pareto_front(losses, np.where(points[:, 1] <= budget, 0.0, 1.0))
    return losses[index]


def summarise(problem: Problem, runs: list[Run]) -> list[dict]:
    budget = problem.objectives[1].budget
    reference = problem.reference
    if problem.exact_front is not None:
        best_possible = hypervolume(problem.exact_front * [-1, 1], reference)
    else:
        best_possible = float(np.prod(reference - problem.ideal))
    rows = []
    for method in METHODS:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        hv = [hypervolume(feasible_front(r.points, budget), reference) / best_possible for r in mine]
        best = [max((p[0] for p in r.points if p[1] <= budget), default=float("nan")) for r in mine]
        rows.append(
            {
                "method": method,
                "hv": statistics.median(hv),
                "hv_min": min(hv),
                "hv_max": max(hv),
                "best": statistics.median(best),
                "gap": problem.optimum - statistics.median(best) if problem.optimum else None,
                "feasible": statistics.median(float(np.mean(r.points[:, 1] <= budget)) for r in mine),
                "evals_per_s": statistics.median(
                    (len(r.points) + r.feasibility_evaluations) / r.seconds for r in mine
                ),
                "feasibility": statistics.median(r.feasibility_evaluations for r in mine),
            }
        )
    return rows


def table(problem: Problem, rows: list[dict], evaluations: int, seeds: int) -> str:
    primary = problem.objectives[0].name
    gap = problem.optimum is not None
    lines = [
        f"### {problem.name}: {evaluations} evaluations, seeds 0..{seeds - 1} (medians)",
        "",
        f"| method | hypervolume (norm.) | min..max over seeds | best {primary} within budget"
        + (" | gap to optimum" if gap else "")
        + " | share of evaluations within budget | feasibility-check evals | evals/s |",
        "|---|---|---|---|" + ("---|" if gap else "") + "---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['hv']:.3f} | {r['hv_min']:.3f}..{r['hv_max']:.3f} | "
            f"{r['best']:.4g}"
            + (f" | {r['gap']:.2f}" if gap else "")
            + f" | {r['feasible']:.2f} | {r['feasibility']:.0f} | {r['evals_per_s']:.0f} |"
        )
    if problem.optimum is not None:
        lines.append(
            f"\nExact optimum within budget: {problem.optimum:.2f}; budget "
            f"{problem.objectives[1].budget:.3f} ms."
        )
    else:
        lines.append(f"\nBudget: {problem.objectives[1].name} <= {problem.objectives[1].budget:.4g}.")
    return "\n".join(lines)


def verification_section(
    predictor: object, budget_ms: float, k: int, evaluations: int
) -> tuple[str, tuple[int, int, int]]:
    """Search with a real latency predictor, measure the winners here, count budget misses
    (over the budget, beyond the noise band, winners measured)."""
    import tempfile

    from hwlat.devices.device import local_device
    from hwlat.profiler.store import Store
    from hwlat.search.objectives import LatencyObjective
    from hwlat.search.runner import run_search
    from hwlat.search.spaces import get_space
    from hwlat.search.verify import format_verification, verify_winners

    space = get_space("proxyless")
    latency = LatencyObjective(predictor, budget_ms)
    with tempfile.TemporaryDirectory() as out:
        study, _ = run_search(
            space,
            [FlopsObjective(), latency],
            get_strategy("evolution"),
            evaluations,
            out,
            top_k=k,
            show_progress=False,
        )
        with Store(Path(out) / "m.db") as store:
            results = verify_winners(study, latency, local_device(), store, k, out)
    over = sum(not r.meets_budget for r in results)
    over_band = sum(not r.meets_budget_within_noise for r in results)
    text = "\n".join(
        [
            f"### verified winners: proxyless, evolution, {evaluations} evaluations, "
            f"{latency.name} <= {budget_ms} ms",
            "",
            "```",
            format_verification(results),
            "```",
            f"\n{over}/{len(results)} over budget when measured; {over_band}/{len(results)} "
            f"beyond the {results[0].noise_band:.0%} noise band.",
        ]
    )
    return text, (over, over_band, len(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--problems",
        nargs="*",
        default=["synthetic", "proxyless"],
        help="give none to run only the verification section",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--predictor", type=Path, help="a trained LatencyPredictor for the last section")
    parser.add_argument(
        "--latency-ms",
        type=float,
        nargs="+",
        help="latency budgets of the last section (one search per budget)",
    )
    parser.add_argument("--verify", type=int, default=5, help="winners measured in the last section")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    makers = {"synthetic": synthetic_problem, "proxyless": proxyless_problem}
    for name in args.problems:
        problem = makers[name]()
        runs = []
        for method in args.methods:
            for seed in range(args.seeds):
                if method == "optuna-nsga2":
                    runs.append(run_optuna(problem, seed, args.evaluations))
                else:
                    runs.append(run_ours(problem, method, seed, args.evaluations))
            print(f"  {name} {method} done", file=sys.stderr, flush=True)
        print(table(problem, summarise(problem, runs), args.evaluations, args.seeds), "\n", flush=True)
    if args.predictor:
        from hwlat.predictors import LatencyPredictor

        predictor = LatencyPredictor.load(args.predictor)
        over = over_band = total = 0
        for budget_ms in args.latency_ms:
            text, counts = verification_section(predictor, budget_ms, args.verify, args.evaluations)
            print(text, "\n", flush=True)
            over, over_band, total = over + counts[0], over_band + counts[1], total + counts[2]
        print(
            f"All budgets: {over}/{total} verified winners over budget when measured, "
            f"{over_band}/{total} beyond the noise band.\n"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
