"""Building a predictor for one device: what to measure, in which order, and the fits.

``train_predictor``:
  1. probe which op pairs the backend fuses (predictors/kernels/fusion.py; TVM's are rules,
     predictors/kernels/tvm_fusion.py, and need no probe);
  2. measure kernels in context: the cells of a search space (for a table) and a training
     set for the kernel regressor (random kernel configurations and the kernels of random
     networks built from published CNN blocks, hwlat/zoo/published.py);
  3. fit the KernelRegressor on every clean kernel row of the device;
  4. measure a few calibration networks end to end (random architectures of the space, or
     random networks) and fit the overhead model.
``adaptive_profile`` grows the regressor's training set where a committee of regressors
disagrees most, until held-out kernels are predicted well enough or the time is up.

Everything measured goes to the store first, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwlat import zoo
from hwlat.devices.device import Device
from hwlat.errors import ConfigError, HwlatError
from hwlat.predictors.building.profiling import KernelProfiler, device_seconds
from hwlat.predictors.building.sampling import KernelSampler
from hwlat.predictors.kernels.fusion import FusionRules, decide, default_probes, probe_kernels
from hwlat.predictors.kernels.splitter import ModelSplitter, SplitResult, UnsupportedOpsError
from hwlat.predictors.kernels.tvm_fusion import tvm_fusion_rules
from hwlat.predictors.metrics import accuracy
from hwlat.predictors.models.kernel_regressor import KernelRegressor
from hwlat.predictors.models.memory import MemoryModel, onnx_footprint
from hwlat.predictors.models.roofline import Roofline, RooflineError
from hwlat.predictors.models.table import LatencyTable
from hwlat.predictors.predictor import LatencyPredictor
from hwlat.profiler.backends import cache_dir
from hwlat.profiler.backends.ort.harness import QDQ_PROBE_BRANCHING, QDQ_PROBE_SINGLE
from hwlat.profiler.kernel import InvalidKernelError, Kernel
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.zoo.random_nets import GENERATOR_VERSION

Log = Callable[[str], None]


class NotEnoughDataError(HwlatError):
    """Too few clean measurements to fit a model (the machine was too busy, or the run was cut)."""


@dataclass
class TrainingConfig:
    kind: str = "lut"
    sampled_kernels: int = 600  # random kernel configurations for the regressor
    random_networks: int = 30  # random networks whose kernels train the regressor
    calibration_networks: int = 16  # networks measured end to end for the overhead fit
    model_repeats: int = 3  # each measured this many times, the median clean pass kept
    passes: int = 3  # re-measure disturbed rows up to this many times
    random_state: int = 0
    kernel_protocol: TimingProtocol | None = None
    model_protocol: TimingProtocol | None = None
    dtypes: tuple[str, ...] = ("float32",)  # with "int8" (or "uint8"): 8-bit kernels too, and
    # half the calibration networks quantized (hwlat.compress.quantize_model)
    exclude_ops: frozenset[str] = frozenset()  # op keys no training kernel may contain (held-out nets)
    tune_trials: int | None = None  # backend "tvm": MetaSchedule candidates per kernel (default 64)


def fusion_rules(
    profiler: KernelProfiler, passes: int = 3, log: Log = print, dtypes: tuple[str, ...] = ("float32",)
) -> FusionRules:
    """The backend's fusion rules: probed by measurement (ONNX Runtime), or TVM's own rules."""
    eight_bit = [d for d in dtypes if d != "float32"]
    if not profiler.in_context:
        if eight_bit:
            raise ConfigError(
                f"TVM kernels are float32 only (its ONNX importer lowers quantize/dequantize to "
                f"float arithmetic), not {', '.join(eight_bit)}",
                "use --dtypes float32 with a TVM backend, or --backend ort for 8-bit kernels",
            )
        rules = tvm_fusion_rules(profiler.backend)
        fused = sum(rules.fused.values())
        log(f"fusion rules: TVM's ({fused} fused pairs, predictors/kernels/tvm_fusion.py)")
        return rules
    probes = default_probes(dtypes)
    kernels = probe_kernels(probes)
    for _ in range(passes):
        profiler.measure(kernels)
        costs = profiler.costs()
        if all(k.key in costs for k in kernels):
            break
    rules = decide(probes, profiler.backend, lambda k: costs.get(k.key), profiler.kernel_node_ops)
    for dtype in eight_bit:  # one QDQ probe each, its answer one evidence entry
        qdq_rules(profiler, dtype, rules)
    log(
        f"fusion rules ({len(rules.evidence)} of {len(probes) + len(eight_bit)} probes decided): "
        + ", ".join(f"{r}={'fused' if f else 'apart'}" for r, f in sorted(rules.fused.items()))
    )
    return rules


def qdq_rules(profiler: KernelProfiler, dtype: str, rules: FusionRules) -> None:
    """Whether the device's ONNX Runtime runs the QDQ convs of a quantized network as 8-bit
    kernels, with and without a branching 8-bit tensor next to them (``FusionRules.qdq_fuses``),
    from the kernels its profile records for the probe model."""
    fused = profiler.qdq_convs_fused(dtype)
    rules.fused[f"qdq:{dtype}"] = fused[QDQ_PROBE_SINGLE]
    rules.fused[f"qdq-branching:{dtype}"] = all(fused[c] for c in QDQ_PROBE_BRANCHING)
    rules.evidence.append({"rule": f"qdq:{dtype}", "fused_convs": fused})


def random_networks(count: int, start: int = 0) -> list[Path]:
    """Random networks (hwlat/zoo/random_nets.py) exported once into the cache, under the
    generator's version (a changed distribution is not mixed with networks of the old one)."""
    directory = cache_dir() / "networks" / f"random-v{GENERATOR_VERSION}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        path = directory / f"random_{seed:04d}.onnx"
        if not path.exists():
            module, res = zoo.random_network(seed)
            tmp = directory / f"random_{seed:04d}.tmp.onnx"
            zoo.export_onnx(module, tmp, res)
            tmp.replace(path)
        paths.append(path)
    return paths


