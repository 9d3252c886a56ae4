"""Search layer: strategies against random search on a problem with a known optimum, budgets,
resume, Pareto/hypervolume arithmetic, proxies, the report folder and measured verification."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.stats

from hwlat.search.feasibility import InfeasibleBudgetError, minimise
from hwlat.search.hypervolume import hypervolume
from hwlat.search.objectives import CallableObjective, LatencyObjective
from hwlat.search.pareto import crowding_distance, non_dominated_sort, pareto_front
from hwlat.search.proxies import FlopsObjective, NaswotObjective, ParamsObjective, SynflowObjective
from hwlat.search.report import hypervolume_history, reference_point, write_report
from hwlat.search.spaces import Decision
from hwlat.search.storage import SearchStorage
from hwlat.search.strategies import (
    STRATEGIES,
    RandomSearch,
    Reinforce,
    Strategy,
    UnknownStrategyError,
    get_strategy,
    register_strategy,
)
from hwlat.search.study import Study, StudyMismatchError
from hwlat.search.synthetic import SyntheticProblem, SyntheticSpace

SEEDS = range(5)
TRIALS = 300


@pytest.fixture(scope="module")
def problem() -> SyntheticProblem:
    return SyntheticProblem(n_decisions=12, n_options=6, seed=0)


def budget_at(problem: SyntheticProblem, fraction: float) -> float:
    """A latency budget ``fraction`` of the way from the fastest to the slowest network."""
    return problem.min_latency_ms() + fraction * (problem.max_latency_ms() - problem.min_latency_ms())


def run(
    problem: SyntheticProblem, strategy: Strategy, budget_ms: float | None, trials: int = TRIALS
) -> Study:
    study = Study(problem.space, problem.objectives(budget_ms), strategy)
    study.optimize(trials)
    return study


def best_feasible_accuracy(study: Study) -> float:
    front = study.pareto_front()
    return front[0].values[0] if front else -np.inf


def normalised_hv(problem: SyntheticProblem, study: Study) -> float:
    """Hypervolume of the feasible front, as a fraction of the exact front's."""
    reference = np.array([-problem.base_accuracy, problem.max_latency_ms()])
    exact = problem.exact_front() * [1, -1]
    exact = exact[:, ::-1]  # (-accuracy, latency)
    found = np.array([(-t.values[0], t.values[1]) for t in study.pareto_front()])
    return hypervolume(found, reference) / hypervolume(exact, reference)


# ----- strategies beat random search --------------------------------------------------------
@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_single_objective_strategies_beat_random_search_under_a_budget(problem, name) -> None:
    budget = budget_at(problem, 0.4)
    optimum = problem.best_accuracy(budget)
    random_gap = np.median(
        [optimum - best_feasible_accuracy(run(problem, RandomSearch(random_state=s), budget)) for s in SEEDS]
    )
    gap = np.median(
        [
            optimum - best_feasible_accuracy(run(problem, get_strategy(name, random_state=s), budget))
            for s in SEEDS
        ]
    )
    assert 0 <= gap < 0.75 * random_gap, (name, gap, random_gap)


def test_nsga2_beats_random_search_in_hypervolume(problem) -> None:
    budget = budget_at(problem, 0.6)
    random_hv = np.median(
        [normalised_hv(problem, run(problem, RandomSearch(random_state=s), budget)) for s in SEEDS]
    )
    nsga_hv = np.median(
        [normalised_hv(problem, run(problem, get_strategy("nsga2", random_state=s), budget)) for s in SEEDS]
    )
    assert random_hv < nsga_hv <= 1.0, (nsga_hv, random_hv)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_are_deterministic_given_a_seed(problem, name) -> None:
    a = run(problem, get_strategy(name, random_state=3), budget_at(problem, 0.5), trials=120)
    b = run(problem, get_strategy(name, random_state=3), budget_at(problem, 0.5), trials=120)
    c = run(problem, get_strategy(name, random_state=4), budget_at(problem, 0.5), trials=120)
    assert [t.arch for t in a.trials] == [t.arch for t in b.trials]
    assert [t.arch for t in a.trials] != [t.arch for t in c.trials]


