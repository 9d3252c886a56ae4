"""Accuracy of predicted against measured latencies, and the predicted-vs-measured plot."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


@dataclass
class AccuracyReport:
    names: list[str]
    predicted_ms: np.ndarray
    measured_ms: np.ndarray
    rmse_ms: float = 0.0
    rmspe: float = 0.0  # root mean squared percentage error, in %
    within_5: float = 0.0  # share of networks within +-5%
    within_10: float = 0.0
    bias_pct: float = 0.0  # mean signed error, 100 * (predicted / measured - 1): < 0 predicts too fast
    spearman: float = float("nan")
    worst: list[tuple[str, float]] = field(default_factory=list)  # (name, relative error), worst first

    def summary(self) -> str:
        return (
            f"{len(self.names)} networks: RMSE {self.rmse_ms:.3f} ms, RMSPE {self.rmspe:.1f}%, "
            f"within +-5% {self.within_5:.1%}, within +-10% {self.within_10:.1%}, "
            f"signed bias {self.bias_pct:+.1f}%, Spearman {self.spearman:.3f}"
        )

    def to_dict(self) -> dict:
        return {
            "n": len(self.names),
            "rmse_ms": self.rmse_ms,
            "rmspe": self.rmspe,
            "within_5": self.within_5,
            "within_10": self.within_10,
            "bias_pct": self.bias_pct,
            "spearman": self.spearman,
            "rows": [
                {"name": n, "predicted_ms": float(p), "measured_ms": float(m), "error": float(p / m - 1)}
                for n, p, m in zip(self.names, self.predicted_ms, self.measured_ms, strict=True)
            ],
        }


def accuracy(
    predicted_ms: Sequence[float], measured_ms: Sequence[float], names: Sequence[str] | None = None
) -> AccuracyReport:
    p = np.asarray(predicted_ms, dtype=np.float64)
    m = np.asarray(measured_ms, dtype=np.float64)
    if p.shape != m.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"need two equally long, non-empty 1-D sequences (got {p.shape} and {m.shape})")
    names = list(names) if names is not None else [str(i) for i in range(len(p))]
    rel = p / m - 1
    order = np.argsort(-np.abs(rel))
    return AccuracyReport(
        names,
        p,
        m,
        rmse_ms=float(np.sqrt(np.mean((p - m) ** 2))),
        rmspe=float(100 * np.sqrt(np.mean(rel**2))),
        within_5=float(np.mean(np.abs(rel) <= 0.05)),
        within_10=float(np.mean(np.abs(rel) <= 0.10)),
        bias_pct=float(100 * np.mean(rel)),
        spearman=float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan"),
        worst=[(names[i], float(rel[i])) for i in order[:5]],
    )


def memory_accuracy(
    predicted_mb: Sequence[float], measured_mb: Sequence[float], names: Sequence[str]
) -> dict:
    """Peak memory predicted against measured: the share within +-10%, signed bias, rows.

    Measured memory is the model's own peak resident memory over the process's baseline; a
    model measured at under 1 MB is left out (a relative error of a rounding is meaningless)."""
    kept = [(n, p, m) for n, p, m in zip(names, predicted_mb, measured_mb, strict=True) if m >= 1.0]
    if not kept:
        nan = float("nan")
        return {"n": 0, "within_10": nan, "bias_pct": nan, "rmspe": nan, "rows": []}
    p = np.array([k[1] for k in kept])
    m = np.array([k[2] for k in kept])
    rel = p / m - 1
    return {
        "n": len(kept),
        "within_10": float(np.mean(np.abs(rel) <= 0.10)),
        "bias_pct": float(100 * np.mean(rel)),
        "rmspe": float(100 * np.sqrt(np.mean(rel**2))),
        "rows": [
            {"name": n, "predicted_mb": float(pm), "measured_mb": float(mm), "error": float(pm / mm - 1)}
            for (n, pm, mm) in kept
        ],
    }


def memory_summary(report: dict) -> str:
    if not report["n"]:
        return "peak memory: no model measured at 1 MB or more"
    return (
        f"peak memory, {report['n']} networks: within +-10% {report['within_10']:.1%}, "
        f"RMSPE {report['rmspe']:.1f}%, signed bias {report['bias_pct']:+.1f}%"
    )


def plot(report: AccuracyReport, path: str | Path, title: str = "") -> Path:
    """Predicted against measured, with the +-10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo = 0.9 * min(report.measured_ms.min(), report.predicted_ms.min())
    hi = 1.1 * max(report.measured_ms.max(), report.predicted_ms.max())
    line = np.array([lo, hi])
    ax.plot(line, line, "k-", lw=1)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="+-10%")
    ax.scatter(report.measured_ms, report.predicted_ms, s=14)
    if len(report.names) <= 30:
        for n, x, y in zip(report.names, report.measured_ms, report.predicted_ms, strict=True):
            ax.annotate(n, (x, y), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("\n".join(textwrap.wrap(title or report.summary(), 70)), fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
