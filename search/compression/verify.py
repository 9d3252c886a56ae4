"""Measure a compression search's winners on the device: predicted vs measured latency and
peak memory, and the budget verdict with the noise band (as search/verify.py does for NAS).

Each winner's deployable ONNX (int8 QDQ where the policy says int8) is timed end to end by
``Campaign.measure_models`` (fresh agent per model, the device's timing protocol, disturbance
detection; the median clean pass of ``repeats`` kept) and stored as kind "model".
Measured memory is the model's own resident memory, ``Measurement.model_rss_mb``: what
the device's memory model predicts. A winner passes a budget when its measurement is within
it, and "within noise" when within budget x (1 + noise_band).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hwlat.search.compression.report import winner_stem
from hwlat.search.compression.search import CompressionResult
from hwlat.search.verify import DEFAULT_NOISE_BAND


@dataclass
class CompressionVerification:
    rank: int
    episode: int
    onnx_path: str
    device: str
    backend: str
    predicted_ms: float
    measured_ms: float | None  # None when the measurement failed
    p10_ms: float | None
    p90_ms: float | None
    predicted_memory_mb: float | None
    measured_memory_mb: float | None
    latency_budget_ms: float | None
    memory_budget_mb: float | None
    noise_band: float
    disturbed: bool
    error_msg: str = ""

    @property
    def error_pct(self) -> float | None:
        if self.measured_ms is None:
            return None
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def memory_error_pct(self) -> float | None:
        if not self.measured_memory_mb or self.predicted_memory_mb is None:
            return None
        return 100.0 * (self.predicted_memory_mb - self.measured_memory_mb) / self.measured_memory_mb

    def _within(self, slack: float) -> bool:
        if self.measured_ms is None:
            return False
        ok = self.latency_budget_ms is None or self.measured_ms <= self.latency_budget_ms * (1 + slack)
        if self.memory_budget_mb is not None and self.measured_memory_mb is not None:
            ok = ok and self.measured_memory_mb <= self.memory_budget_mb * (1 + slack)
        return ok

    @property
    def meets_budget(self) -> bool:
        return self._within(0.0)

    @property
    def meets_budget_within_noise(self) -> bool:
        return self._within(self.noise_band)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "error_pct": self.error_pct,
            "memory_error_pct": self.memory_error_pct,
            "meets_budget": self.meets_budget,
            "meets_budget_within_noise": self.meets_budget_within_noise,
        }


def verify_winners(
    result: CompressionResult,
    device,
    store,
    k: int,
    out_dir: str | Path,
    backend: str = "ort",
    protocol=None,
    noise_band: float = DEFAULT_NOISE_BAND,
    repeats: int = 3,
    latency_budget_ms: float | None = None,
) -> list[CompressionVerification]:
    """Measure the top ``k`` winners on ``device``; writes verify-<device>.json into ``out_dir``.
    The verdict is against ``latency_budget_ms`` (default: the budget searched under; a search
    that took a safety margin passes the user's budget)."""
    import onnx

    from hwlat.profiler.campaign import Campaign

    env = result.env
    out = Path(out_dir)
    folder = out / "winners"
    folder.mkdir(parents=True, exist_ok=True)
    winners = []
    for rank, r in enumerate(result.winners[:k], 1):
        path = folder / f"{winner_stem(rank, r)}.onnx"
        if not path.exists():
            onnx.save(env.compress(r.policy).onnx, str(path))
        winners.append((rank, r, path))
    campaign = Campaign(device, backend, store, protocol, show_progress=False)
    measured = campaign.measure_models([p for _, _, p in winners], repeats)
    results = []
    for (rank, r, path), m in zip(winners, measured, strict=True):
        results.append(
            CompressionVerification(
                rank=rank,
                episode=r.number,
                onnx_path=str(path),
                device=device.name,
                backend=campaign.backend.name,
                predicted_ms=r.latency_ms,
                measured_ms=m.median_ms if m.ok else None,
                p10_ms=m.p10_ms,
                p90_ms=m.p90_ms,
                predicted_memory_mb=r.memory_mb,
                measured_memory_mb=m.model_rss_mb,
                latency_budget_ms=latency_budget_ms if latency_budget_ms is not None else env.latency_budget,
                memory_budget_mb=env.memory_budget,
                noise_band=noise_band,
                disturbed=m.disturbed,
                error_msg=m.error_msg,
            )
        )
    result.verification = results
    (out / f"verify-{device.name}.json").write_text(json.dumps([v.to_dict() for v in results], indent=1))
    return results


def format_verification(results: list[CompressionVerification]) -> str:
    """Predicted vs measured latency and memory, and the verdict, one line per winner."""
    lines = [
        f"{'rank':>4} {'episode':>7} {'pred ms':>9} {'meas ms':>9} {'err %':>6} "
        f"{'pred MB':>8} {'meas MB':>8}  verdict"
    ]
    for r in results:
        pred_mb = f"{r.predicted_memory_mb:8.2f}" if r.predicted_memory_mb is not None else f"{'-':>8}"
        if r.measured_ms is None:
            lines.append(
                f"{r.rank:4d} {r.episode:7d} {r.predicted_ms:9.4f} {'-':>9} {'-':>6} {pred_mb} {'-':>8}  "
                f"MEASUREMENT FAILED: {r.error_msg[:60]}"
            )
            continue
        meas_mb = f"{r.measured_memory_mb:8.2f}" if r.measured_memory_mb is not None else f"{'-':>8}"
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
            f"{r.rank:4d} {r.episode:7d} {r.predicted_ms:9.4f} {r.measured_ms:9.4f} {r.error_pct:+6.1f} "
            f"{pred_mb} {meas_mb}  {verdict}"
        )
    return "\n".join(lines)
