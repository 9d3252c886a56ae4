"""``hwlat search`` (search a space under latency budgets, verify the winners) and ``hwlat quickstart``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hwlat.cli import options
from hwlat.devices.inventory import resolve_device
from hwlat.errors import EXIT_FAILED, ConfigError
from hwlat.profiler.store.leases import holder_id

if TYPE_CHECKING:
    from hwlat.search import InfeasibleBudgetError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find the best networks of a space under latency budgets",
        description="Search a space with a latency predictor per device; writes the "
        "Pareto front (JSON, PNG), hypervolume, all trials and the winners' ONNX to "
        "--out. Re-running the same command resumes an interrupted search.",
    )
    p.add_argument("--space", required=True, help="search space: proxyless, ofa_mbv3, nb201 or fbnet")
    p.add_argument(
        "--predictor",
        type=Path,
        action="append",
        required=True,
        help="trained latency predictor (repeatable: one per device)",
    )
    p.add_argument(
        "--latency-ms",
        type=options.number(0),
        action="append",
        required=True,
        help="latency budget, one per --predictor in the same order",
    )
    options.add_safety_margin(p, "each budget")
    p.add_argument(
        "--strategy", default="evolution", help="evolution, nsga2, rl or random (default evolution)"
    )
    p.add_argument(
        "--budget", type=options.integer(1), default=1000, help="architectures to evaluate (default 1000)"
    )
    p.add_argument(
        "--objective",
        default="flops",
        help="what to maximise: an accuracy proxy (flops, params, naswot, synflow; default flops) or "
        "your own function of an architecture, package.module:function",
    )
    options.add_out(p, "output folder: front, plots, trials, winners' ONNX")
    p.add_argument(
        "--worker",
        action="store_true",
        help="join the study as one of several workers (processes or machines on one --db), asking and "
        "telling through the database; without it a run replays and resumes the study alone",
    )
    p.add_argument(
        "--study",
        help="name of the study in the store (default: the output folder's name); re-running resumes it",
    )
    p.add_argument("--seed", type=options.integer(0), default=0, help="strategy seed (default 0)")
    p.add_argument(
        "--batch-size", type=options.integer(1), help="architectures per step (default: the strategy's)"
    )
    p.add_argument("--top", type=options.integer(0), default=5, help="winners exported as ONNX (default 5)")
    g = p.add_argument_group("verification on the device")
    g.add_argument(
        "--verify",
        type=options.integer(0),
        default=0,
        metavar="K",
        help="measure the top K winners on the device and compare with the prediction",
    )
    g.add_argument(
        "--device",
        action="append",
        help="device to verify on, one per --predictor (default: the predictor's device)",
    )
    g.add_argument(
        "--noise-band",
        type=options.number(0, above=False),
        default=0.05,
        help="measured latency up to budget x (1 + band) still passes (default 0.05)",
    )
    g.add_argument(
        "--second-round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when a verified winner runs over its budget, search again (into OUT/round2) under the "
        "margin its winners' slowdowns call for and verify again (default); --no-second-round only "
        "prints that margin",
    )
    g.add_argument(
        "--verify-repeats",
        type=options.integer(1),
        default=3,
        help="times each winner is measured; the median clean pass is kept (default 3)",
    )
    options.add_backend(g, tune_trials=False)
    options.add_inventory(g)
    options.add_db(g)
    options.add_wait(g)
    options.add_protocol(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "quickstart",
        help="profile, train, search and verify on one device (~10 min)",
        description="The whole toolkit once: profile the space's kernels, train a "
        "predictor, search under a latency budget, measure the winners, write a report.",
    )
    options.add_device(p)
    p.add_argument("--backend", default="ort", help="ort (default; kernels are read from its profiler)")
    p.add_argument("--space", default="proxyless", help="search space (default proxyless)")
    p.add_argument(
        "--resolution", type=options.integer(1), default=224, help="input resolution (default 224)"
    )
    p.add_argument(
        "--latency-ms", type=options.number(0), help="latency budget (default: chosen from the space)"
    )
    p.add_argument(
        "--evaluations", type=options.integer(1), default=2000, help="architectures searched (default 2000)"
    )
    p.add_argument(
        "--verify", type=options.integer(0), default=5, help="winners measured on the device (default 5)"
    )
    options.add_out(p, "report folder (default hwlat-report)", required=False, default=Path("hwlat-report"))
    options.add_db(p)
    options.add_wait(p)
    p.set_defaults(func=cmd_quickstart)


def cmd_search(args: argparse.Namespace) -> int:
    from hwlat.predictors import LatencyPredictor
    from hwlat.search import InfeasibleBudgetError
    from hwlat.search.objectives import LatencyObjective, searched_budget_ms
    from hwlat.search.runner import run_search
    from hwlat.search.spaces import get_space
    from hwlat.search.strategies import get_strategy
    from hwlat.search.verify import corrected_margin_pct, format_verification, verify_winners

    if len(args.latency_ms) != len(args.predictor):
        raise ConfigError(
            f"{len(args.predictor)} --predictor but {len(args.latency_ms)} --latency-ms; "
            "give one latency budget per predictor, in the same order"
        )
    if args.device and len(args.device) != len(args.predictor):
        raise ConfigError("give one --device per --predictor, or none to verify on each predictor's device")
    space = get_space(args.space)
    predictors = [LatencyPredictor.load(path) for path in args.predictor]
    margins = [options.safety_margin_pct(args, p) for p in predictors]

    def search(margins: list[float], out: Path, study_name: str | None):
        latencies = [
            LatencyObjective(p, searched_budget_ms(budget, margin))
            for p, budget, margin in zip(predictors, args.latency_ms, margins, strict=True)
        ]
        print(
            f"searching {space.name} ({space.size():.3g} networks) with {args.strategy}, {args.budget} "
            f"evaluations, maximising {args.objective} under "
            + ", ".join(
                f"{o.name} <= {o.budget:.4g} (budget {b:g} less a {m:.1f}% safety margin)"
                for o, b, m in zip(latencies, args.latency_ms, margins, strict=True)
            )
        )
        study, report = run_search(
            space,
            [_objective(args.objective), *latencies],
            get_strategy(args.strategy, random_state=args.seed),
            args.budget,
            out,
            batch_size=args.batch_size,
            top_k=max(args.top, args.verify),
            show_progress=not args.no_progress,
            store=store,
            study_name=study_name,
            worker=holder_id() if args.worker else None,  # host:pid:random, unique per process
        )
        for name, minimum in study.minima.items():
            print(f"fastest network found for {name}: {minimum.value:.3f} ms")
        print(report.summary())
        if not report.front:
            print(
                "hwlat: no evaluated network met every budget; raise --budget or the latency budgets",
                file=sys.stderr,
            )
        return latencies, study, report

    def verify(latencies, study, out: Path) -> list[list]:
        results = []
        names = args.device or [o.device for o in latencies]
        for objective, name, budget in zip(latencies, names, args.latency_ms, strict=True):
            device = resolve_device(name, args.inventory)
            results.append(
                verify_winners(
                    study,
                    objective,
                    device,
                    store,
                    args.verify,
                    out,
                    backend=args.backend,
                    protocol=options.protocol(args),
                    noise_band=args.noise_band,
                    repeats=args.verify_repeats,
                    budget_ms=budget,
                )
            )
            print(f"verified on {device.name}/{args.backend} (predicted vs measured):")
            print(format_verification(results[-1]))
        return results

    with options.open_store(args) as store:
        latencies, study, report = search(margins, args.out, args.study)
        if not report.front:
            return EXIT_FAILED
        if not args.verify:
            return 0
        results = verify(latencies, study, args.out)
        corrected = [corrected_margin_pct(r, m) for r, m in zip(results, margins, strict=True)]
        if any(c is not None for c in corrected):
            margins = [m if c is None else c for c, m in zip(corrected, margins, strict=True)]
            retry = ", ".join(f"{m:.1f}%" for m in margins)
            if not args.second_round:
                print(  # --safety-margin takes one value, for every predictor
                    "winners ran over the budget: the predictor errs alike on networks in this corner "
                    f"of the space; search again with --safety-margin {max(margins):.1f} (the 95% upper "
                    "prediction bound of their slowdowns) and a new --out for winners within the budget"
                )
            else:
                print(
                    "\nwinners ran over the budget: the predictor errs alike on networks in this corner "
                    f"of the space, so the search runs again under a {retry} margin (the 95% upper "
                    f"prediction bound of their slowdowns), {args.budget} more evaluations, into "
                    f"{args.out / 'round2'}, and its winners are measured"
                )
                study_name = f"{args.study or args.out.resolve().name}-round2"
                try:
                    latencies, study, report = search(margins, args.out / "round2", study_name)
                except InfeasibleBudgetError as exc:
                    print(f"hwlat: error: {no_second_round(exc, max(margins), args.out)}", file=sys.stderr)
                    return EXIT_FAILED
                if not report.front:
                    return EXIT_FAILED
                results = verify(latencies, study, args.out / "round2")
    return 0 if all(r.meets_budget_within_noise for rs in results for r in rs) else EXIT_FAILED


def no_second_round(exc: InfeasibleBudgetError, margin_pct: float, first_round: Path) -> str:
    """Why a second search round cannot run: its margin leaves a budget below the space's fastest
    network. Round 1 stands; the fix is a larger budget or a predictor that knows these networks."""
    if exc.smallest is None:
        return f"no second search round: {exc}"
    return (
        f"no second search round: the {margin_pct:.1f}% margin that round 1's slowdowns call for "
        f"leaves a budget below the fastest network the predictor finds in the space "
        f"({exc.smallest:.4g} ms). Round 1's measured winners stand in {first_round} (a budget of at "
        f"least {exc.smallest * (1 + margin_pct / 100):.4g} ms leaves room for the margin; or train "
        "the predictor with networks like its winners)"
    )


def _objective(name: str):
    from hwlat.search.objectives import CallableObjective
    from hwlat.search.proxies import get_proxy

    if ":" in name:
        return CallableObjective(options.load_callable(name), name=name)
    return get_proxy(name)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from hwlat.cli.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(
        space=args.space,
        resolution=args.resolution,
        backend=args.backend,
        evaluations=args.evaluations,
        verify=args.verify,
        latency_ms=args.latency_ms,
    )
    device = resolve_device(args.device, args.inventory)
    with options.open_store(args) as store:
        summary = run_quickstart(device, store, args.out, config)
    return 0 if summary["winners_measured"] else EXIT_FAILED
