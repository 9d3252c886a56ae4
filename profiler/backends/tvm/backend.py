"""The TVM backends: compile each op (or model) for the device's target into a shared library.

  ``tvm``          every fused kernel tuned with MetaSchedule on the device (``tune_trials``
                   candidates each; the database is shared by all ops, campaigns and devices
                   of the same target), then compiled with the best schedules;
  ``tvm-untuned``  TVM's default CPU pipeline, which schedules nothing: 10-50x slower than
                   tuned code, useful only to see what tuning buys. Stored under its own name
                   so that untuned numbers never pass for TVM's.

OpSpec -> ONNX (profiler/onnx_models) -> Relax ONNX frontend -> zero pipeline (legalize, fuse) ->
[tune] -> compile for the target -> ``export_library`` (cross-linked for a foreign triple).
Libraries are cached under ``cache_dir()/tvm``, keyed by TVM version, target, trial budget
and op key; ``prefetch`` tunes a campaign's ops first (the device is busy tuning anyway),
then compiles ahead of measurement: in the background for a remote device, before
measuring for the local one (whose CPU would otherwise time the compiler too).

Each library also holds ``hwlat_example_inputs()``, which returns zero tensors shaped like
``main``'s inputs, so the agent needs nothing but the file to run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import onnx

from hwlat.devices.connection import DeviceError
from hwlat.devices.device import Device
from hwlat.profiler.backends.base import ArtifactError, HostBackend, cache_dir, register_backend
from hwlat.profiler.backends.tvm.target import cross_compiler, device_target, target_id, tvm_target
from hwlat.profiler.backends.tvm.tune import Tuner, TuningError, load_tvm, local_runner
from hwlat.profiler.kernel import Kernel
from hwlat.profiler.onnx_models import build_kernel_model, build_model, load_model
from hwlat.profiler.onnx_models.fold import fold_shape_arithmetic
from hwlat.profiler.opspec import OpSpec
from hwlat.profiler.progress import Progress

DEFAULT_TUNE_TRIALS = 64
INPUTS_FUNCTION = "hwlat_example_inputs"  # the agent calls it by this name
_MAX_ERROR_CHARS = 1500


@dataclass
class BuildRecord:
    """How one artifact came to be: from the cache, or tuned and compiled now."""

    key: str
    cached: bool
    tune_s: float = 0.0
    compile_s: float = 0.0  # importing into Relax (each time) and compiling
    tasks: int = 0
    tuned_tasks: int = 0
    error: str = ""


@register_backend
class TvmBackend(HostBackend):
    """TVM with every kernel tuned on the device; ``records`` tells how each artifact was built."""

    name = "tvm"
    version_key = "tvm"

    def __init__(self, device: Device, tune_trials: int | None = None) -> None:
        super().__init__(device)
        trials = DEFAULT_TUNE_TRIALS if tune_trials is None else tune_trials
        if self.name == "tvm" and trials < 1:
            raise ValueError(
                f"--tune-trials {trials}: the tvm backend tunes every kernel; use at "
                "least 1 trial, or --backend tvm-untuned for untuned code"
            )
        self.trials = trials if self.name == "tvm" else 0
        self.tvm = load_tvm()
        self.target = device_target(device)
        self.cc = cross_compiler(self.target)
        root = cache_dir() / "tvm" / f"tvm-{self.tvm.__version__}" / target_id(self.target)
        self.lib_dir = root / (f"tuned-{self.trials}" if self.trials else "untuned")
        self.tuning_dir = root / f"tuning-{self.trials}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "target.json").write_text(json.dumps(self.target, indent=1, sort_keys=True))
        self.records: dict[str, BuildRecord] = {}
        self._futures: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._local_tuner: Tuner | None = None
        self._database: tuple[int | None, object] | None = None  # (records file mtime, database)

    # ----- HostBackend --------------------------------------------------------
    @property
    def via_tracker(self) -> bool:
        return self.device.uses_tracker

    def artifact(self, spec: OpSpec | Kernel) -> Path:
        return self._artifact(spec.key, self._op_path(spec), partial(_onnx_model, spec))

    def model_artifact(self, onnx_path: Path) -> Path:
        onnx_path = Path(onnx_path)
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        path = self.lib_dir / f"model-{onnx_path.stem}-{digest}.so"
        return self._artifact(f"model:{onnx_path}", path, partial(load_model, onnx_path))

    def prefetch(self, specs: list[OpSpec | Kernel], progress: bool = False) -> None:
        """Tune every op not built yet (the device is busy while it does), then compile ahead.

        A build error is kept and raised by ``artifact`` for its op, so that the campaign
        stores the op as failed and goes on.
        """
        todo = [s for s in specs if not self._op_path(s).exists() and s.key not in self._futures]
        if not todo:
            return
        errors: dict[str, ArtifactError] = {}
        if self.trials:
            bar = Progress(len(todo), f"{self.device.name}/{self.name} tuning") if progress else None
            with self.tuner() as tuner:
                for spec in todo:
                    try:
                        self._tune(tuner, spec.key, self._import(spec.key, _onnx_model(spec)))
                    except ArtifactError as exc:
                        errors[spec.key] = exc
                    if bar:
                        bar.update(note=spec.op)
            if bar:
                bar.close()
        for spec in todo:
            self._futures[spec.key] = self._submit(self._compile_tuned, spec, errors.get(spec.key))
        if self.device.is_local:  # this CPU is the device: do not compile while it measures
            for future in list(self._futures.values()):
                future.exception()

    def close(self) -> None:
        """Drop compile work not started yet (what is finished stays in the cache)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()

    # ----- building -----------------------------------------------------------
    def _artifact(self, key: str, path: Path, load_onnx: Callable[[], onnx.ModelProto]) -> Path:
        future = self._futures.pop(key, None)
        if future is not None and not future.cancelled():
            return future.result()
        if path.exists():
            self.records.setdefault(key, BuildRecord(key, cached=True))
            return path
        return self._submit(self._build, key, path, load_onnx).result()

    def _submit(self, fn, *args) -> Future:
        """All TVM compile work runs on one worker thread, one job at a time."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hwlat-tvm")
            return self._pool.submit(fn, *args)

    def _compile_tuned(self, spec: OpSpec | Kernel, error: ArtifactError | None) -> Path:
        """A prefetched op: tuned already (or failed to), so only compiled here."""
        if error is not None:
            raise error
        path = self._op_path(spec)
        self._compile(spec.key, self._import(spec.key, _onnx_model(spec)), path)
        return path

    def _build(self, key: str, path: Path, load_onnx: Callable[[], onnx.ModelProto]) -> Path:
        """Tune what the database lacks, then compile one artifact into ``path``."""
        mod = self._import(key, load_onnx())
        if self.trials:
            with self.tuner() as tuner:
                self._tune(tuner, key, mod)
        self._compile(key, mod, path)
        return path

    def _tune(self, tuner: Tuner, key: str, mod) -> None:
        record = self.records.setdefault(key, BuildRecord(key, cached=False))
        try:
            result = tuner.tune(mod)
        except TuningError as exc:
            record.error = str(exc)
            raise ArtifactError(record.error) from exc
        except DeviceError:
            raise  # the device cannot tune at all (no TVM there, link down): not this op's fault
        except Exception as exc:  # TVM raises many types; the op is stored as failed with the text
            record.error = f"TVM could not tune it for {self.target}: {_message(exc)}"
            raise ArtifactError(record.error) from exc
        record.tune_s += result.seconds
        record.tasks = result.tasks
        record.tuned_tasks += result.tuned

    @contextmanager
    def tuner(self) -> Iterator[Tuner]:
        """A Tuner whose runner times candidates on the device, set up like the agent.

        The runner (for a remote device: an RPC server started there, reached through the
        SSH connection; for a tracker device: boards from TVM's RPC tracker) is only set up
        once a kernel actually needs tuning.
        """
        if self.device.is_local:  # one for the backend's life: its worker processes start once
            if self._local_tuner is None:
                affinity = list(self.device.cpu_affinity or []) or None
                self._local_tuner = Tuner(
                    self.tuning_dir,
                    self.target,
                    self.trials,
                    partial(local_runner, self.device.threads, affinity),
                    self.cc,
                )
            yield self._local_tuner
            return
        from hwlat.profiler.backends.tvm.rpc import device_rpc_runner
        from hwlat.profiler.backends.tvm.tracker import tracker_rpc_runner

        runner = tracker_rpc_runner if self.device.uses_tracker else device_rpc_runner
        with ExitStack() as stack:
            make_runner = partial(stack.enter_context, runner(self.device))
            yield Tuner(self.tuning_dir, self.target, self.trials, make_runner, self.cc)

    def _import(self, key: str, model: onnx.ModelProto):
        """ONNX -> Relax after TVM's zero pipeline (legalized, fused): what tuning and compiling share."""
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        record = self.records.setdefault(key, BuildRecord(key, cached=False))
        started = time.monotonic()
        try:
            model = fold_shape_arithmetic(model)
            mod = from_onnx(model, shape_dict=_static_shapes(model))
            with tvm_target(self.target):
                return self.tvm.transform.Sequential(
                    [
                        relax.transform.DecomposeOpsForInference(),
                        relax.transform.CanonicalizeBindings(),
                        relax.get_pipeline("zero"),
                    ]
                )(mod)
        except Exception as exc:
            record.error = f"TVM could not import it: {_message(exc)}"
            raise ArtifactError(record.error) from exc
        finally:
            record.compile_s += time.monotonic() - started

    def _compile(self, key: str, mod, path: Path) -> None:
        """Apply the tuning database (tvm), compile for the target, export the library."""
        record = self.records.setdefault(key, BuildRecord(key, cached=False))
        started = time.monotonic()
        try:
            if self.trials:
                mod = self._apply_database(mod)
            executable = self.tvm.compile(_with_example_inputs(mod), target=tvm_target(self.target))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.so")
            try:
                executable.export_library(str(tmp), **({"cc": self.cc} if self.cc else {}))
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
        except Exception as exc:  # TVM raises many types; the op is stored as failed with the text
            record.error = f"TVM could not compile it for {self.target}: {_message(exc)}"
            raise ArtifactError(record.error) from exc
        record.compile_s += time.monotonic() - started

    def _apply_database(self, mod):
        from tvm import relax

        records = self.tuning_dir / "database_tuning_record.json"
        stamp = records.stat().st_mtime_ns if records.exists() else None
        if self._database is None or self._database[0] != stamp:  # reloaded when tuning added records
            self._database = (stamp, Tuner(self.tuning_dir, self.target, self.trials).database())
        with tvm_target(self.target), self._database[1], self.tvm.transform.PassContext(opt_level=3):
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    def _op_path(self, spec: OpSpec | Kernel) -> Path:
        kind = "kernel-" if isinstance(spec, Kernel) else ""
        return self.lib_dir / f"{kind}{spec.op}-{hashlib.sha256(spec.key.encode()).hexdigest()[:16]}.so"


@register_backend
class TvmUntunedBackend(TvmBackend):
    """TVM's default pipeline, nothing tuned: what tuning buys, never TVM's number."""

    name = "tvm-untuned"


def _onnx_model(spec: OpSpec | Kernel) -> onnx.ModelProto:
    """An op's one-op model, or a kernel alone (nothing around it for TVM to fuse into it)."""
    return build_kernel_model(spec) if isinstance(spec, Kernel) else build_model(spec)


def _with_example_inputs(mod):
    """Add ``hwlat_example_inputs()``: zero tensors shaped like ``main``'s inputs, for the agent."""
    from tvm import relax

    builder = relax.BlockBuilder(mod)
    with builder.function(INPUTS_FUNCTION, []):
        zeros = [builder.emit(relax.op.zeros(p.ty.shape, p.ty.dtype)) for p in mod["main"].params]
        builder.emit_func_output(relax.Tuple(zeros))
    return builder.get()


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Graph inputs with symbolic dimensions set to 1 (as the agent feeds ONNX Runtime)."""
    initializers = {i.name for i in model.graph.initializer}
    return {
        i.name: [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
        if i.name not in initializers
    }


def _message(exc: BaseException) -> str:
    """The compiler's own words on one line, cut to a length a database row can carry."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."