def space_networks(space: Any, count: int, seed: int = 0) -> list[Path]:
    """Random architectures of a space, as ONNX files in the cache."""
    import onnx

    resolutions = "-".join(str(r) for r in getattr(space, "resolutions", ()))
    directory = cache_dir() / "networks" / f"{getattr(space, 'name', 'space')}-{resolutions}"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        arch = space.sample(rng)
        path = directory / f"arch_{seed}_{i:04d}.onnx"
        if not path.exists():
            onnx.save(space.to_onnx(arch), path)
        paths.append(path)
    return paths


def quantized_networks(paths: Sequence[Path], dtype: str) -> list[Path]:
    """8-bit versions (QDQ, random calibration) of ONNX files, in the cache next to them."""
    from hwlat.compress import quantize_model

    out = []
    for path in paths:
        target = Path(path).with_name(f"{Path(path).stem}.{dtype}.onnx")
        if not target.exists():
            tmp = target.with_suffix(".tmp.onnx")
            quantize_model(path, tmp, random_batches=4, activation_type=dtype)
            tmp.replace(target)
        out.append(target)
    return out


def space_kernels(space: Any, rules: FusionRules) -> list[Kernel]:
    return list(dict.fromkeys(k for cell in space.cells() for k in rules.group(list(cell))))


def measured_kernels(profiler: KernelProfiler) -> tuple[list[Kernel], np.ndarray]:
    """Every clean kernel row of the device, parsed back into kernels."""
    kernels, ms = [], []
    for key, cost in profiler.costs().items():
        try:
            kernels.append(Kernel.from_key(key))
        except InvalidKernelError:
            continue
        ms.append(cost)
    return kernels, np.asarray(ms)


