"""MetaSchedule tuning for the TVM backend: one database per target, candidates timed on the device.

TVM's default CPU pipeline schedules nothing, so untuned kernels can be 10-50x slower
than ONNX Runtime; the ``tvm`` backend therefore tunes every fused kernel ("task") of an
op before compiling it. Tasks are identified structurally, so a conv that appears in
many ops, campaigns or devices of the same target is tuned once: the database lives in
the host cache, keyed by target, TVM version and trial budget.

Two TVM 0.27 pitfalls are handled here: MetaSchedule's builder workers and tune contexts
import every tensor intrinsic, CUDA's included (about 25 s per process on a small
machine), so hwlat builds candidates with a function that skips that import and loads
only the CPU intrinsic modules; and the "zero" pipeline must run before tasks can be
extracted.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from hwlat.profiler.backends.tvm.target import tvm_target

# How each candidate is timed while tuning (per candidate: >= repeat * min_repeat_ms).
TUNE_NUMBER, TUNE_REPEAT, TUNE_MIN_REPEAT_MS = 1, 3, 10
BUILDER_TIMEOUT_S = 120.0
RUNNER_TIMEOUT_S = 60.0
SEED = 0


class TuningError(RuntimeError):
    """MetaSchedule found no working schedule for a kernel."""


@dataclass
class TuneResult:
    tasks: int = 0  # fused kernels in the op or model
    tuned: int = 0  # of those, tuned now (the rest were in the database)
    seconds: float = 0.0


def load_tvm() -> types.ModuleType:
    """Import TVM with only the CPU tensor intrinsics registered (see the module docstring)."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        package = importlib.util.module_from_spec(spec)  # the package, without its __init__
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
        for sub in ("x86", "arm_cpu"):
            setattr(package, sub, importlib.import_module(f"{name}.{sub}"))
    import tvm

    return tvm


def build_candidate(mod, target, _params):
    """MetaSchedule's default_build without its ``import tvm.s_tir.tensor_intrin`` (see above).

    Runs in MetaSchedule's builder worker processes, which import it from this module.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_candidate(cc: str | None, mod) -> str:
    """A shared library the device can load as it is (MetaSchedule's default, a .tar, would
    need a compiler on the device); ``cc`` links it for a foreign architecture. Each goes in
    a folder of its own, which MetaSchedule removes once the candidate has run."""
    path = os.path.join(tempfile.mkdtemp(prefix="hwlat-candidate-"), "candidate.so")
    mod.export_library(path, **({"cc": cc} if cc else {}))
    return path


def configure_runtime(threads: int, cpu_affinity: list[int] | None) -> None:
    """Run candidates the way the agent runs ops: this many TVM threads, this CPU set."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["TVM_BIND_THREADS"] = "0"  # keep the affinity set here; TVM would re-pin
    if cpu_affinity:
        os.sched_setaffinity(0, set(cpu_affinity))


def evaluator_config():
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(
        number=TUNE_NUMBER, repeat=TUNE_REPEAT, min_repeat_ms=TUNE_MIN_REPEAT_MS, enable_cpu_cache_flush=False
    )


def local_runner(threads: int, cpu_affinity: list[int] | None):
    """Times candidates on this machine, in one worker process set up like the agent."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(
        timeout_sec=RUNNER_TIMEOUT_S,
        evaluator_config=evaluator_config(),
        initializer=partial(configure_runtime, threads, cpu_affinity),
    )


class Tuner:
    """Tunes the tasks of Relax modules into one JSON database, under a file lock.

    ``make_runner()`` gives what times the candidates (a LocalRunner, or an RPCRunner that
    reaches the device); it is called once, when the first task needs tuning. ``cc`` links
    candidates for a foreign architecture. The lock keeps two hwlat processes tuning into
    the same database from interleaving.
    """

    def __init__(
        self,
        directory: Path,
        target: dict,
        trials: int,
        make_runner: Callable[[], object] | None = None,
        cc: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.target = target
        self.trials = trials
        self.make_runner = make_runner
        self.cc = cc
        self._runner = None
        self._builder = None

    def tune(self, mod) -> TuneResult:
        """Tune the not-yet-tuned tasks of ``mod`` (after the zero pipeline). Raises TuningError."""
        from tvm.s_tir import meta_schedule as ms

        started = time.monotonic()
        target = tvm_target(self.target)
        tasks = [
            t
            for t in ms.relax_integration.extract_tasks(mod, target)
            if not t.mod.attrs.get("tirx.is_scheduled", False)
        ]
        result = TuneResult(tasks=len(tasks))
        with self.locked():
            db = self.database()
            todo = [t for t in tasks if not _is_tuned(db, t)]
            if todo:
                self._tune_tasks(todo, db)
                missing = [t.task_name for t in todo if not _is_tuned(db, t)]
                if missing:
                    raise TuningError(
                        f"MetaSchedule found no working schedule for {', '.join(missing)} in "
                        f"{self.trials} trials (every candidate failed to build or run); the builder "
                        f"and runner messages are in {self.directory / 'logs' / 'tuning.log'}"
                    )
        result.tuned = len(todo)
        result.seconds = time.monotonic() - started
        return result

    def database(self):
        from tvm.s_tir import meta_schedule as ms

        self.directory.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(work_dir=str(self.directory))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _tune_tasks(self, tasks: list, db) -> None:
        from tvm.s_tir import meta_schedule as ms

        if self.make_runner is None:
            raise TuningError("this Tuner only reads the database; it was given no runner")
        workers = os.cpu_count() or 1
        if self._runner is None:
            self._runner = self.make_runner()
            self._builder = ms.builder.LocalBuilder(
                max_workers=min(workers, self.trials),
                timeout_sec=BUILDER_TIMEOUT_S,
                f_build=build_candidate,
                f_export=partial(export_candidate, self.cc),
            )
        # MetaSchedule's default population (512) costs tens of seconds per task on a small
        # host; a budget of a few trials gains nothing from it.
        population = min(512, max(64, 8 * self.trials))
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population // 2)
        )
        logger = _tuning_logger(self.directory)
        seeds = ms.utils.fork_seed(SEED, n=len(tasks))
        contexts = [
            ms.TuneContext(
                mod=t.dispatched[0],
                target=t.target,
                space_generator="post-order-apply",
                search_strategy=strategy,
                task_name=t.task_name,
                logger=logger,
                rand_state=seed,
                num_threads=workers,
            ).clone()
            for t, seed in zip(tasks, seeds, strict=True)
        ]
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[t.weight for t in tasks],
            work_dir=str(self.directory),
            max_trials_global=self.trials * len(contexts),
            max_trials_per_task=self.trials,
            num_trials_per_iter=min(self.trials, 64),
            builder=self._builder,
            runner=self._runner,
            database=db,
            cost_model=_cost_model(),
            task_scheduler="round-robin",
        )


def _tuning_logger(directory: Path) -> logging.Logger:
    """MetaSchedule's per-trial messages go to ``<directory>/logs/tuning.log``, not to stdout
    (its own loggers add a stdout handler, which would spoil ``--json`` output)."""
    logger = logging.getLogger(f"hwlat.tuning.{directory}")
    if not logger.handlers:
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(directory / "logs" / "tuning.log")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def _is_tuned(db, task) -> bool:
    mod = task.dispatched[0]
    return db.has_workload(mod) and bool(db.get_top_k(db.commit_workload(mod), 1))


def _cost_model() -> str:
    """XGBoost guides the search when it is installed; otherwise candidates are drawn at random."""
    return "xgb" if importlib.util.find_spec("xgboost") else "random"
