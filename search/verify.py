"""Close the loop: measure the search's winners on the device and compare with the prediction.

A winner passes when its measured median latency is within the user's budget (the search
may have run under a smaller one, the budget less the predictor's safety margin); it passes
"within noise" when it is within budget x (1 + noise_band), the band inside which two
end-to-end measurements of one model on one device are expected to agree. Measurements
are whole ONNX models timed by profiler.campaign.Campaign.measure_model (fresh agent, the
device's timing protocol and disturbance detection) and saved to the Store as kind "model".

Each winner is measured ``repeats`` times and the median clean pass is kept
(``Campaign.measure_models``), the rule the predictor's overhead calibration uses, so
prediction and verification compare like with like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwlat.devices.device import Device
from hwlat.profiler.campaign import Campaign
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.search.objectives import LatencyObjective
from hwlat.search.study import Study

DEFAULT_NOISE_BAND = 0.05


@dataclass
class Verification:
    number: int  # trial number in the study
    rank: int  # 1 = best primary objective on the front
    arch: list[int]
    onnx_path: str
    device: str
    backend: str
    predicted_ms: float
    measured_ms: float | None  # None when the measurement failed
    p10_ms: float | None
    p90_ms: float | None
    budget_ms: float | None  # the user's budget
    searched_under_ms: float | None  # the budget the search used (less the safety margin)
    noise_band: float
    disturbed: bool
    error_msg: str = ""

    @property
    def error_pct(self) -> float | None:
        """Prediction error relative to the measurement (positive: predicted too slow)."""
        if self.measured_ms is None:
            return None
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def meets_budget(self) -> bool:
        return self.measured_ms is not None and (self.budget_ms is None or self.measured_ms <= self.budget_ms)

    @property
    def meets_budget_within_noise(self) -> bool:
        return self.measured_ms is not None and (
            self.budget_ms is None or self.measured_ms <= self.budget_ms * (1 + self.noise_band)
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "error_pct": self.error_pct,
            "meets_budget": self.meets_budget,
            "meets_budget_within_noise": self.meets_budget_within_noise,
        }


def verify_winners(
    study: Study,
    objective: LatencyObjective,
    device: Device,
    store: Store,
    k: int,
    out_dir: str | Path,
    backend: str = "ort",
    protocol: TimingProtocol | None = None,
    noise_band: float = DEFAULT_NOISE_BAND,
    repeats: int = 3,
    budget_ms: float | None = None,
) -> list[Verification]:
    """Measure the top ``k`` front members on ``device``; writes verify-<device>.json.

    ``budget_ms`` is the user's budget the winners are judged by (default the objective's, the
    one the search ran under)."""
    import onnx

    if objective not in study.objectives:
        raise ValueError(f"objective {objective.name!r} is not one of the study's objectives")
    column = study.objectives.index(objective)
    out_dir = Path(out_dir)
    folder = out_dir / "winners"
    folder.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(device, backend, store, protocol, show_progress=False)
    winners = []
    for rank, trial in enumerate(study.best(k), 1):
        path = folder / f"rank{rank}-trial{trial.number}.onnx"
        if not path.exists():
            onnx.save(study.space.to_onnx(trial.arch), str(path))
        winners.append((rank, trial, path))
    measured = campaign.measure_models([path for _, _, path in winners], repeats)
    results = []
    for (rank, trial, path), m in zip(winners, measured, strict=True):
        results.append(
            Verification(
                number=trial.number,
                rank=rank,
                arch=list(trial.arch),
                onnx_path=str(path),
                device=device.name,
                backend=campaign.backend.name,
                predicted_ms=trial.values[column],
                measured_ms=m.median_ms if m.ok else None,
                p10_ms=m.p10_ms,
                p90_ms=m.p90_ms,
                budget_ms=objective.budget if budget_ms is None else budget_ms,
                searched_under_ms=objective.budget,
                noise_band=noise_band,
                disturbed=m.disturbed,
                error_msg=m.error_msg,
            )
        )
    (out_dir / f"verify-{device.name}.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    return results


def format_verification(results: list[Verification]) -> str:
    """A table: predicted vs measured latency and the budget verdict per winner."""
    lines = [
        f"{'rank':>4} {'trial':>6} {'predicted ms':>12} {'measured ms':>11} {'error %':>8} "
        f"{'budget ms':>9}  verdict"
    ]
    for r in results:
        if r.measured_ms is None:
            lines.append(
                f"{r.rank:4d} {r.number:6d} {r.predicted_ms:12.3f} {'-':>11} {'-':>8} "
                f"{r.budget_ms or 0:9.3f}  MEASUREMENT FAILED: {r.error_msg[:60]}"
            )
            continue
        verdict = (
            "within budget"
            if r.meets_budget
            else f"within budget +{r.noise_band:.0%} noise band"
            if r.meets_budget_within_noise
            else "OVER BUDGET"
        )
        if r.disturbed:
            verdict += " (measurement flagged disturbed)"
        lines.append(
            f"{r.rank:4d} {r.number:6d} {r.predicted_ms:12.3f} {r.measured_ms:11.3f} "
            f"{r.error_pct:+8.1f} {r.budget_ms or 0:9.3f}  {verdict}"
        )
    lines.append(summarize_verification(results))
    return "\n".join(lines)


def corrected_margin_pct(
    results: list[Verification], margin_pct: float, confidence: float = 0.95
) -> float | None:
    """The safety margin for a second search when winners ran over the budget itself, else None.

    Winners of one search sit in one corner of the space, where the predictor's error is shared
    rather than spread like the calibration networks' residuals. Their measured slowdowns over
    the prediction are the direct evidence; the margin is the one-sided upper prediction bound
    at ``confidence`` for the slowdown of one more network like them (mean + t * sd * sqrt(1 +
    1/n)), and never less than the worst slowdown seen or the margin used. The worst of n alone
    would be exceeded by about 1 in n + 1 new winners.
    """
    from scipy.stats import t

    measured = [r for r in results if r.measured_ms is not None]
    if not measured or all(r.meets_budget for r in measured):
        return None
    slowdowns = np.array([100.0 * (r.measured_ms / r.predicted_ms - 1) for r in measured])
    bound = slowdowns.max()
    if len(slowdowns) >= 2:
        n = len(slowdowns)
        spread = float(slowdowns.std(ddof=1)) * np.sqrt(1 + 1 / n)
        bound = max(bound, float(slowdowns.mean() + t.ppf(confidence, n - 1) * spread))
    return max(margin_pct, float(bound))


def summarize_verification(results: list[Verification]) -> str:
    """The predictor's signed error on the winners and how many met the budget itself: a
    systematic bias shows here, where the noise band would hide it."""
    errors = [r.error_pct for r in results if r.error_pct is not None]
    if not errors:
        return "no winner was measured"
    within = sum(r.meets_budget for r in results)
    noise = sum(r.meets_budget_within_noise and not r.meets_budget for r in results)
    margin = next((r for r in results if r.budget_ms and r.searched_under_ms), None)
    searched = (
        f"; searched under {margin.searched_under_ms:.3f} ms "
        f"({100 * (margin.budget_ms / margin.searched_under_ms - 1):.1f}% safety margin)"
        if margin and margin.searched_under_ms < margin.budget_ms
        else ""
    )
    return (
        f"predictor's signed error on the {len(errors)} winners (predicted - measured): mean "
        f"{float(np.mean(errors)):+.1f}%, median {float(np.median(errors)):+.1f}%, range "
        f"{min(errors):+.1f}% to {max(errors):+.1f}%; {within} within the budget itself, {noise} only "
        f"within the noise band{searched}"
    )