# ----- budgets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_front_holds_only_architectures_within_every_device_budget(problem, name) -> None:
    other_device = SyntheticProblem(n_decisions=12, n_options=6, seed=7)
    budgets = (budget_at(problem, 0.5), budget_at(other_device, 0.4))
    objectives = problem.objectives(budgets[0]) + [LatencyObjective(other_device, budgets[1], "other")]
    study = Study(problem.space, objectives, get_strategy(name, random_state=0))
    study.optimize(TRIALS)
    front = study.pareto_front()
    assert front and not study.feasible().all()  # the budgets bite, and something meets them
    for trial in front:
        assert trial.feasible
        assert problem.latency_ms([trial.arch])[0] <= budgets[0]
        assert other_device.latency_ms([trial.arch])[0] <= budgets[1]


def test_an_impossible_budget_fails_at_once_with_the_fastest_latency(problem) -> None:
    evaluated = []

    class Counting(SyntheticProblem):
        def predict_batch(self, space, archs):
            evaluated.append(len(archs))
            return super().predict_batch(space, archs)

    counting = Counting(n_decisions=12, n_options=6, seed=0)
    fastest = problem.min_latency_ms()
    with pytest.raises(InfeasibleBudgetError, match=f"{fastest:.4g}") as info:
        Study(problem.space, counting.objectives(0.9 * fastest), get_strategy("evolution"))
    assert "Raise the budget" in str(info.value)
    assert sum(evaluated) < 2000  # coordinate sweeps, not a search
    Study(problem.space, counting.objectives(fastest), get_strategy("evolution"))  # exactly met: fine


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_tight_budget_is_met_thanks_to_the_warm_start(problem, name) -> None:
    budget = budget_at(problem, 0.03)  # random networks essentially never fit
    study = run(problem, get_strategy(name, random_state=0), budget, trials=100)
    first = study.trials[0]
    assert first.batch == -1 and first.feasible
    assert first.values[1] == pytest.approx(problem.min_latency_ms())
    assert study.pareto_front()
    cold = Study(
        problem.space, problem.objectives(budget), get_strategy(name, random_state=0), warm_start=False
    )
    cold.optimize(100)
    assert all(t.batch >= 0 for t in cold.trials)


def test_coordinate_descent_finds_the_exact_minimum_of_a_separable_latency(problem) -> None:
    found = minimise(problem.space, problem.objectives(None)[1])
    assert found.value == pytest.approx(problem.min_latency_ms())
    assert problem.latency_ms([found.arch])[0] == pytest.approx(found.value)


# ----- resume ----------------------------------------------------------------------------------
class Interrupt(KeyboardInterrupt):
    pass


def accuracy_that_stops_after(problem: SyntheticProblem, calls: int | None) -> CallableObjective:
    """The problem's accuracy, raising a Ctrl-C on its ``calls``-th evaluation (None: never)."""
    count = [0]

    def accuracy(archs: Sequence) -> np.ndarray:
        count[0] += 1
        if calls is not None and count[0] >= calls:
            raise Interrupt
        return problem.accuracy(archs)

    return CallableObjective(accuracy, "accuracy", "maximize", batched=True)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_an_interrupted_search_resumes_to_the_same_result(problem, tmp_path, name) -> None:
    budget, total = budget_at(problem, 0.5), 203
    latency = LatencyObjective(problem, budget)

    def study(calls: int | None, strategy_seed: int = 0) -> Study:
        return Study(
            problem.space,
            [accuracy_that_stops_after(problem, calls), latency],
            get_strategy(name, random_state=strategy_seed),
            storage=tmp_path / "s.db",
        )

    reference = Study(problem.space, problem.objectives(budget), get_strategy(name, random_state=0))
    reference.optimize(total)

    study(None).optimize(61)  # stops inside a batch
    with pytest.raises(Interrupt):
        study(calls=3).optimize(total)  # Ctrl-C while evaluating
    with pytest.raises(StudyMismatchError, match="random_state"):
        study(None, strategy_seed=1)
    resumed = study(None)
    assert resumed.identical_replay and 61 < len(resumed.trials) < total
    resumed.optimize(total)

    assert [(t.arch, t.values) for t in resumed.trials] == [(t.arch, t.values) for t in reference.trials]
    assert [t.number for t in resumed.pareto_front()] == [t.number for t in reference.pareto_front()]
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM trials").fetchone()[0]
    assert rows == total