def network_ops(paths: Sequence[Path], rules: FusionRules) -> frozenset[str]:
    """The op keys of these networks' kernels, for ``TrainingConfig.exclude_ops``: op keys do not
    depend on the fusion rules, so a held-out network stays unseen whichever kernels are fused."""
    splitter = ModelSplitter(rules, strict=False)
    return frozenset(o.key for path in paths for o in splitter.split(path).ops)


def split_networks(
    paths: Sequence[Path], splitter: ModelSplitter, log: Log = print
) -> dict[Path, SplitResult]:
    """The split of each network the splitter maps; a training or calibration network it cannot
    (e.g. a quantized GELU, whose QDQ nodes break the activation pattern) is skipped with a line,
    since it is one sample among many, not the user's model."""
    splits = {}
    for path in paths:
        try:
            splits[path] = splitter.split(path)
        except UnsupportedOpsError as exc:
            log(f"skipped {Path(path).name} (not used for training): {str(exc)[:200]}")
    return splits


def _excluded(kernel: Kernel, ops: frozenset[str]) -> bool:
    return bool(ops) and any(o.key in ops for o in kernel.ops)


def measure_until_clean(
    profiler: KernelProfiler, kernels: Sequence[Kernel], passes: int, log: Log = print, what: str = "kernels"
) -> None:
    for i in range(passes):
        report = profiler.measure(kernels)
        log(f"{what}, pass {i + 1}: {report.summary()}")
        if report.disturbed == 0 and report.failed == 0:
            return


