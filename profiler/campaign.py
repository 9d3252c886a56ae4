"""Campaign: measure a list of ops on one device, surviving faults, committing as it goes.

Ops are staged on the device in batches (one upload of up to ``batch_size`` files,
bounded by ``batch_timeout_s``), then measured one by one, each bounded by the
protocol's ``op_timeout_s``.

Faults and what happens:
  * an op fails to build or the agent reports an error -> stored as failed, next op;
  * the agent process dies on an op                    -> op stored as failed with the
    agent's last stderr lines, a new agent starts, next op;
  * the agent does not answer within op_timeout_s      -> op stored as failed, agent restarted;
  * the connection drops (or the link is found dead    -> reconnect with back-off and resume
    after a timeout or crash)                             at the first op not yet stored (the
                                                          op in flight is measured again);
  * the device cannot be reached at the start, or the  -> DeviceError at once (nothing to
    agent cannot start there (Python or runtime missing)  resume; the other devices go on);
  * an agent dies while starting (a replacement, or a  -> started again with back-off, up to
    first one killed before it said a word)               reconnect_timeout_s (first: 3 times);
  * Ctrl-C, or ``stop()`` from another thread          -> what was measured stays stored,
    the op in flight is dropped, the agent is stopped.

A TVM campaign on a device with ``tvm_tracker`` talks to a board from TVM's RPC tracker
instead of an agent: a ``TrackerSession`` (profiler/backends/tvm/tracker.py) in place of the
``AgentSession``, a ``TrackerLink`` in place of the SSH connection; the faults above map onto
it (the tracker or every board gone -> reconnect with back-off; the board's session ended ->
op stored as failed, a new board requested).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hwlat.devices.connection import Connection, ConnectionLost, DeviceError, connect
from hwlat.devices.device import Device
from hwlat.profiler.agent import mem_available_mb
from hwlat.profiler.agent_client import AgentCrashed, AgentSession, AgentTimeout, agent_start_error
from hwlat.profiler.backends import ArtifactError, HostBackend, get_backend
from hwlat.profiler.measurement import Measurement
from hwlat.profiler.onnx_models import model_facts
from hwlat.profiler.opspec import OpSpec, unique
from hwlat.profiler.progress import Progress
from hwlat.profiler.protocol import TimingProtocol
from hwlat.profiler.store import Store
from hwlat.profiler.store.leases import DeviceLease

if TYPE_CHECKING:
    from hwlat.profiler.backends.tvm.tracker import TrackerSession

log = logging.getLogger(__name__)

# Kinds of rows: an "op" is timed end to end; a "kernel" as its backend says (``kernel_command``):
# ONNX Runtime profiles a harness model and keeps the kernel time of the unit it holds
# (profiler/backends/ort/harness.py), TVM times the kernel compiled alone end to end.
KINDS = ("op", "kernel")

# An op whose tensors and weights need more than this share of the memory available (on the
# host that builds it, or the device that runs it) is refused instead of sent.
MEMORY_SHARE = 0.5
# How often a first agent killed while it starts (before any ran) is started again.
FIRST_START_RETRIES = 3
# The fixed op re-timed around every measurement to detect a disturbed machine.
CANARY = OpSpec("conv", (1, 32, 28, 28), out_channels=32, kernel=3, padding=1, activation="relu")


class DeviceUnreachable(DeviceError):
    """The device could not be reached again within the reconnect window."""


class AgentRestartFailed(RuntimeError):
    """A replacement agent died while starting on a device where one ran before, or a first
    one was killed while starting (internal)."""


@dataclass
class CampaignReport:
    device: str
    backend: str
    requested: int = 0
    skipped: int = 0
    measured: int = 0
    failed: int = 0
    disturbed: int = 0
    reconnects: int = 0
    wall_s: float = 0.0
    timing_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    stopped: bool = False

    def summary(self) -> str:
        return (
            f"{self.device}/{self.backend}: {self.measured} measured, {self.skipped} already "
            f"stored, {self.failed} failed, {self.disturbed} flagged disturbed, "
            f"{self.reconnects} reconnects, {self.wall_s:.1f} s" + (", stopped" if self.stopped else "")
        )


class Campaign:
    """Measures ops on one device with one backend into a Store."""

    def __init__(
        self,
        device: Device,
        backend: str | HostBackend,
        store: Store,
        protocol: TimingProtocol | None = None,
        show_progress: bool = True,
        reconnect_timeout_s: float = 300.0,
        connect_fn: Callable[[Device], Connection] | None = None,
        batch_size: int = 32,
        batch_timeout_s: float = 600.0,
        kind: str = "op",
        wait_for_device: bool | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown measurement kind {kind!r}; use one of {', '.join(KINDS)}")
        self.kind = kind
        self.device = device
        self.backend = get_backend(backend, device) if isinstance(backend, str) else backend
        self.store = store
        self.protocol = protocol or TimingProtocol()
        self.show_progress = show_progress
        self.reconnect_timeout_s = reconnect_timeout_s
        self.connect_fn = connect_fn or (_tracker_link if self.backend.via_tracker else connect)
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.wait_for_device = store.wait_for_devices if wait_for_device is None else wait_for_device
        self._connection: Connection | None = None
        self._session: AgentSession | TrackerSession | None = None
        self._ever_connected = False
        self._agent_started = False  # an agent ran on the device during this campaign
        self._first_start_kills = 0  # first agents killed while starting
        self._restart_delay_s = 1.0
        self._restart_deadline: float | None = None
        self._staged: set[str] = set()  # op keys whose artifacts the current connection has
        self._artifacts: dict[str, Path | ArtifactError] = {}
        self._stop = threading.Event()

    # ----- public -----------------------------------------------------------
    def run(self, specs: Iterable[OpSpec], force: bool = False) -> CampaignReport:
        specs = list(unique(specs))
        done = set() if force else self.store.done_keys(self.device.name, self.backend.name, self.kind)
        todo = [s for s in specs if s.key not in done]
        report = CampaignReport(
            self.device.name, self.backend.name, requested=len(specs), skipped=len(specs) - len(todo)
        )
        started = time.monotonic()
        progress = (
            Progress(len(todo), f"{self.device.name}/{self.backend.name}")
            if self.show_progress and todo
            else None
        )
        try:
            with self._lease() as lease:
                self._run(todo, report, progress, lease)
        finally:
            self._close()
            self.backend.close()
            if progress:
                progress.close()
            report.wall_s = time.monotonic() - started
            report.stopped = self._stop.is_set()
        return report

    @staticmethod
    def _fits(spec, available_mb: float | None, weights_only: bool) -> bool:
        """Whether the op's weights (on the host that builds it) or its tensors and weights (on the
        device that runs it) fit in ``MEMORY_SHARE`` of the memory available there."""
        need = getattr(spec, "params", 0) * 4 if weights_only else getattr(spec, "bytes_moved", 0)
        # Whole numbers throughout: an op from a hand-written file may need 10^400 bytes.
        return available_mb is None or need <= MEMORY_SHARE * available_mb * 2**20

    def _too_big(
        self, spec, available_mb: float | None, where: str, weights_only: bool
    ) -> Measurement | None:
        """A deterministic failure for an op that would not fit in memory, refused before it is
        built (its weights on this host: a 100000x100000 gemm is 40 GB of them) or sent (its
        tensors and weights on the device: a 1x100000x4096x4096 conv needs 6.7 TB)."""
        if self._fits(spec, available_mb, weights_only):
            return None
        need = getattr(spec, "params", 0) * 4 if weights_only else getattr(spec, "bytes_moved", 0)
        what = "weights" if weights_only else "tensors and weights"
        return self._failed(
            spec.key,
            f"the op needs {_gigabytes(need)} GB for its {what}, more than {MEMORY_SHARE:.0%} of the "
            f"{available_mb / 1024:.1f} GB {where} has available; it was not built or measured "
            "(lower its sizes)",
        )

    def _run(
        self, todo: list[OpSpec], report: CampaignReport, progress: Progress | None, lease: DeviceLease
    ) -> None:
        host_mb = mem_available_mb()
        refused = {s.key: m for s in todo if (m := self._too_big(s, host_mb, "this host", True)) is not None}
        if refused:
            todo[:] = [s for s in todo if s.key not in refused]
            for m in refused.values():
                self._record(m, report, progress)
        if todo:  # e.g. TVM tunes and compiles ahead (timing candidates on the device); the canary first
            self.backend.prefetch([CANARY, *todo], progress=self.show_progress)
        index = 0
        while index < len(todo) and not self._stop.is_set():
            lease.check()
            spec = todo[index]
            m = self._measure_one(spec, report, todo[index : index + self.batch_size])
            if m is None or self._stop.is_set():  # connection lost: same op again; or stopped
                continue
            self._record(m, report, progress)
            index += 1

    def _record(self, m: Measurement, report: CampaignReport, progress: Progress | None) -> None:
        self.store.save(m)
        report.measured += m.ok
        report.failed += not m.ok
        report.disturbed += m.disturbed
        report.timing_s += m.wall_s
        if not m.ok:
            report.failures.append(f"{m.key}: {m.error_msg}")
        if progress:
            progress.update(note=f"{m.key.split('-')[0]} {m.median_ms or 0:.3f} ms" if m.ok else "failed")

    def _lease(self) -> DeviceLease:
        """Nothing else times on the device while this campaign does (profiler/store/leases.py)."""
        return DeviceLease(self.store, self.device.name, wait=self.wait_for_device)

    def stop(self) -> None:
        """End a running ``run`` from another thread: the op in flight is dropped, not stored."""
        self._stop.set()
        session = self._session
        if session is not None:
            session.kill()

    # ----- one op -----------------------------------------------------------
    def _measure_one(self, spec: OpSpec, report: CampaignReport, batch: list[OpSpec]) -> Measurement | None:
        """The op's measurement, or None when it must be tried again (link lost) or was stopped."""
        try:
            session = self._ensure_session(report)
            # Before the op is built: tensors of 10^200 elements cannot even be written down.
            refused = self._too_big(spec, self._device_mb(), "the device", False)
            if refused is not None:
                return refused
            try:
                artifact = self._artifact(spec)
            except ArtifactError as exc:
                return self._failed(spec.key, f"could not build the op: {exc}")
            if spec.key not in self._staged:
                self._stage_batch(batch)
            started_at = time.time()
            result = session.measure(spec.key, artifact, self.protocol.op_timeout_s, cmd=self._command)
        except ConnectionLost as exc:
            self._close()
            if not self._ever_connected:
                raise DeviceUnreachable(str(exc)) from None
            if not self._stop.is_set():
                log.warning("%s: %s; reconnecting", self.device.name, exc)
                self._reconnect(report)
            return None
        except (AgentTimeout, AgentCrashed) as exc:
            if self._connection is not None and not self._connection.is_alive():
                self._close()
                if not self._stop.is_set():
                    log.warning("%s: the connection dropped (%s); reconnecting", self.device.name, exc)
                    self._reconnect(report)
                return None
            self._close_session()  # the link is fine: a fresh agent on the same connection
            # An agent that died (the OOM killer, a crash) is not the op's fault the way a model the
            # runtime rejects is: a transient failure, measured again by the next run. An op that
            # outlasts the protocol's timeout would do so again: a failure, kept until --force.
            transient = isinstance(exc, AgentCrashed)
            return None if self._stop.is_set() else self._failed(spec.key, str(exc), transient=transient)
        except AgentRestartFailed as exc:
            self._close()
            self._wait_for_agent(report, exc)
            return None
        return self._from_result(spec.key, result, self.kind, started_at)

    @property
    def _command(self) -> str:
        return self.backend.kernel_command if self.kind == "kernel" else "measure"

    def _artifact(self, spec: OpSpec) -> Path:
        """Built once per campaign; a build error is remembered, not retried."""
        if spec.key not in self._artifacts:
            try:
                self._artifacts[spec.key] = self.backend.artifact(spec)
            except ArtifactError as exc:
                self._artifacts[spec.key] = exc
        found = self._artifacts[spec.key]
        if isinstance(found, ArtifactError):
            raise found
        return found

    def _stage_batch(self, batch: list[OpSpec]) -> None:
        """Upload the next ops' artifacts in one go (files already on the device are skipped)."""
        paths = []
        for spec in batch:
            if not self._fits(spec, self._device_mb(), weights_only=False):
                continue  # refused, unbuilt, when its turn comes
            try:
                paths.append(self._artifact(spec))
            except ArtifactError:
                pass  # stored as failed when its turn comes
        assert self._connection is not None
        self._connection.stage(paths, timeout_s=self.batch_timeout_s)
        self._staged.update(spec.key for spec in batch)

    def _device_mb(self) -> float | None:
        assert self._session is not None
        return self._session.hello["host"].get("mem_available_mb")

    def _failed(
        self,
        key: str,
        error_msg: str,
        kind: str | None = None,
        started_at: float | None = None,
        transient: bool = False,
    ) -> Measurement:
        return Measurement(
            device=self.device.name,
            backend=self.backend.name,
            key=key,
            kind=kind or self.kind,
            status="transient" if transient else "failed",
            error_msg=error_msg,
            settings=self.device.settings(),
            protocol=self.protocol.to_dict(),
            started_at=started_at,
        )

    def _from_result(self, key: str, result: dict, kind: str, started_at: float) -> Measurement:
        if result.get("status") != "ok":
            return self._failed(key, result.get("error_msg", "unknown agent error"), kind, started_at)
        assert self._session is not None
        hello, configured = self._session.hello, self._session.configured
        kept = ("e2e_samples_ms", "kernel_nodes", "profiled_runs", "memory_error")
        extra = {k: result[k] for k in kept if k in result}
        return Measurement(
            device=self.device.name,
            backend=self.backend.name,
            key=key,
            kind=kind,
            samples_ms=result["samples_ms"],
            number=result["number"],
            disturbed=result["disturbed"],
            disturbance="; ".join(result["reasons"]),
            canary_ratio=result["canary_ratio"],
            attempts=result["attempts"],
            wall_s=result["wall_s"],
            baseline_rss_mb=result.get("baseline_rss_mb"),
            load_peak_rss_mb=result.get("load_peak_rss_mb"),
            loaded_rss_mb=result.get("loaded_rss_mb"),
            peak_rss_mb=result.get("peak_rss_mb"),
            backend_version=str(hello["versions"].get(self.backend.version_key)),
            settings=configured["settings"],
            protocol=self.protocol.to_dict(),
            host=hello["host"],
            extra=extra,
            started_at=started_at,
        )

    # ----- connection management -------------------------------------------
    def _ensure_session(self, report: CampaignReport) -> AgentSession | TrackerSession:
        if self._session is None:
            if self._connection is None:
                self._connection = self.connect_fn(self.device)
                self._ever_connected = True
            config = {
                **self.backend.agent_config(),
                "protocol": self.protocol.to_dict(),
                "canary_model": str(self.backend.artifact(CANARY)),
                "canary_reference_ms": self.store.canary_reference(
                    self.device.name, self.backend.name, self.device.settings()
                ),
            }
            if self.backend.via_tracker:
                from hwlat.profiler.backends.tvm.tracker import TrackerSession

                session = TrackerSession(self._connection, config, stop=self._stop)
            else:
                session = AgentSession(self._connection, config)
            try:
                session.start()
            except (AgentCrashed, AgentTimeout) as exc:
                session.close()
                if not self._connection.is_alive():
                    raise ConnectionLost(
                        f"connection to {self.device.name!r} dropped while the agent started ({exc})"
                    ) from None
                # It ran before, or it was killed before it could say anything (no module is
                # missing then): a passing fault, restarted with back-off; a first agent that dies
                # without a word that often is reported.
                killed = isinstance(exc, AgentCrashed) and exc.killed
                if self._agent_started or (killed and self._first_start_kills < FIRST_START_RETRIES):
                    self._first_start_kills += not self._agent_started
                    raise AgentRestartFailed(str(exc)) from None
                raise agent_start_error(self.device, exc) from None
            self._session = session
            self._agent_started = True
            self._restart_delay_s, self._restart_deadline = 1.0, None
        return self._session

    def _wait_for_agent(self, report: CampaignReport, exc: AgentRestartFailed) -> None:
        """An agent died while starting (see AgentRestartFailed): wait with back-off (as for a dropped link)
        and try again, up to ``reconnect_timeout_s`` of failures in a row."""
        if self._restart_deadline is None:
            self._restart_deadline = time.monotonic() + self.reconnect_timeout_s
        if time.monotonic() + self._restart_delay_s > self._restart_deadline:
            raise DeviceUnreachable(
                f"device {self.device.name!r}: the measuring agent did not restart within "
                f"{self.reconnect_timeout_s:.0f} s ({exc}); what was measured is stored",
                f"run hwlat devices check {self.device.name}, then the same command again to resume",
            )
        log.warning(
            "%s: the agent died while starting (%s); retrying in %.0f s",
            self.device.name,
            exc,
            self._restart_delay_s,
        )
        self._stop.wait(self._restart_delay_s)
        self._restart_delay_s = min(self._restart_delay_s * 2, 30.0)

    def _reconnect(self, report: CampaignReport) -> None:
        """Wait with exponential back-off until the device answers again."""
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._connection = self.connect_fn(self.device)
                report.reconnects += 1
                return
            except ConnectionLost as exc:
                if time.monotonic() + delay > deadline:
                    raise DeviceUnreachable(
                        f"device {self.device.name!r} did not come back within "
                        f"{self.reconnect_timeout_s:.0f} s ({exc}); what was measured is stored, "
                        f"re-run the same command to resume"
                    ) from None
                log.warning("%s: still unreachable (%s); retrying in %.0f s", self.device.name, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _close_session(self) -> None:
        if self._session is not None:
            self._remember_canary(self._session)
            try:
                self._session.close()
            except (ConnectionLost, OSError):
                pass
            self._session = None

    def _close(self) -> None:
        self._close_session()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._staged.clear()

    def _remember_canary(self, session: AgentSession | TrackerSession) -> None:
        ref = session.configured.get("canary_reference_ms")
        if ref:
            self.store.update_canary_reference(
                self.device.name, self.backend.name, self.device.settings(), ref
            )

    # ----- whole models -----------------------------------------------------
    def measure_models(
        self, onnx_paths: Iterable[str | Path], repeats: int = 1, save: bool = True
    ) -> list[Measurement]:
        """Time each model ``repeats`` times, in passes over all of them (so one model's
        measurements lie apart in time), and keep the pass with the median latency among the
        clean ones: the steady-state median a user's plain runtime loop reports, robust to one
        pass a burst of contention slowed (the fastest pass would be a best case instead)."""
        paths = [Path(p) for p in onnx_paths]
        repeats = max(1, repeats)
        passes: dict[Path, list[Measurement]] = {p: [] for p in paths}
        with self._lease():
            for _ in range(repeats):
                for path in paths:
                    passes[path].append(self.measure_model(path, save=False))
        chosen = [representative(passes[p]) for p in paths]
        for m in chosen:
            m.repeats = repeats
            if save:
                self.store.save(m)
        return chosen

    def measure_model(self, onnx_path: str | Path, save: bool = True) -> Measurement:
        """Time a whole model end to end in a fresh agent (so peak memory is the model's)."""
        onnx_path = Path(onnx_path)
        key = model_key(onnx_path)
        report = CampaignReport(self.device.name, self.backend.name)
        started_at = time.time()
        while True:
            try:
                with self._lease():
                    try:
                        artifact = self.backend.model_artifact(onnx_path)
                    except ArtifactError as exc:
                        m = self._failed(key, f"could not build the model: {exc}", "model", started_at)
                    else:
                        session = self._ensure_session(report)
                        started_at = time.time()
                        timeout_s = self.protocol.op_timeout_s * 5
                        result = session.measure(key, artifact, timeout_s, cmd="measure_model")
                        m = self._from_result(key, result, "model", started_at)
                break
            except (AgentCrashed, AgentTimeout) as exc:
                transient = isinstance(exc, AgentCrashed)
                m = self._failed(key, str(exc), "model", started_at, transient=transient)
                break
            except AgentRestartFailed as exc:
                self._close()
                self._wait_for_agent(report, exc)
            finally:
                self._close()
        m.extra.update(model_facts(onnx_path))
        if save:
            self.store.save(m)
        return m


def representative(passes: list[Measurement]) -> Measurement:
    """The median pass among the clean ones (the lower middle for an even count); with none
    clean, the least slowed of the measured ones; with none measured, the last failure."""
    clean = sorted((m for m in passes if m.clean), key=lambda m: m.median_ms)
    if clean:
        return clean[(len(clean) - 1) // 2]
    measured = sorted((m for m in passes if m.ok), key=lambda m: m.median_ms)
    return measured[0] if measured else passes[-1]


def _gigabytes(n_bytes: int) -> str:
    gb = n_bytes // 2**30
    return f"{n_bytes / 2**30:.1f}" if gb < 10**6 else f"about 10^{len(str(gb)) - 1}"


def _tracker_link(device: Device) -> Connection:
    from hwlat.profiler.backends.tvm.tracker import TrackerLink

    return TrackerLink(device)


def model_key(onnx_path: Path) -> str:
    """``model-<file stem>-<first 12 hex of the file's sha256>``: same file, same key."""
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
    return f"model-{Path(onnx_path).stem}-{digest}"