def test_reopening_with_other_objectives_is_refused(problem, tmp_path) -> None:
    Study(problem.space, problem.objectives(5.0), RandomSearch(), storage=tmp_path / "s.db").optimize(10)
    with pytest.raises(StudyMismatchError, match="objectives"):
        Study(problem.space, problem.objectives(6.0), RandomSearch(), storage=tmp_path / "s.db")
    other = Study(
        problem.space, problem.objectives(6.0), RandomSearch(), storage=tmp_path / "s.db", name="second"
    )
    assert other.trials == []
    assert SearchStorage(tmp_path / "s.db").study_names() == ["search", "second"]


# ----- Pareto and hypervolume arithmetic -------------------------------------------------------
def test_hypervolume_of_hand_examples() -> None:
    staircase = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(staircase, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # A dominated point and one beyond the reference add nothing.
    extra = np.vstack([staircase, [[3.0, 3.0], [5.0, 0.5]]])
    assert hypervolume(extra, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # 3-D: two boxes of volume 2 overlapping in a unit cube.
    two = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    assert hypervolume(two, np.array([2.0, 2.0, 2.0])) == pytest.approx(3.0)
    assert hypervolume(np.empty((0, 2)), np.array([1.0, 1.0])) == 0.0


@pytest.mark.parametrize("m", [3, 4])
def test_hypervolume_matches_counting_unit_cells(m) -> None:
    rng = np.random.default_rng(m)
    points = rng.integers(0, 6, size=(12, m)).astype(float)
    reference = np.full(m, 6.0)
    cells = np.stack(np.meshgrid(*[np.arange(6)] * m, indexing="ij"), axis=-1).reshape(-1, m)
    covered = np.any(np.all(points[None, :, :] <= cells[:, None, :], axis=2), axis=1)
    assert hypervolume(points, reference) == pytest.approx(covered.sum())


def test_pareto_front_sorting_and_crowding() -> None:
    losses = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [5, 5.0]])
    assert pareto_front(losses).tolist() == [0, 1, 3, 4]  # duplicates of a front point kept
    assert pareto_front(losses, np.array([0, 0.5, 0, 0, 0, 0])).tolist() == [0, 3, 4]
    fronts = non_dominated_sort(losses)
    assert [f.tolist() for f in fronts] == [[0, 1, 3, 4], [2], [5]]
    # Constrained domination: a feasible point beats any infeasible one; less violation wins.
    fronts = non_dominated_sort(losses, np.array([0.0, 2.0, 0.0, 1.0, 0.0, 0.0]))
    assert [f.tolist() for f in fronts] == [[0, 4], [2], [5], [3], [1]]
    distance = crowding_distance(np.array([[1, 4], [2, 3], [3, 2], [4, 1.0]]))
    assert np.isinf(distance[[0, 3]]).all() and distance[1] == pytest.approx(distance[2]) == 4 / 3


def test_hypervolume_over_the_run_never_drops(problem) -> None:
    study = run(problem, get_strategy("nsga2", random_state=0), budget_at(problem, 0.5), trials=200)
    history = hypervolume_history(study, reference_point(study))
    values = [hv for _, hv in history]
    assert history[-1][0] == 200 and values == sorted(values) and 0 < values[-1] <= 1


# ----- plugging in a strategy and the RL reward -------------------------------------------------
def test_a_user_strategy_plugs_in_by_name(problem) -> None:
    @register_strategy
    class FirstOption(Strategy):
        name = "test-first-option"

        def __init__(self, step: int = 1, random_state: int | None = 0) -> None:
            super().__init__(random_state)
            self.step = step

        def ask(self, n):
            return [self.space.mutate(tuple([0] * len(self.space.decisions)), self.rng) for _ in range(n)]

        def tell(self, archs, losses, ratios):
            pass

    try:
        strategy = get_strategy("test-first-option", step=2)
        assert strategy.config() == {"step": 2, "random_state": 0}
        study = Study(problem.space, problem.objectives(None), strategy, batch_size=4)
        study.optimize(8)
        assert all(sum(t.arch) > 0 for t in study.trials)
    finally:
        STRATEGIES.pop("test-first-option")
    with pytest.raises(UnknownStrategyError, match="evolution"):
        get_strategy("test-first-option")