def train_predictor(
    device: Device,
    store: Store,
    config: TrainingConfig | None = None,
    space: Any = None,
    backend: str = "ort",
    log: Log = print,
) -> LatencyPredictor:
    config = config or TrainingConfig()
    profiler = KernelProfiler(device, store, config.kernel_protocol, backend, tune_trials=config.tune_trials)
    started = time.monotonic()
    rules = fusion_rules(profiler, config.passes, log, config.dtypes)
    eight_bit = [d for d in config.dtypes if d != "float32"]
    wanted: list[Kernel] = []
    if space is not None:
        wanted += space_kernels(space, rules)
    splitter = ModelSplitter(rules)
    networks = random_networks(config.random_networks)
    for dtype in eight_bit:  # the same networks quantized: their 8-bit kernels and conversions
        networks += quantized_networks(networks[: config.random_networks // 2], dtype)
    for split in split_networks(networks, splitter, log).values():
        wanted += split.network[0]
    sampler = KernelSampler(rules, config.random_state, dtypes=config.dtypes)
    wanted += sampler.sample(config.sampled_kernels * len(config.dtypes))
    wanted = [k for k in dict.fromkeys(wanted) if not _excluded(k, config.exclude_ops)]
    measure_until_clean(profiler, wanted, config.passes, log)
    kernels, ms = measured_kernels(profiler)
    of_dtypes = [i for i, k in enumerate(kernels) if all(o.dtype in config.dtypes for o in k.ops)]
    kernels, ms = [kernels[i] for i in of_dtypes], ms[of_dtypes]  # a float32 predictor: float32 kernels
    if config.exclude_ops:
        kept = [i for i, k in enumerate(kernels) if not _excluded(k, config.exclude_ops)]
        log(
            f"{len(kernels) - len(kept)} measured kernels left out of training: each shares an op "
            "with a held-out network"
        )
        kernels, ms = [kernels[i] for i in kept], ms[kept]
    if len(kernels) < 30:
        raise NotEnoughDataError(
            f"only {len(kernels)} clean kernel measurements on {device.name}; "
            "run again when the device is quiet (re-runs resume)"
        )
    regressor = KernelRegressor(random_state=config.random_state).fit(kernels, ms)
    table = LatencyTable(
        {} if config.kind == "gbdt" else dict(zip((k.key for k in kernels), ms, strict=True)), regressor
    )
    calibration = (
        space_networks(space, config.calibration_networks)
        if space is not None
        else random_networks(config.calibration_networks)
    )
    for dtype in eight_bit:  # calibrated on quantized networks as well
        calibration += quantized_networks(calibration[: max(2, config.calibration_networks // 2)], dtype)
    calibration = list(split_networks(calibration, splitter, log))
    fitted = fit_overhead(
        table, profiler, calibration, rules, config.model_protocol, log, config.model_repeats
    )
    for warning in profiler.probe_warnings:
        log(f"warning: {warning}")
    rows = store.measurements(device.name, backend, "kernel")
    try:
        roofline = Roofline.fit(kernels, ms).to_dict()
    except RooflineError as exc:
        log(f"no roofline (unsupported nodes cannot be estimated with --lenient): {exc}")
        roofline = None
    meta = {
        "roofline": roofline,
        "calibration": fitted.to_dict(),
        "settings": device.settings(),
        "backend_version": _backend_version(rows),
        "host": rows[-1].host if rows else {},
        "training": {
            "kernels": len(kernels),
            "calibration_networks": len(calibration),
            "space": getattr(space, "name", None),
            "dtypes": list(config.dtypes),
            "excluded_ops": len(config.exclude_ops),
            "kernel_device_seconds": round(device_seconds(rows), 1),
            "wall_seconds": round(time.monotonic() - started, 1),
            "tune_trials": getattr(profiler.host_backend(), "trials", None) if backend == "tvm" else None,
            "probe_warnings": profiler.probe_warnings,
            **profiler.build_seconds(),
        },
    }
    return LatencyPredictor(table, rules, device.name, backend, config.kind, meta, fitted.memory)


@dataclass
class Calibration:
    """What the calibration networks taught: the memory model, and how far each network's
    measured latency lay from its prediction when the overhead was fitted on the others."""

    memory: MemoryModel
    residuals_pct: list[float]  # leave one out, 100 * (measured - predicted) / predicted

    def to_dict(self) -> dict:
        return {"residuals_pct": [round(r, 3) for r in self.residuals_pct]}


def fit_overhead(
    table: LatencyTable,
    profiler: KernelProfiler,
    paths: Sequence[Path],
    rules: FusionRules,
    protocol: TimingProtocol | None = None,
    log: Log = print,
    repeats: int = 3,
) -> Calibration:
    """Fit the table's overhead model on networks measured end to end (the median clean pass,
    what a user measures), and the device's memory model on the same runs' peak resident memory.
    The leave-one-out residuals are what a search's safety margin is learned from."""
    measured = profiler.measure_models(paths, protocol, repeats=repeats)
    splitter = ModelSplitter(rules)
    networks, ms, footprints, memory_mb, arenas = [], [], [], [], set()
    for path, m in zip(paths, measured, strict=True):
        if not m.ok:
            continue
        split = splitter.split(path)
        if m.model_rss_mb is not None:  # memory does not depend on contention
            footprints.append(onnx_footprint(path, split.eight_bit_nodes))
            memory_mb.append(m.model_rss_mb)
            arenas.add(m.backend == "ort" and bool(m.settings.get("memory_arena", True)))
        if not m.clean:
            continue
        networks.append(split.network)
        ms.append(m.median_ms)
    memory = MemoryModel(arena=arenas == {True}).fit(footprints, memory_mb)
    log(f"memory model fitted on {memory.fitted_on} networks: {memory}")
    if not networks:
        log("no clean end-to-end measurement: overhead model left at zero (predictions are sums)")
        return Calibration(memory, [])
    predicted = leave_one_out(table, networks, ms)  # none with fewer than 3 clean networks
    residuals = [100.0 * (m - p) / p for m, p in zip(ms, predicted, strict=True)] if predicted else []
    overhead = table.fit_overhead(networks, ms)
    log(f"overhead fitted on {len(ms)} networks: {overhead}")
    return Calibration(memory, residuals)


def leave_one_out(table: LatencyTable, networks: list, measured_ms: list[float]) -> list[float]:
    """Each network's prediction with the overhead fitted on the other networks (none when
    fewer than 3), on a copy of ``table``."""
    if len(networks) < 3:
        return []
    probe = LatencyTable(table.entries, table.fallback)
    predicted = []
    for i, (kernels, glue) in enumerate(networks):
        others = [n for j, n in enumerate(networks) if j != i]
        probe.fit_overhead(others, [m for j, m in enumerate(measured_ms) if j != i])
        predicted.append(probe.predict(kernels, glue))
    return predicted


def _backend_version(rows: list) -> str:
    versions = [m.backend_version for m in rows if m.backend_version]
    return versions[-1] if versions else ""


# ----- adaptive sampling ------------------------------------------------------------------------
@dataclass
class AdaptiveRound:
    kernels_measured: int
    device_minutes: float
    holdout_within_10: float  # held-out kernels
    holdout_rmspe: float
    network_within_10: float | None = None  # validation networks (leave-one-out overhead fit)
    network_rmspe: float | None = None


@dataclass
class AdaptiveReport:
    rounds: list[AdaptiveRound] = field(default_factory=list)
    reached_target: bool = False

    def summary(self) -> str:
        last = self.rounds[-1] if self.rounds else None
        if last is None:
            return "no round finished"
        reached = "reached" if self.reached_target else "not reached"
        networks = (
            f", validation networks within +-10%: {last.network_within_10:.0%} "
            f"(RMSPE {last.network_rmspe:.1f}%)"
            if last.network_within_10 is not None
            else ""
        )
        return (
            f"{len(self.rounds)} rounds, {last.kernels_measured} kernels, "
            f"{last.device_minutes:.1f} device-minutes, held-out kernels within +-10%: "
            f"{last.holdout_within_10:.0%} (RMSPE {last.holdout_rmspe:.1f}%){networks}; "
            f"network target {reached}"
        )


def adaptive_profile(
    profiler: KernelProfiler,
    rules: FusionRules,
    budget_minutes: float,
    target_within_10: float = 0.9,
    batch: int = 80,
    holdout: int = 40,
    committee: int = 5,
    pool: int = 1500,
    random_state: int = 0,
    log: Log = print,
    dtypes: tuple[str, ...] = ("float32",),
    validation_networks: int = 8,
) -> AdaptiveReport:
    """Measure kernels where the regressor is least sure until the networks are predicted well
    enough or the budget is spent.

    Networks, not kernels, are what users predict, and kernel errors partly cancel in a sum, so
    the stopping rule is network-level: ``validation_networks`` random networks (seeds the
    training networks never use) are measured end to end first; each round predicts them from
    the current regressor, with the overhead model fitted on the others (leave one out), and
    stops once ``target_within_10`` of them are within +-10%. Each round also measures a fresh
    random hold-out batch of kernels and scores the regressor on it (reported), then adds those
    kernels to the training set, fits a committee of regressors on bootstrap resamples, and
    measures the ``batch`` candidates of a random pool on which the committee disagrees most.
    """
    sampler = KernelSampler(rules, random_state, dtypes=dtypes)
    rng = np.random.default_rng(random_state)
    deadline = time.monotonic() + 60 * budget_minutes
    report = AdaptiveReport()
    seconds = 0.0
    validation, validation_ms, validation_rows = _validation_networks(profiler, rules, validation_networks)
    seconds += device_seconds(validation_rows)
    if validation_rows and len(validation) < 3:
        log(
            f"validation networks: {len(validation)} of {len(validation_rows)} measured cleanly, fewer "
            "than the 3 a leave-one-out score needs (the device is busy); the held-out kernels' "
            "accuracy decides when to stop"
        )
    first = sampler.sample(2 * batch)
    seconds += _measured_seconds(profiler, first, passes=3)
    while True:  # the first round is always scored, however little budget the first batch left
        kernels, ms = measured_kernels(profiler)
        if len(kernels) < 30:
            raise NotEnoughDataError(
                "fewer than 30 clean kernels after the first batch; the device is too busy to profile now"
            )
        current = KernelRegressor(random_state=random_state).fit(kernels, ms)
        known = {k.key for k in kernels}
        fresh = [k for k in sampler.sample(holdout * 2) if k.key not in known][:holdout]
        seconds += _measured_seconds(profiler, fresh)
        costs = profiler.costs(fresh)
        scored = [k for k in fresh if k.key in costs]
        if scored:
            acc = accuracy(current.predict(scored), [costs[k.key] for k in scored])
            nets = _network_accuracy(current, validation, validation_ms)
            report.rounds.append(
                AdaptiveRound(
                    len(known) + len(scored),
                    seconds / 60,
                    acc.within_10,
                    acc.rmspe,
                    nets.within_10 if nets else None,
                    nets.rmspe if nets else None,
                )
            )
            networks = (
                f"; validation networks within +-10% {nets.within_10:.0%} (RMSPE {nets.rmspe:.1f}%)"
                if nets
                else ""
            )
            log(
                f"round {len(report.rounds)}: {len(known)} kernels trained, held-out kernels within "
                f"+-10% {acc.within_10:.0%} (RMSPE {acc.rmspe:.1f}%){networks}, "
                f"{seconds / 60:.1f} device-minutes"
            )
            if (nets.within_10 if nets else acc.within_10) >= target_within_10:
                report.reached_target = True
                break
        if time.monotonic() >= deadline:
            break
        kernels, ms = measured_kernels(profiler)
        candidates = [k for k in sampler.sample(pool) if k.key not in {x.key for x in kernels}]
        spread = np.zeros(len(candidates))
        if candidates:
            preds = []
            for j in range(committee):
                pick = rng.integers(0, len(kernels), len(kernels))
                model = KernelRegressor(max_iter=150, random_state=random_state + j)
                model.fit([kernels[i] for i in pick], ms[pick])
                preds.append(np.log(model.predict(candidates)))
            spread = np.std(preds, axis=0)
        chosen = [candidates[i] for i in np.argsort(-spread)[:batch]]
        seconds += _measured_seconds(profiler, chosen)
    return report


VALIDATION_SEED = 100_000  # random-network seeds for validation: training uses 0, 1, 2, ...


def _validation_networks(
    profiler: KernelProfiler, rules: FusionRules, count: int
) -> tuple[list[tuple[list[Kernel], int]], list[float], list[Measurement]]:
    """Random networks measured end to end (median clean pass of 3): the clean ones' kernels and
    glue counts, their latencies, and every row, for the adaptive profiler's network accuracy."""
    if count < 3:
        return [], [], []
    paths = random_networks(count, start=VALIDATION_SEED)
    measured = profiler.measure_models(paths, repeats=3)
    splitter = ModelSplitter(rules)
    networks, ms = [], []
    for path, m in zip(paths, measured, strict=True):
        if m.ok and m.clean:
            networks.append(splitter.split(path).network)
            ms.append(m.median_ms)
    return networks, ms, measured


def _network_accuracy(regressor: KernelRegressor, networks: list, measured_ms: list[float]):
    """Each validation network predicted by the regressor, the overhead fitted on the others."""
    predicted = leave_one_out(LatencyTable({}, regressor), networks, measured_ms)
    return accuracy(predicted, measured_ms) if predicted else None


def _measured_seconds(profiler: KernelProfiler, kernels: Sequence[Kernel], passes: int = 1) -> float:
    """Measure ``kernels`` (those a busy moment flags disturbed again, up to ``passes`` times)
    and return the device time their rows took, every pass counted."""
    seconds, pending = 0.0, list(kernels)
    for _ in range(passes):
        if not pending:
            break
        profiler.measure(pending)
        keys = {k.key for k in pending}
        rows = {
            m.key: m
            for m in profiler.store.measurements(profiler.device.name, profiler.backend, "kernel")
            if m.key in keys
        }
        seconds += device_seconds(rows.values())
        pending = [k for k in pending if k.key in rows and rows[k.key].disturbed]
    return seconds
