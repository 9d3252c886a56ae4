"""PNG plots of a study: the Pareto front and hypervolume over the run (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwlat.search.study import Study
from hwlat.search.trial import Trial


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(study: Study, winners: list[Trial], path: Path) -> Path:
    """Primary objective against each other objective: every trial, the front, budgets, winners."""
    plt = _pyplot()
    values, feasible = study.values(), study.feasible()
    names = study.objective_names
    front = study.pareto_front()
    others = list(range(1, len(names))) or [None]
    fig, axes = plt.subplots(1, len(others), figsize=(6 * len(others), 4.5), squeeze=False)
    for ax, j in zip(axes[0], others, strict=True):
        x_all = values[:, j] if j is not None else np.arange(len(values))
        ax.scatter(
            x_all[~feasible],
            values[~feasible, 0],
            s=8,
            marker="x",
            color="tab:red",
            alpha=0.35,
            label="over budget",
        )
        ax.scatter(x_all[feasible], values[feasible, 0], s=8, color="0.6", alpha=0.6, label="within budget")
        if front:
            fx = np.array([t.values[j] if j is not None else t.number for t in front])
            fy = np.array([t.values[0] for t in front])
            order = np.argsort(fx)
            ax.plot(
                fx[order],
                fy[order],
                "o-" if len(names) == 2 else "o",
                color="tab:blue",
                markersize=4,
                label="Pareto front",
            )
        for rank, t in enumerate(winners, 1):
            x = t.values[j] if j is not None else t.number
            ax.annotate(
                str(rank),
                (x, t.values[0]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color="tab:blue",
            )
        if j is not None and study.objectives[j].budget is not None:
            ax.axvline(
                study.objectives[j].budget,
                color="k",
                linestyle="--",
                linewidth=1,
                label=f"budget {study.objectives[j].budget:g}",
            )
        ax.set_xlabel(names[j] if j is not None else "trial")
        ax.set_ylabel(f"{names[0]} ({study.objectives[0].direction})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{getattr(study.space, 'name', '')} search, {study.strategy.name}, {len(values)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_hypervolume(history: list[tuple[int, float]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    n, hv = zip(*history, strict=True)
    ax.plot(n, hv, color="tab:blue")
    ax.set_xlabel("architectures evaluated")
    ax.set_ylabel("normalised hypervolume")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