def test_mnasnet_rewards() -> None:
    accuracy = np.array([0.7, 0.7, 0.7])
    ratios = np.array([[0.5], [1.0], [2.0]])
    soft = Reinforce(reward="soft").rewards(accuracy, ratios)
    assert soft == pytest.approx(0.7 * np.array([0.5, 1.0, 2.0]) ** -0.07)
    hard = Reinforce(reward="hard").rewards(accuracy, ratios)
    assert hard == pytest.approx([0.7, 0.7, 0.35])


# ----- proxies, report and verification on a real (tiny) torch space ---------------------------
class TinyCnnSpace(SyntheticSpace):
    """conv(k, w1)+BN+ReLU -> conv3x3/2(w2)+ReLU -> global pool -> linear(10), at 16x16."""

    name = "tiny-cnn"

    def __init__(self) -> None:
        self.decisions = [Decision("k", (1, 3)), Decision("w1", (4, 8, 16)), Decision("w2", (8, 16, 32))]

    def input_shape(self, arch) -> tuple[int, ...]:
        return (1, 3, 16, 16)

    def ops(self, arch):
        from hwlat.profiler.opspec import OpSpec

        k, w1, w2 = (d.options[i] for d, i in zip(self.decisions, arch, strict=True))
        return [
            OpSpec("conv", (1, 3, 16, 16), out_channels=w1, kernel=k, padding=k // 2, activation="relu"),
            OpSpec(
                "conv", (1, w1, 16, 16), out_channels=w2, kernel=3, stride=2, padding=1, activation="relu"
            ),
            OpSpec("globalavgpool", (1, w2, 8, 8)),
            OpSpec("gemm", (1, w2), out_channels=10),
        ]

    def to_torch(self, arch):
        from torch import nn

        k, w1, w2 = (d.options[i] for d, i in zip(self.decisions, arch, strict=True))
        return nn.Sequential(
            nn.Conv2d(3, w1, k, padding=k // 2),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(w2, 10),
        )

    def to_onnx(self, arch):
        import onnx
        import torch

        buffer = io.BytesIO()
        torch.onnx.export(
            self.to_torch(arch).eval(),
            torch.randn(self.input_shape(arch)),
            buffer,
            dynamo=False,
            input_names=["input"],
        )
        return onnx.load_from_string(buffer.getvalue())


class FlopsLatency:
    """A stand-in latency model (the predictors are another module): ms proportional to FLOPs."""

    device = "local"

    def __init__(self, ms_per_mflop: float) -> None:
        self.ms_per_mflop = ms_per_mflop

    def predict_batch(self, space, archs):
        return FlopsObjective().evaluate(space, archs) / 1e6 * self.ms_per_mflop


def test_flops_and_params_proxies_agree_with_torch() -> None:
    space = TinyCnnSpace()
    archs = [(0, 0, 0), (1, 2, 2)]
    params = ParamsObjective().evaluate(space, archs)
    for arch, p in zip(archs, params, strict=True):
        model = space.to_torch(arch)
        conv_linear = sum(
            q.numel() for m in model if type(m).__name__ in ("Conv2d", "Linear") for q in m.parameters()
        )
        assert p == conv_linear
    flops = FlopsObjective().evaluate(space, archs)
    assert flops[1] > flops[0] > 0


@pytest.mark.parametrize(
    "proxy", [NaswotObjective(batch_size=8), SynflowObjective()], ids=["naswot", "synflow"]
)
def test_zero_cost_proxies_are_finite_deterministic_and_tell_networks_apart(proxy) -> None:
    space = TinyCnnSpace()
    archs = [(0, 0, 0), (1, 1, 1), (1, 2, 2)]
    first, second = proxy.evaluate(space, archs), proxy.evaluate(space, archs)
    assert np.isfinite(first).all() and (first == second).all()
    assert len(set(first.tolist())) == 3
    if proxy.name == "synflow":  # a wider network passes more synaptic flow
        assert first[2] > first[1] > first[0]


def test_report_folder_has_front_plots_and_winner_onnx(tmp_path) -> None:
    import onnx

    space = TinyCnnSpace()
    objectives = [FlopsObjective(), LatencyObjective(FlopsLatency(1.0), budget_ms=1.0)]
    study = Study(space, objectives, get_strategy("nsga2", population_size=4, random_state=0), batch_size=4)
    study.optimize(24)
    report = write_report(study, tmp_path, top_k=2)
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert saved["front"] and all(
        f["feasible"] and f["values"]["latency_ms@local"] <= 1.0 for f in saved["front"]
    )
    assert saved["front"][0]["config"] and saved["front"][0]["onnx"]
    for name in ("pareto.png", "hypervolume.png", "trials.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(report.onnx) == 2
    for path in report.onnx:
        onnx.checker.check_model(onnx.load(str(path)))
    assert "on the Pareto front" in report.summary()


def test_verify_measures_winners_on_the_device_and_flags_budget_misses(tmp_path, quick_protocol) -> None:
    from hwlat.devices.device import local_device
    from hwlat.profiler.store import Store
    from hwlat.search.verify import format_verification, verify_winners

    space = TinyCnnSpace()
    # Predicts 1000x too fast: the winners look within a 0.01 ms budget but are not.
    latency = LatencyObjective(FlopsLatency(1e-5), budget_ms=0.01)
    study = Study(space, [FlopsObjective(), latency], get_strategy("evolution", random_state=0), batch_size=6)
    study.optimize(12)
    with Store(tmp_path / "m.db") as store:
        results = verify_winners(
            study, latency, local_device(), store, k=2, out_dir=tmp_path, protocol=quick_protocol
        )
        assert len(store.measurements(kind="model")) == 2
    assert [r.rank for r in results] == [1, 2]
    for r in results:
        assert r.measured_ms and r.measured_ms > r.predicted_ms and not r.meets_budget
        assert r.error_pct < -50
    table = format_verification(results)
    assert "OVER BUDGET" in table
    mean = np.mean([r.error_pct for r in results])
    assert f"signed error on the 2 winners (predicted - measured): mean {mean:+.1f}%" in table
    assert "0 within the budget itself" in table
    saved = json.loads((tmp_path / "verify-local.json").read_text())
    assert saved[0]["meets_budget"] is False and saved[0]["measured_ms"] == results[0].measured_ms


# ----- the CLI, with a real (synthetically trained) LatencyPredictor ---------------------------
@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory):
    """A LatencyPredictor whose kernel regressor learnt a made-up compute+memory latency."""
    from tests.synthetic import synthetic_predictor

    return synthetic_predictor(200).save(tmp_path_factory.mktemp("predictor") / "local.json")


def test_cli_search_searches_again_when_winners_run_over_the_budget(tmp_path, capsys) -> None:
    """A predictor ten times too optimistic: the winner of the first search runs over the budget,
    so the search runs again (into OUT/round2) under the margin that slowdown calls for, and
    that round's winner is verified and decides the exit status."""
    from hwlat import cli as hwlat_cli
    from hwlat.predictors import LatencyPredictor
    from hwlat.search.spaces import get_space
    from tests.synthetic import synthetic_predictor

    predictor = synthetic_predictor(200, scale=0.1).save(tmp_path / "optimistic.json")
    fastest = minimise(get_space("proxyless"), LatencyObjective(LatencyPredictor.load(predictor))).value
    budget = 6 * fastest
    args = ["search", "--space", "proxyless", "--predictor", str(predictor), "--strategy", "evolution"]
    args += ["--out", str(tmp_path / "out"), "--no-progress", "--top", "1", "--db", str(tmp_path / "m.db")]
    args += ["--latency-ms", f"{budget}", "--budget", "40", "--verify", "1", "--quick"]
    status = hwlat_cli.main(args)
    captured = capsys.readouterr()
    first = json.loads((tmp_path / "out" / "verify-local.json").read_text())
    assert not first[0]["meets_budget"] and "the search runs again" in captured.out
    again = tmp_path / "out" / "round2" / "verify-local.json"
    if again.exists():
        second = json.loads(again.read_text())
        assert second[0]["predicted_ms"] < first[0]["predicted_ms"]  # under the larger margin
        assert status == (0 if second[0]["meets_budget_within_noise"] else 1)
    elif (tmp_path / "out" / "round2").exists():  # no evaluated network met the margin's budget
        assert "no evaluated network met every budget" in captured.err and status == 1
    else:  # the margin left a budget below the space's fastest network: said, and a failure
        err = captured.err.strip()
        assert err.startswith("hwlat: error: no second search round") and "\n" not in err
        assert f"stand in {tmp_path / 'out'}" in err and status == 1


def test_no_second_round_names_the_budget_that_leaves_room_for_the_margin(tmp_path) -> None:
    """When round 1's slowdowns call for a margin that leaves a budget below the space's fastest
    network, the message says so, where round 1's winners stand, and what budget would do."""
    from hwlat.cli.search import no_second_round
    from hwlat.search import InfeasibleBudgetError

    exc = InfeasibleBudgetError("no architecture of space 'proxyless' can meet ...", smallest=2.0)
    line = no_second_round(exc, 25.0, tmp_path / "out")
    assert line.startswith("no second search round: the 25.0% margin")
    assert "(2 ms)" in line and f"stand in {tmp_path / 'out'}" in line and "at least 2.5 ms" in line
    assert no_second_round(InfeasibleBudgetError("why"), 25.0, tmp_path) == "no second search round: why"


def test_cli_search_verifies_winners_and_resumes(predictor_file, tmp_path, capsys) -> None:
    from hwlat import cli as hwlat_cli
    from hwlat.predictors import LatencyPredictor
    from hwlat.search.spaces import get_space

    fastest = minimise(get_space("proxyless"), LatencyObjective(LatencyPredictor.load(predictor_file))).value
    args = [
        "search",
        "--space",
        "proxyless",
        "--predictor",
        str(predictor_file),
        "--strategy",
        "evolution",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--top",
        "2",
        "--db",
        str(tmp_path / "m.db"),
    ]

    assert hwlat_cli.main([*args, "--latency-ms", f"{0.9 * fastest}", "--budget", "40"]) == 2
    assert f"Raise the budget to at least {fastest:.4g}" in capsys.readouterr().err

    budget = 1.5 * fastest
    verify_args = [*args, "--latency-ms", f"{budget}", "--budget", "40", "--verify", "1", "--quick"]
    status = hwlat_cli.main(verify_args)
    out = capsys.readouterr().out
    assert "verified on local/ort" in out
    verified = json.loads((tmp_path / "out" / "verify-local.json").read_text())
    assert len(verified) == 1 and verified[0]["measured_ms"] > 0
    assert verified[0]["meets_budget"] == (verified[0]["measured_ms"] <= budget)
    # a winner over the budget itself makes the search run again under the margin its slowdown
    # calls for (into out/round2), and that round's winners decide the exit status
    second_round = not verified[0]["meets_budget"]
    assert ("the search runs again" in out) == second_round
    final = tmp_path / "out" / "round2" if second_round else tmp_path / "out"
    if not second_round or (final / "verify-local.json").exists():
        final_verified = json.loads((final / "verify-local.json").read_text())
        assert status == (0 if all(v["meets_budget_within_noise"] for v in final_verified) else 1)
    else:  # the corrected margin left no network within the budget
        assert status == 1
    # with --no-second-round, the margin is printed instead
    hwlat_cli.main([*verify_args, "--no-second-round"])
    assert ("search again with --safety-margin" in capsys.readouterr().out) == second_round
    for name in ("pareto.png", "pareto.json", "hypervolume.png", "trials.csv"):
        assert (tmp_path / "out" / name).exists()
    front = json.loads((tmp_path / "out" / "pareto.json").read_text())["front"]
    assert len(list((tmp_path / "out" / "winners").glob("*.onnx"))) == min(2, len(front))

    # The same command again resumes (nothing new to evaluate); a larger budget continues.
    assert hwlat_cli.main([*args, "--latency-ms", f"{budget}", "--budget", "40"]) == 0
    assert "40 architectures evaluated" in capsys.readouterr().out
    assert hwlat_cli.main([*args, "--latency-ms", f"{budget}", "--budget", "56"]) == 0
    assert "56 architectures evaluated" in capsys.readouterr().out
    # The study lives in the store (--db), next to the winners' measurements, named after --out.
    with sqlite3.connect(tmp_path / "m.db") as db:
        rows = db.execute(
            "SELECT count(*) FROM trials JOIN studies ON studies.id = trials.study_id "
            "WHERE studies.name = 'out'"
        ).fetchone()
        assert rows[0] == 56
        measured = db.execute("SELECT count(*) FROM measurements WHERE kind = 'model'").fetchone()[0]
        assert measured >= 1 + second_round


def test_search_takes_the_predictors_safety_margin_off_the_budget(predictor_file, tmp_path, capsys) -> None:
    """A predictor whose calibration networks ran up to ~8% slower than predicted searches under
    the budget less its 90th-percentile residual; --safety-margin 0 searches at the budget."""
    from hwlat import cli as hwlat_cli
    from hwlat.predictors import LatencyPredictor
    from hwlat.search.spaces import get_space

    predictor = LatencyPredictor.load(predictor_file)
    predictor.meta["calibration"] = {"residuals_pct": [-3.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]}
    margin = predictor.safety_margin_pct()
    assert margin == pytest.approx(np.percentile(predictor.meta["calibration"]["residuals_pct"], 90))
    path = predictor.save(tmp_path / "calibrated.json")
    budget = 1.5 * minimise(get_space("proxyless"), LatencyObjective(predictor)).value
    for flag, expected in (([], margin), (["--safety-margin", "0"], 0.0)):
        out = tmp_path / f"out{len(flag)}"
        args = ["search", "--space", "proxyless", "--predictor", str(path), "--latency-ms", str(budget)]
        args += ["--budget", "30", "--no-progress", "--out", str(out), "--db", str(tmp_path / "m.db"), *flag]
        assert hwlat_cli.main(args) == 0
        assert f"less a {expected:.1f}% safety margin" in capsys.readouterr().out
        front = json.loads((out / "pareto.json").read_text())["front"]
        latencies = [v for member in front for k, v in member["values"].items() if k.startswith("latency")]
        assert latencies and max(latencies) <= budget / (1 + expected / 100) + 1e-9


def test_the_verification_summary_states_the_margin_the_search_took() -> None:
    from hwlat.search.objectives import searched_budget_ms
    from hwlat.search.verify import Verification, summarize_verification

    searched = searched_budget_ms(10.0, 10.0)
    rows = [
        Verification(
            1, r, [0], "w.onnx", "local", "ort", searched, measured, None, None, 10.0, searched, 0.05, False
        )
        for r, measured in ((1, 9.0), (2, 10.2))
    ]
    line = summarize_verification(rows)
    assert "1 within the budget itself, 1 only within the noise band" in line
    assert f"searched under {searched:.3f} ms (10.0% safety margin)" in line


def test_winners_over_the_budget_set_the_second_searchs_margin_from_their_slowdowns() -> None:
    from hwlat.search.objectives import searched_budget_ms
    from hwlat.search.verify import Verification, corrected_margin_pct

    def winners(*measured_ms):
        searched = searched_budget_ms(10.0, 2.0)
        return [
            Verification(1, r, [0], "w.onnx", "local", "ort", 9.5, m, None, None, 10.0, searched, 0.05, False)
            for r, m in enumerate(measured_ms, 1)
        ]

    assert corrected_margin_pct(winners(9.6, 9.9), 2.0) is None  # every winner within the budget
    assert corrected_margin_pct(winners(None), 2.0) is None  # nothing measured: no evidence
    # one winner measured, 10% slower than predicted: a network predicted at 10 / 1.1 ms then fits
    assert corrected_margin_pct(winners(10.45), 2.0) == pytest.approx(10.0)
    # several: the 95% upper prediction bound of their slowdowns, above the worst one seen
    measured = (9.69, 9.785, 10.07, 9.69, 9.69)
    slowdowns = 100 * (np.array(measured) / 9.5 - 1)
    bound = slowdowns.mean() + scipy.stats.t.ppf(0.95, 4) * slowdowns.std(ddof=1) * np.sqrt(1.2)
    assert corrected_margin_pct(winners(*measured), 1.0) == pytest.approx(bound)
    assert bound > slowdowns.max()
    # identical slowdowns have no spread: the worst seen; never below the margin used
    assert corrected_margin_pct(winners(10.45, 10.45), 2.0) == pytest.approx(10.0)
    assert corrected_margin_pct(winners(10.05, 10.05), 30.0) == 30.0
