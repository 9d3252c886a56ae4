"""A compression search on disk: every policy and baseline (CSV), the Pareto front and settings
(JSON), the three 2-D projections of score, latency and peak memory (PNG), and the winners as
deployable ONNX (int8 QDQ where a layer is int8), torch state dicts of the pruned float
networks, and their policies (JSON).

The score is labelled "(proxy)" whenever it is the built-in fidelity proxy, not an accuracy.
A pruned network's state dict loads into ``hwlat.compress.prune(original, keep_ratios,
example_input)``, with the keep ratios of its JSON file.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from hwlat.search.compression.cost import FLOAT
from hwlat.search.compression.search import CompressionResult, PolicyRecord, summarize_policy


def write_report(result: CompressionResult, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = result.files
    files["policies_csv"] = _write_csv(result, out / "policies.csv")
    files["winners"] = _export_winners(result, out / "winners")
    files["pareto_json"] = out / "pareto.json"
    files["pareto_json"].write_text(json.dumps(_summary(result), indent=1, default=_json_default))
    if plot:
        files["pareto_png"] = plot_projections(result, out / "pareto.png")
    return files


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _record_json(result: CompressionResult, r: PolicyRecord) -> dict:
    env = result.env
    return {
        "number": r.number,
        "source": r.source,
        "label": r.label,
        env.score_name: r.score,
        "latency_ms": r.latency_ms,
        "memory_mb": _nan_to_none(r.memory_mb),
        "top1_agreement_proxy": r.result.top1_agreement,
        "kl_proxy": r.result.kl,
        "estimate_latency_ms": r.result.estimate_latency_ms,
        "estimate_memory_mb": r.result.estimate_memory_mb,
        "tvm_latency_ms": r.tvm_latency_ms,
        "feasible": r.feasible,
        "on_front": r.on_front,
        "summary": summarize_policy(env, r.policy),
        "layers": env.describe(r.policy),
    }


def _summary(result: CompressionResult) -> dict:
    env = result.env
    best, uniform = result.best(), result.best_uniform()
    return {
        "study": result.study.name,
        "settings": env.settings(),
        "score": env.score_name,
        "score_is_proxy": env.user_evaluate is None,
        "budgets": {"latency_ms": env.latency_budget, "memory_mb": env.memory_budget},
        "strategy": {"name": result.study.strategy.name, "options": result.study.strategy.config()},
        "episodes": len(result.episodes),
        "feasible_episodes": sum(r.feasible for r in result.episodes),
        "seconds_per_episode": result.seconds_per_episode,
        "wall": {
            "margin": env.margin,
            "references": env.references,
            "note": "the wall's budgets are the budgets less the margins (ms, MB): the most by which a "
            "whole-model prediction exceeded its per-layer estimate over the reference policies",
        },
        "smallest_reachable": {
            "latency_ms": env.minimum.latency_ms if env.minimum else None,
            "memory_mb": _nan_to_none(env.minimum.memory_mb) if env.minimum else None,
        },
        "best": _record_json(result, best) if best else None,
        "best_uniform_within_budget": _record_json(result, uniform) if uniform else None,
        "front": [_record_json(result, r) for r in result.front],
        "winners": [_record_json(result, r) for r in result.winners],
        "baselines": [_record_json(result, r) for r in result.baselines],
    }


def _write_csv(result: CompressionResult, path: Path) -> Path:
    env = result.env
    a = env.analysis
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "source",
                "episode",
                "label",
                env.score_name,
                "latency_ms",
                "memory_mb",
                "top1_agreement (proxy)",
                "kl (proxy)",
                "estimate_latency_ms",
                "estimate_memory_mb",
                "tvm_latency_ms",
                "feasible",
                "on_front",
                "keep_ratios",
                "dtypes",
            ]
        )
        for r in [*result.episodes, *result.baselines]:
            ratios = " ".join(f"{k / g.channels:.3f}" for k, g in zip(r.policy.keep, a.groups, strict=True))
            writer.writerow(
                [
                    r.source,
                    r.number if r.number >= 0 else "",
                    r.label,
                    f"{r.score:.6g}",
                    f"{r.latency_ms:.6g}",
                    f"{r.memory_mb:.6g}",
                    f"{r.result.top1_agreement:.6g}",
                    f"{r.result.kl:.6g}",
                    f"{r.result.estimate_latency_ms:.6g}",
                    f"{r.result.estimate_memory_mb:.6g}",
                    "" if r.tvm_latency_ms is None else f"{r.tvm_latency_ms:.6g}",
                    int(r.feasible),
                    int(r.on_front),
                    ratios,
                    " ".join(r.policy.dtypes),
                ]
            )
    return path


def winner_stem(rank: int, record: PolicyRecord) -> str:
    return f"rank{rank}-episode{record.number}"


def _export_winners(result: CompressionResult, folder: Path) -> Path:
    import onnx

    env = result.env
    folder.mkdir(parents=True, exist_ok=True)
    for rank, r in enumerate(result.winners, 1):
        stem = winner_stem(rank, r)
        compressed = env.compress(r.policy)
        onnx.save(compressed.onnx, str(folder / f"{stem}.onnx"))
        info = _record_json(result, r)
        info["rank"] = rank
        info["onnx"] = f"{stem}.onnx"
        info["keep_ratios"] = env.layer_ratios(r.policy)
        info["int8_excluded_nodes"] = compressed.excluded
        if compressed.torch_model is not None:
            import torch

            torch.save(compressed.torch_model.state_dict(), folder / f"{stem}.pt")
            info["state_dict"] = f"{stem}.pt"
            info["float_onnx"] = f"{stem}-float32.onnx"
            onnx.save(compressed.float_onnx, str(folder / f"{stem}-float32.onnx"))
        (folder / f"{stem}.json").write_text(json.dumps(info, indent=1, default=_json_default))
    return folder


AXES = {"latency_ms": "predicted latency (ms)", "memory_mb": "predicted peak memory (MB)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_projections(result: CompressionResult, path: Path) -> Path:
    """Score vs latency, score vs memory, memory vs latency: every policy, the front, the uniform
    baselines (float32, int8; TVM float32 when predicted), the budgets and the winners."""
    plt = _pyplot()
    env = result.env
    score = env.score_name
    panels = [("latency_ms", score), ("memory_mb", score), ("latency_ms", "memory_mb")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    episodes = result.episodes
    feasible = np.array([r.feasible for r in episodes], dtype=bool)

    def values(records, key):
        if key == score:
            return np.array([r.score for r in records], dtype=float)
        return np.array([getattr(r, key) for r in records], dtype=float)

    for ax, (x_key, y_key) in zip(axes, panels, strict=True):
        if episodes:
            x, y = values(episodes, x_key), values(episodes, y_key)
            ax.scatter(x[feasible], y[feasible], s=10, color="0.6", alpha=0.6, label="policies within budget")
            ax.scatter(
                x[~feasible], y[~feasible], s=14, marker="x", color="tab:red", alpha=0.5, label="over budget"
            )
        if result.front:
            fx, fy = values(result.front, x_key), values(result.front, y_key)
            ax.scatter(fx, fy, s=36, color="tab:blue", zorder=3, label="Pareto front")
        for dtype, style in ((FLOAT, ("s-", "tab:orange")), ("int8", ("^-", "tab:green"))):
            base = [r for r in result.baselines if r.policy.dtypes and r.policy.dtypes[0] == dtype]
            if base:
                bx, by = values(base, x_key), values(base, y_key)
                order = np.argsort(bx)
                ax.plot(
                    bx[order], by[order], style[0], color=style[1], markersize=5, label=f"uniform {dtype}"
                )
        tvm = [r for r in result.baselines if r.tvm_latency_ms is not None]
        if tvm and x_key == "latency_ms" and y_key == score:
            tx = np.array([r.tvm_latency_ms for r in tvm])
            ty = values(tvm, y_key)
            order = np.argsort(tx)
            ax.plot(
                tx[order], ty[order], "D--", color="tab:purple", markersize=4, label="uniform float32 (TVM)"
            )
        for rank, r in enumerate(result.winners, 1):
            ax.annotate(
                str(rank),
                (values([r], x_key)[0], values([r], y_key)[0]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color="tab:blue",
            )
        for key, budget in (("latency_ms", env.latency_budget), ("memory_mb", env.memory_budget)):
            if budget is None:
                continue
            if x_key == key:
                ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:g}")
            if y_key == key:
                ax.axhline(budget, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{AXES[x_key]} on {env.cost_model.device}")
        ax.set_ylabel(y_key if y_key == score else f"{AXES[y_key]} on {env.cost_model.device}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{env.method} compression of {env.label} on {env.cost_model.device}: "
        f"{len(episodes)} episodes ({result.study.strategy.name})"
        + ("; score is a fidelity proxy, not accuracy" if env.user_evaluate is None else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
