"""KernelProfiler: the measurements predictors are built from, on one device, into the store.

Kernels are stored as ``kind="kernel"`` rows keyed by the kernel key; whole networks are timed
end to end as ``kind="model"`` rows (Campaign.measure_model). Only clean rows (not flagged
disturbed) are read back, so a re-run re-measures what noise spoiled. How a kernel is measured
depends on the backend:

* ONNX Runtime: as a harness model (profiler/backends/ort/harness.py) profiled by the agent's
  ``profile_kernels``, which keeps the kernel's own nodes' time in context.
* TVM (``tvm``, tuned, or ``tvm-untuned``): compiled alone, as TVM compiles that kernel inside a
  network (predictors/kernels/tvm_fusion.py: TVM's fusions are rules, so a kernel of the
  splitter is one fused function, or the SE block's three), and timed end to end. TVM has no
  per-function profiler any more (0.27: the Relax VM's only hook is a Python callback around
  every call, which costs more than a small kernel), and there are no layout conversions
  between kernels to capture in context, so the kernel alone is the kernel in the network,
  less what the VM spends on the call itself. That per-call overhead is measured once per
  device (``call_overhead_ms``: a model of one ReLU on one element) and subtracted.

The agent's per-run statistics in ``profile_kernels`` shrug off contention that comes in bursts
shorter than one run; a kernel whose single run lasts longer (``confirm_ms``) spans bursts, so
it is measured a second time and the faster clean value is kept (contention only ever slows a
kernel down). End-to-end timing (TVM) judges every repeat with the canary instead.

ONNX Runtime's profiler adds a fixed amount to every node it records (about 1.8 us here, for
nodes whose real cost, scheduling included, is 0.2 us): 25-30% of a small kernel. It is
measured once per device (``profiler_overhead_ms``: a chain of 101 ReLUs against one, profiled
and timed without the profiler) and ``costs`` subtracts it for each of a kernel's nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from hwlat.devices.device import Device
from hwlat.errors import ConfigError, HwlatError
from hwlat.profiler.backends import HostBackend, cache_dir, get_backend
from hwlat.profiler.backends.ort.harness import (
    HarnessBackend,
    ProbeModel,
    qdq_fanout_probe,
    qdq_probe_fused,
    relu_chain,
)
from hwlat.profiler.campaign import Campaign, CampaignReport, model_key
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store

KERNEL_BACKENDS = ("ort", "tvm", "tvm-untuned")
CONFIRM_MS = 1.0
PROFILER_RESOLUTION_MS = 0.001  # ONNX Runtime's profiler records whole microseconds
PROBE_NODES = 101
PROBE_PAUSE_S = 1.0  # before the n-th retry of a disturbed probe, n times this
# A kernel that costs next to nothing: compiled alone and timed, it is the VM's per-call overhead.
CALL_PROBE = Kernel((OpSpec("act", (1, 1, 1, 1), activation="relu"),))


class ProbeFailed(HwlatError):
    """An overhead probe could not be measured at all."""


class KernelProfiler:
    """Kernel rows and whole-model rows of one device and backend (``tune_trials``: with ``tvm``,
    MetaSchedule candidates per kernel; the database is shared with every TVM campaign)."""

    def __init__(
        self,
        device: Device,
        store: Store,
        protocol: TimingProtocol | None = None,
        backend: str = "ort",
        show_progress: bool = False,
        confirm_ms: float = CONFIRM_MS,
        tune_trials: int | None = None,
    ) -> None:
        if backend not in KERNEL_BACKENDS:
            raise ConfigError(
                f"kernels cannot be profiled with backend {backend!r}",
                f"use one of {', '.join(KERNEL_BACKENDS)}",
            )
        if tune_trials is not None and backend != "tvm":
            raise ConfigError(f"--tune-trials applies to --backend tvm, not {backend!r}")
        self.device = device
        self.store = store
        self.protocol = protocol or TimingProtocol(
            warmup_ms=10.0, min_repeat_ms=10.0, repeat=5, max_retries=2
        )
        self.backend = backend
        self.tune_trials = tune_trials
        self.show_progress = show_progress
        self.confirm_ms = confirm_ms
        self._node_overhead_ms: float | None = None
        self._call_overhead_ms: float | None = None
        self.probe_warnings: list[str] = []  # probes that were never clean: what was used instead
        self._host: HostBackend | None = None

    @property
    def in_context(self) -> bool:
        """Kernels are profiled inside a harness (ONNX Runtime), not timed alone (TVM)."""
        return self.backend == "ort"

    def measure(self, kernels: Iterable[Kernel], force: bool = False) -> CampaignReport:
        kernels = list(kernels)
        if not self.in_context:  # the call-overhead probe rides along (one agent start, not two)
            return self._campaign().run([CALL_PROBE, *kernels], force=force)
        report = self._campaign().run(kernels, force=force)
        rows = self.rows()
        confirm = [
            k
            for k in kernels
            if k.key in rows
            and rows[k.key].median_ms >= self.confirm_ms
            and not rows[k.key].extra.get("confirmed")
        ]
        if confirm:
            first = {k.key: rows[k.key] for k in confirm}
            self._campaign().run(confirm, force=True)
            for key, old in first.items():
                new = self.store.get(self.device.name, self.backend, key, "kernel")
                best = new if new is not None and new.clean and new.median_ms < old.median_ms else old
                best.extra["confirmed"] = True
                self.store.save(best)
        return report

    def host_backend(self) -> HostBackend:
        """What builds the artifacts: one for the profiler's life, so TVM's compile and tuning
        records (``build_seconds``) cover every kernel and model it built."""
        if self._host is None:
            options = {"tune_trials": self.tune_trials} if self.tune_trials is not None else {}
            self._host = (
                HarnessBackend(self.device)
                if self.in_context
                else get_backend(self.backend, self.device, **options)
            )
        return self._host

    def build_seconds(self) -> dict[str, float]:
        """Host seconds spent compiling and tuning (TVM) the artifacts built by this profiler so
        far; what came from the cache costs nothing."""
        records = getattr(self.host_backend(), "records", {}) if not self.in_context else {}
        return {
            "compile_seconds": round(sum(r.compile_s for r in records.values()), 1),
            "tune_seconds": round(sum(r.tune_s for r in records.values()), 1),
        }

    def _campaign(self) -> Campaign:
        return Campaign(
            self.device,
            self.host_backend(),
            self.store,
            self.protocol,
            show_progress=self.show_progress,
            kind="kernel",
        )

    def rows(self) -> dict[str, Measurement]:
        """Clean kernel rows of this device and backend, by kernel key."""
        return {
            m.key: m
            for m in self.store.measurements(self.device.name, self.backend, "kernel", clean_only=True)
        }

    def costs(self, kernels: Iterable[Kernel] | None = None) -> dict[str, float]:
        """In-context time (ms) of each measured kernel (all, or those asked for): the median of
        its row less what measuring it added (ONNX Runtime: the profiler's overhead for each of
        its nodes; TVM: the VM's per-call overhead). Never under a tenth of the row's median,
        and, for ONNX Runtime, a kernel below the profiler's resolution (it records whole
        microseconds; every run of a tiny kernel can read 0) costs half the resolution: an
        estimate, never a zero to take a log or a ratio of."""
        rows = self.rows()
        keys = rows if kernels is None else [k.key for k in kernels]
        if self.in_context:
            per_node, floor_ms = self.profiler_overhead_ms(), PROFILER_RESOLUTION_MS / 2
        else:
            per_call, floor_ms = self.call_overhead_ms(), 0.0
        out = {}
        for key in keys:
            m = rows.get(key)
            if m is None or m.median_ms is None or key.startswith("probe-") or key == CALL_PROBE.key:
                continue
            if self.in_context:
                overhead = max(1, len(m.extra.get("kernel_nodes", ()))) * per_node
            else:
                overhead = per_call
            out[key] = max(0.1 * m.median_ms, m.median_ms - overhead, floor_ms)
        return out

    def call_overhead_ms(self, passes: int = 3) -> float:
        """What timing a kernel alone adds to its cost in a network (TVM): the VM's call of
        ``main``, its allocations and return, measured once as the time of a kernel that does
        next to nothing (``CALL_PROBE``); later calls read the stored row."""
        if self._call_overhead_ms is not None:
            return self._call_overhead_ms
        (row,) = self._measure_probes([CALL_PROBE], "call-overhead", passes)
        self._call_overhead_ms = row.median_ms
        return row.median_ms

    def profiler_overhead_ms(self, passes: int = 5) -> float:
        """What the profiler adds to each node's recorded time on this device, in ms (measured once;
        later calls read the stored rows). A disturbed pass is tried again after a growing pause,
        so that a burst of contention can pass; on a device that stays busy through every pass
        the least disturbed pass is used and ``probe_warnings`` says so."""
        if self._node_overhead_ms is not None:
            return self._node_overhead_ms
        directory = cache_dir() / "probes"
        paths = [relu_chain(1, directory), relu_chain(PROBE_NODES, directory)]
        probes = [
            ProbeModel(f"probe-relu-chain-{n}", p) for n, p in zip((1, PROBE_NODES), paths, strict=True)
        ]
        short, long = self._measure_probes(probes, "profiler-overhead", passes)
        for i in range(passes):  # a disturbed end-to-end time is measured again, a clean one kept
            time.sleep(PROBE_PAUSE_S * i)
            e2e = self.measure_models(paths, repeats=3)
            if all(m.clean for m in e2e):
                break
        if not all(m.ok for m in e2e):
            raise ProbeFailed(
                f"the profiler-overhead probe failed end to end on {self.device.name}: "
                f"{next(m.error_msg for m in e2e if not m.ok)}"
            )
        if not all(m.clean for m in e2e):
            self._warn_disturbed("profiler-overhead (end to end)", passes, e2e)
        recorded = (long.median_ms - short.median_ms) / (PROBE_NODES - 1)
        real = (e2e[1].median_ms - e2e[0].median_ms) / (PROBE_NODES - 1)
        self._node_overhead_ms = max(0.0, recorded - real)
        return self._node_overhead_ms

    def _measure_probes(self, probes: list, what: str, passes: int) -> list[Measurement]:
        """Measure ``probes`` until every row is clean, up to ``passes`` times, a disturbed pass
        tried again after a growing pause; then each probe's row (``_probe_row``)."""
        for i in range(passes):
            time.sleep(PROBE_PAUSE_S * i)
            self._campaign().run(probes)
            rows = self.rows()
            if all(p.key in rows for p in probes):
                break
        return [self._probe_row(p.key, what, passes) for p in probes]

    def _probe_row(self, key: str, what: str, passes: int) -> Measurement:
        """A probe's clean row; failing that, its least disturbed one (the store keeps the fastest
        try), named in ``probe_warnings``: a probe is one constant per device, and a device busy
        through every pass should still get a predictor. Only a probe that never ran is an error."""
        row = self.store.get(self.device.name, self.backend, key, "kernel")
        if row is None or not row.ok or row.median_ms is None:
            reason = row.error_msg if row is not None and row.error_msg else "no measurement"
            raise ProbeFailed(f"the {what} probe could not be measured on {self.device.name}: {reason}")
        if not row.clean:
            self._warn_disturbed(what, passes, [row])
        return row

    def _warn_disturbed(self, what: str, passes: int, rows: list[Measurement]) -> None:
        reasons = "; ".join(dict.fromkeys(m.disturbance for m in rows if m.disturbance))
        self.probe_warnings.append(
            f"the {what} probe stayed disturbed in {passes} passes on {self.device.name} "
            f"({reasons or 'disturbed'}); its least disturbed pass is used"
        )

    def kernel_node_ops(self, kernel: Kernel) -> list[str] | None:
        """The op types ONNX Runtime's profile recorded for a measured kernel (None when it has
        no measured row): the runtime's answer, so a disturbed row gives it as well as a clean one."""
        row = self.store.get(self.device.name, self.backend, kernel.key, "kernel")
        if row is None or row.status != "ok":
            return None
        return [n["op"] for n in row.extra.get("kernel_nodes", [])]

    def qdq_convs_fused(self, dtype: str) -> dict[str, bool]:
        """Which convs of the QDQ fan-out probe (``qdq_fanout_probe``) ONNX Runtime runs as one
        QLinearConv on this device, by conv name: the kernels its profile records. The answer
        is the runtime's, so a disturbed run answers it as well as a clean one."""
        probe = ProbeModel(f"probe-qdq-fanout-{dtype}", qdq_fanout_probe(dtype, cache_dir() / "probes"))
        self._campaign().run([probe])
        row = self.store.get(self.device.name, self.backend, probe.key, "kernel")
        if row is None or row.status != "ok":
            raise ProbeFailed(
                f"the {dtype} QDQ fan-out probe failed on {self.device.name}: "
                f"{row.error_msg if row is not None else 'no result'}"
            )
        return qdq_probe_fused(row.extra.get("kernel_nodes", []))

    def measure_models(
        self,
        paths: Iterable[str | Path],
        protocol: TimingProtocol | None = None,
        force: bool = False,
        repeats: int = 1,
    ) -> list[Measurement]:
        """End-to-end times of whole ONNX models; clean stored rows are reused unless ``force``.

        With ``repeats`` > 1 every model is measured that many times and the median clean pass
        is kept (``Campaign.measure_models``).
        """
        paths = [Path(p) for p in paths]
        campaign = Campaign(
            self.device,
            self.backend if self.in_context else self.host_backend(),
            self.store,
            protocol or TimingProtocol(),
            show_progress=False,
        )
        best: dict[Path, Measurement] = {}
        for path in paths:
            stored = (
                None if force else self.store.get(self.device.name, self.backend, model_key(path), "model")
            )
            if stored is not None and stored.clean and stored.repeats >= repeats:
                best[path] = stored
        todo = [p for p in paths if p not in best]
        best.update(zip(todo, campaign.measure_models(todo, repeats), strict=True))
        return [best[p] for p in paths]


def device_seconds(rows: Iterable[Measurement]) -> float:
    """Time the agent spent on these rows (timing, retries, canaries, profiling passes)."""
    return sum(m.wall_s for m in rows)
