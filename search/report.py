"""Search results on disk: Pareto front (JSON + PNG), hypervolume over the run, all trials
(CSV), and the best architectures as ONNX files.

Hypervolume is computed on losses (maximised objectives negated) of feasible trials
against a fixed reference point: the budget for budgeted objectives, the worst feasible
value seen for the others. It is also reported normalised by the box between that
reference and the best value seen per objective (1.0 would be one point best at
everything), so that runs of one study compare over time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwlat.search.hypervolume import hypervolume
from hwlat.search.study import Study
from hwlat.search.trial import Trial

_HISTORY_POINTS = 100


@dataclass
class SearchReport:
    out_dir: Path
    front: list[Trial]
    hypervolume: float
    hypervolume_normalized: float
    reference_point: dict[str, float]
    history: list[tuple[int, float]]  # (trials so far, normalised hypervolume)
    files: dict[str, Path] = field(default_factory=dict)
    onnx: list[Path] = field(default_factory=list)
    n_trials: int = 0
    n_feasible: int = 0

    def summary(self) -> str:
        lines = [
            f"{self.n_trials} architectures evaluated, {self.n_feasible} within budget, "
            f"{len(self.front)} on the Pareto front; hypervolume {self.hypervolume:.4g} "
            f"(normalised {self.hypervolume_normalized:.3f})"
        ]
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        if self.onnx:
            lines.append(f"  winners (ONNX): {self.onnx[0].parent}/ ({len(self.onnx)} files)")
        return "\n".join(lines)


def reference_point(study: Study) -> np.ndarray | None:
    """In loss space; None when no trial is feasible."""
    usable = _usable(study)
    if not usable.any():
        return None
    worst = study.losses()[usable].max(axis=0)
    budgets = np.array([o.budget if o.budget is not None else np.nan for o in study.objectives])
    return np.where(np.isnan(budgets), worst, budgets)


def hypervolume_history(
    study: Study, reference: np.ndarray, points: int = _HISTORY_POINTS
) -> list[tuple[int, float]]:
    """Normalised hypervolume after n trials, at up to ``points`` evenly spaced n."""
    losses, feasible = study.losses(), _usable(study)
    ideal = losses[feasible].min(axis=0)
    scale = np.where(reference > ideal, reference - ideal, 1.0)
    n_total = len(losses)
    checkpoints = sorted({int(round(x)) for x in np.linspace(1, n_total, min(points, n_total))})
    front = np.empty((0, losses.shape[1]))
    history, upto = [], 0
    for n in checkpoints:
        for i in range(upto, n):
            if feasible[i]:
                front = _add_to_front(front, losses[i])
        upto = n
        history.append((n, hypervolume((front - ideal) / scale, (reference - ideal) / scale)))
    return history


def write_report(
    study: Study, out_dir: str | Path, top_k: int = 5, export_onnx: bool = True, plot: bool = True
) -> SearchReport:
    """Write every result file into ``out_dir``; returns what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = study.objective_names
    front = study.pareto_front()
    reference = reference_point(study)
    report = SearchReport(
        out_dir, front, 0.0, 0.0, {}, [], n_trials=len(study.trials), n_feasible=int(study.feasible().sum())
    )
    if reference is not None and front:
        front_losses = np.array([t.values for t in front]) * _signs(study)
        ideal = study.losses()[_usable(study)].min(axis=0)
        box = np.prod(np.where(reference > ideal, reference - ideal, 1.0))
        report.hypervolume = hypervolume(front_losses, reference)
        report.hypervolume_normalized = report.hypervolume / box
        report.reference_point = dict(zip(names, (reference * _signs(study)).tolist(), strict=True))
        report.history = hypervolume_history(study, reference)

    if export_onnx:
        report.onnx = _export_onnx(study, front[:top_k], out_dir / "winners")
    report.files["trials"] = _write_trials_csv(study, out_dir / "trials.csv")
    report.files["pareto_json"] = out_dir / "pareto.json"
    report.files["pareto_json"].write_text(json.dumps(_front_json(study, report), indent=1))
    if plot:
        from hwlat.search.plots import plot_hypervolume, plot_pareto

        report.files["pareto_png"] = plot_pareto(study, front[:top_k], out_dir / "pareto.png")
        if report.history:
            report.files["hypervolume_png"] = plot_hypervolume(report.history, out_dir / "hypervolume.png")
    return report


def _usable(study: Study) -> np.ndarray:
    """Feasible trials with every objective evaluated (no NaN)."""
    return study.feasible() & np.all(np.isfinite(study.values()), axis=1)


def _signs(study: Study) -> np.ndarray:
    return np.array([-1.0 if o.direction == "maximize" else 1.0 for o in study.objectives])


def _add_to_front(front: np.ndarray, point: np.ndarray) -> np.ndarray:
    if len(front) and np.any(np.all(front <= point, axis=1)):
        return front  # dominated or equal to a front point
    keep = ~(np.all(point <= front, axis=1) & np.any(point < front, axis=1))
    return np.vstack([front[keep], point[None, :]])


def _export_onnx(study: Study, winners: list[Trial], folder: Path) -> list[Path]:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, trial in enumerate(winners, 1):
        path = folder / f"rank{rank}-trial{trial.number}.onnx"
        onnx.save(study.space.to_onnx(trial.arch), str(path))
        paths.append(path)
    return paths


def _describe_arch(study: Study, trial: Trial) -> dict:
    to_dict = getattr(study.space, "to_dict", None)
    return to_dict(trial.arch) if to_dict else {}


def _front_json(study: Study, report: SearchReport) -> dict:
    names = study.objective_names
    onnx_by_trial = {int(p.stem.split("trial")[-1]): str(p) for p in report.onnx}
    return {
        "study": study.name,
        "space": getattr(study.space, "name", type(study.space).__name__),
        "strategy": {"name": study.strategy.name, "options": study.strategy.config()},
        "objectives": [o.describe() for o in study.objectives],
        "trials": report.n_trials,
        "feasible_trials": report.n_feasible,
        "minima": {k: {"value": m.value, "arch": list(m.arch)} for k, m in study.minima.items()},
        "reference_point": report.reference_point,
        "hypervolume": report.hypervolume,
        "hypervolume_normalized": report.hypervolume_normalized,
        "hypervolume_history": [list(h) for h in report.history],
        "front": [
            {
                **t.to_dict(names),
                "rank": rank,
                "config": _describe_arch(study, t),
                "onnx": onnx_by_trial.get(t.number),
            }
            for rank, t in enumerate(report.front, 1)
        ],
    }


def _write_trials_csv(study: Study, path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "batch", "arch", *study.objective_names, "feasible"])
        for t in study.trials:
            writer.writerow([t.number, t.batch, " ".join(map(str, t.arch)), *t.values, int(t.feasible)])
    return path
