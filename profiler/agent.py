"""The measuring agent: one self-contained file run with the device's own Python.

It needs only the standard library, numpy and the runtime being measured
(onnxruntime, or TVM's runtime). The host starts it (locally as a subprocess, or
over SSH), then talks to it with one JSON object per line on stdin/stdout:

  {"cmd": "hello"}                         -> {"type": "hello", versions and host facts}
  {"cmd": "configure", ...settings...}     -> {"type": "configured", "canary_ms": ...}
  {"cmd": "measure", "key": K, "model": P} -> {"type": "result", ...}
  {"cmd": "measure_model", "model": P}     -> {"type": "result", ... memory (memory_probe) ...}
  {"cmd": "profile_kernels", "model": P}   -> {"type": "result", ... per-node kernel times ...}
  {"cmd": "exit"}                          -> process ends

Anything that fails while measuring one op comes back as a result with
status "failed" and error_msg; only a crash of the process itself loses the op.
The timing protocol and the disturbance rule are documented in profiler/protocol.py.
"""

import bisect
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

ORT_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# Where a runtime's version is read without importing it (importing TVM imports torch when it
# is installed: seconds, and hundreds of MB on the baseline of every memory measurement).
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tvm": ("apache-tvm", "tvm")}


def _version(module_name):
    from importlib import metadata, util

    if util.find_spec(module_name) is None:
        return None
    for dist in _DISTRIBUTIONS.get(module_name, (module_name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # built from source: no distribution metadata
        return getattr(__import__(module_name), "__version__", "unknown")
    except Exception:
        return None


def host_facts():
    """OS, architecture, CPU model, cores and governor, read without extra packages."""
    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    governor = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as fh:
            governor = fh.read().strip()
    except OSError:
        pass
    return {
        "os": platform.platform(),
        "arch": platform.machine(),
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "governor": governor,
        "hostname": platform.node(),
        "int8_features": int8_features(),
        "mem_available_mb": mem_available_mb(),
    }


def mem_available_mb():
    """Memory the kernel says a new allocation can get without swapping (None off Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


# CPU features that decide how fast 8-bit kernels run: VNNI (AVX-512 or AVX) and AMX on x86
# (AVX2 alone: int8 saturates U8S8 and gains little), the dot-product and i8mm extensions on ARM.
_INT8_FLAGS = ("avx2", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def int8_features():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("flags", "features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in _INT8_FLAGS if f in flags]
    except OSError:
        pass
    return []


_ONNX_INTS = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8}


def _random_feeds(inputs):
    """Random inputs for (name, shape[, onnx type]): normal floats, or 8-bit integers."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape, *onnx_type in inputs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
        int_type = _ONNX_INTS.get(onnx_type[0]) if onnx_type else None
        if int_type is not None:
            info = np.iinfo(int_type)
            feeds[name] = rng.integers(info.min, info.max, dims, endpoint=True).astype(int_type)
        else:
            feeds[name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


class OrtRunner:
    """Runs one ONNX model with ONNX Runtime under fixed session options."""

    def __init__(self, model_path, settings):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings["threads"]
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, ORT_OPT_LEVELS[settings["graph_optimization"]]
        )
        opts.enable_cpu_mem_arena = settings["memory_arena"]
        opts.enable_mem_pattern = settings["memory_arena"]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if settings.get("profile"):
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"hwlat_prof_{os.getpid()}")
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        self.feeds = _random_feeds([(i.name, i.shape, i.type) for i in self.session.get_inputs()])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self):
        self.session.run(self.outputs, self.feeds)


class TvmRunner:
    """Runs a library built by profiler/backends/tvm/backend.py with TVM's Relax VM on the CPU.

    The library's ``hwlat_example_inputs()`` gives the inputs' shapes and dtypes. The random
    inputs are bound once with ``save_function``, so a call is the VM running ``main``, as a
    call of OrtRunner is ``session.run``; both are timed by the same ``time_runner``.
    """

    def __init__(self, model_path, settings):
        # TVM's thread pool reads these when it starts; configure has already set the affinity.
        os.environ["TVM_NUM_THREADS"] = str(settings["threads"])
        os.environ["TVM_BIND_THREADS"] = "0"
        import tvm
        from tvm.runtime.vm import VirtualMachine

        device = tvm.cpu()
        self.vm = VirtualMachine(tvm.runtime.load_module(model_path), device)
        examples = self.vm["hwlat_example_inputs"]()
        feeds = _random_feeds([(str(i), list(t.shape)) for i, t in enumerate(examples)])
        args = [
            tvm.runtime.tensor(feeds[str(i)].astype(str(t.dtype)), device) for i, t in enumerate(examples)
        ]
        self.vm.save_function("main", "hwlat_main", *args)
        self.main = self.vm["hwlat_main"]

    def __call__(self):
        self.main()


RUNNERS = {"ort": OrtRunner, "tvm": TvmRunner, "tvm-untuned": TvmRunner}


def time_runner(run, warmup_ms, warmup_runs, min_repeat_ms, repeat):
    """Per-call times (ms) of ``repeat`` repeats; each repeat lasts >= min_repeat_ms."""
    clock = time.perf_counter
    start = clock()
    runs = 0
    while runs < warmup_runs or (clock() - start) * 1e3 < warmup_ms:
        run()
        runs += 1
    per_call_ms = max((clock() - start) * 1e3 / runs, 1e-6)
    number = max(1, int(min_repeat_ms / per_call_ms + 0.999))
    samples = []
    while len(samples) < repeat:
        t0 = clock()
        for _ in range(number):
            run()
        elapsed_ms = (clock() - t0) * 1e3
        if elapsed_ms < min_repeat_ms * 0.5 and number < 1e7:
            number *= 2  # warm-up under-estimated the speed; grow the loop and retry
            continue
        samples.append(elapsed_ms / number)
    return samples, number


def _cv(samples):
    mean = statistics.fmean(samples)
    return statistics.pstdev(samples) / mean if mean > 0 else 0.0


class Agent:
    def __init__(self):
        self.settings = None
        self.protocol = None  # the host's TimingProtocol, sent with configure
        self.canary = None
        self.canary_reference_ms = None
        self.last_canary_ratio = None
        self.canary_history_ms = []

    # ----- commands -----------------------------------------------------------
    def hello(self, _msg):
        versions = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "onnxruntime": _version("onnxruntime"),
            "tvm": _version("tvm"),
        }
        return {"type": "hello", "pid": os.getpid(), "versions": versions, "host": host_facts()}

    def configure(self, msg):
        # Everything comes from the host (Device.settings() and TimingProtocol): no defaults here.
        settings = {
            "backend": msg["backend"],
            "threads": int(msg["threads"]),
            "cpu_affinity": msg["cpu_affinity"],
            "graph_optimization": msg["graph_optimization"],
            "memory_arena": bool(msg["memory_arena"]),
        }
        if settings["backend"] not in RUNNERS:
            raise ValueError(f"backend {settings['backend']!r} is not available in this agent")
        self.settings = self._apply_settings(settings)
        self.protocol = dict(msg["protocol"])
        self.canary = None
        canary_ms = []
        if msg.get("canary_model"):
            self.canary = self._runner(msg["canary_model"])
            canary_ms = [self._time_canary() for _ in range(int(msg.get("canary_calibration", 5)))]
            ref = msg.get("canary_reference_ms")
            self.canary_reference_ms = min([*canary_ms, ref] if ref else canary_ms)
            self.last_canary_ratio = min(canary_ms) / self.canary_reference_ms
        return {
            "type": "configured",
            "settings": settings,
            "canary_ms": canary_ms,
            "canary_reference_ms": self.canary_reference_ms,
        }

    def measure(self, msg):
        started = time.perf_counter()
        p = self.protocol
        runner = self._runner(msg["model"])
        attempts = []
        for attempt in range(int(p["max_retries"]) + 1):
            if attempt:
                time.sleep(p["retry_backoff_s"] * 2 ** (attempt - 1))
            samples, number = self._time(
                runner, p["warmup_ms"], p["warmup_runs"], p["min_repeat_ms"], p["repeat"]
            )
            reasons = []
            ratio = None
            if self.canary is not None:
                after = self._time_canary() / self.canary_reference_ms
                ratio = max(after, self.last_canary_ratio)
                self.last_canary_ratio = after
                if ratio > 1 + p["canary_tolerance"]:
                    reasons.append(f"canary ran {ratio:.2f}x its quiet time")
            cv = _cv(samples)
            if cv > p["max_cv"]:
                reasons.append(f"repeats spread too wide (cv {cv:.1%} > {p['max_cv']:.0%})")
            attempts.append(
                {"samples_ms": samples, "number": number, "canary_ratio": ratio, "reasons": reasons}
            )
            if not reasons:
                break
        best = (
            attempts[-1]
            if not attempts[-1]["reasons"]
            else min(attempts, key=lambda a: statistics.median(a["samples_ms"]))
        )
        if p["cooldown_ms"]:
            time.sleep(p["cooldown_ms"] / 1e3)
        return {
            "type": "result",
            "key": msg.get("key"),
            "status": "ok",
            "samples_ms": best["samples_ms"],
            "number": best["number"],
            "canary_ratio": best["canary_ratio"],
            "disturbed": bool(best["reasons"]),
            "reasons": best["reasons"],
            "attempts": len(attempts),
            "canary_reference_ms": self.canary_reference_ms,
            "wall_s": time.perf_counter() - started,
        }

    def measure_model(self, msg):
        """``measure`` plus the model's resident memory, read in a process of its own
        (``memory_probe``) so that nothing this agent holds or has freed is counted."""
        memory = self._probe_memory(msg["model"])
        result = self.measure(msg)
        result.update(memory)
        return result

    def _probe_memory(self, model_path):
        """``memory_probe``'s figures, or ``memory_error`` (timing goes on without memory)."""
        import subprocess

        request = json.dumps({"model": model_path, "settings": self.settings})
        try:
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--memory-probe"],
                input=request,
                capture_output=True,
                text=True,
                env={**os.environ, **ALLOCATOR_HELD_STILL},
                timeout=float(self.protocol["op_timeout_s"]) * 2,  # the host allows 5x for the whole
            )
        except subprocess.TimeoutExpired:
            return {"memory_error": "the memory probe did not finish in time"}
        if done.returncode != 0 or not done.stdout.strip():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {"memory_error": f"the memory probe failed: {tail}"}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def profile_kernels(self, msg):
        """Per-node kernel times from ONNX Runtime's profiler, bracketed by the canary.

        Statistics are per *run*, not per repeat: samples_ms are interquartile means of the
        unit's kernel time (``unit_kernel_times``) over ``repeat`` groups of runs, and the canary
        is judged by the interquartile mean of single runs. On a shared machine contention comes
        in bursts of a few ms; a repeat's mean absorbs them, the middle half of the runs does not.
        Runs longer than INTERLEAVE_MS span bursts, so one canary call is timed between runs and
        only runs with a quiet canary on both sides count: within canary_tolerance of the fastest
        of those calls (a canary call right after a long kernel finds its caches cold, so it is
        judged against its own kind; the bracket judges the machine against the reference).
        e2e_samples_ms are the same groups' whole-run times (with the profiler on).
        """
        if self.settings["backend"] != "ort":
            raise ValueError("profile_kernels needs the ort backend (it reads ONNX Runtime's profiler)")
        started = time.perf_counter()
        p = self.protocol
        attempts = []
        for attempt in range(int(p["max_retries"]) + 1):
            if attempt:
                time.sleep(p["retry_backoff_s"] * 2 ** (attempt - 1))
            before = self._canary_run_ratio()
            runner = OrtRunner(msg["model"], {**self.settings, "profile": True})
            clock = time.perf_counter
            t0, warm = clock(), 0
            while warm < p["warmup_runs"] or (clock() - t0) * 1e3 < p["warmup_ms"]:
                runner()
                warm += 1
            per_call_ms = (clock() - t0) * 1e3 / warm
            runs = int(min(5000, max(30, p["min_repeat_ms"] * p["repeat"] / max(per_call_ms, 1e-3))))
            interleave = self.canary is not None and per_call_ms >= INTERLEAVE_MS
            canary_ms = []
            for _ in range(runs):
                if interleave:
                    canary_ms.append(_time_call(self.canary))
                runner()
            if interleave:
                canary_ms.append(_time_call(self.canary))
            path = runner.session.end_profiling()
            try:
                with open(path) as fh:
                    events = json.load(fh)
            finally:
                os.remove(path)
            inputs = [list(i.shape) for i in runner.session.get_inputs()]
            outputs = [list(o.shape) for o in runner.session.get_outputs()]
            unit_ms, run_ms, nodes = unit_kernel_times(events, inputs, outputs)
            ratio = max(before, self._canary_run_ratio())
            groups = max(1, min(int(p["repeat"]), runs))
            size = runs // groups
            unit_ms, run_ms = unit_ms[-runs:], run_ms[-runs:]
            reasons = []
            if interleave:
                limit = (1 + p["canary_tolerance"]) * min(canary_ms)
                quiet = [i for i in range(runs) if max(canary_ms[i], canary_ms[i + 1]) <= limit]
                if len(quiet) < max(5, runs // 4):
                    reasons.append(f"only {len(quiet)} of {runs} runs had a quiet canary on both sides")
                else:
                    unit_ms = [unit_ms[i] for i in quiet]
                    run_ms = [run_ms[i] for i in quiet]
                    groups = max(1, min(int(p["repeat"]), len(quiet)))
                    size = len(quiet) // groups
            samples = [_interquartile_mean(unit_ms[i * size : (i + 1) * size]) for i in range(groups)]
            e2e = [_interquartile_mean(run_ms[i * size : (i + 1) * size]) for i in range(groups)]
            if ratio > 1 + p["canary_tolerance"]:
                reasons.append(f"canary runs took {ratio:.2f}x their quiet time")
            if _cv(samples) > p["max_cv"]:
                reasons.append(f"groups of runs spread too wide (cv {_cv(samples):.1%} > {p['max_cv']:.0%})")
            attempts.append(
                {
                    "samples_ms": samples,
                    "e2e_samples_ms": e2e,
                    "number": size,
                    "canary_ratio": ratio,
                    "reasons": reasons,
                    "kernel_nodes": nodes,
                }
            )
            if not reasons:
                break
        best = (
            attempts[-1]
            if not attempts[-1]["reasons"]
            else min(attempts, key=lambda a: statistics.median(a["samples_ms"]))
        )
        return {
            "type": "result",
            "key": msg.get("key"),
            "status": "ok",
            **best,
            "disturbed": bool(best["reasons"]),
            "attempts": len(attempts),
            "canary_reference_ms": self.canary_reference_ms,
            "profiled_runs": runs,
            "wall_s": time.perf_counter() - started,
        }

    def _canary_run_ratio(self):
        """The canary's interquartile mean over single runs, relative to its reference (1 if none)."""
        if self.canary is None:
            return 1.0
        p = self.protocol
        times, t_end = [], time.perf_counter() + p["canary_min_repeat_ms"] * p["canary_repeat"] / 1e3
        while time.perf_counter() < t_end or len(times) < 5:
            t = time.perf_counter()
            self.canary()
            times.append((time.perf_counter() - t) * 1e3)
        return _interquartile_mean(times) / self.canary_reference_ms

    # ----- helpers (what profiler/backends/tvm/tracker.py overrides to measure over TVM's RPC) -----
    def _apply_settings(self, settings):
        """Pin this process to the CPUs asked for; the settings as they now are."""
        if settings["cpu_affinity"]:
            os.sched_setaffinity(0, set(settings["cpu_affinity"]))
        settings["cpu_affinity"] = sorted(os.sched_getaffinity(0))
        return settings

    def _runner(self, model_path):
        if self.settings is None:
            raise RuntimeError("the agent was not configured; send a configure command first")
        return RUNNERS[self.settings["backend"]](model_path, self.settings)

    def _time(self, run, warmup_ms, warmup_runs, min_repeat_ms, repeat):
        """Per-call times (ms) of ``repeat`` repeats and the calls per repeat (``time_runner``)."""
        return time_runner(run, warmup_ms, warmup_runs, min_repeat_ms, repeat)

    def _time_canary(self):
        p = self.protocol
        samples, _ = self._time(self.canary, 5.0, 1, p["canary_min_repeat_ms"], p["canary_repeat"])
        ms = statistics.median(samples)
        if self.canary_reference_ms is not None and ms < self.canary_reference_ms:
            self.canary_reference_ms = ms
        self.canary_history_ms.append(ms)
        return ms


INTERLEAVE_MS = 0.5


def _time_call(run):
    t = time.perf_counter()
    run()
    return (time.perf_counter() - t) * 1e3


def _interquartile_mean(values):
    """Mean of the middle half: robust to runs the OS preempted, and it still averages away
    the profiler's whole-microsecond resolution (a median would not)."""
    ordered = sorted(values)
    cut = len(ordered) // 4
    return statistics.fmean(ordered[cut : len(ordered) - cut] or ordered)


# The contract with the harness models (profiler/backends/ort/harness.py, which imports it):
# nodes whose names start with this are the harness around a kernel, not the kernel.
HARNESS_PREFIX = "hwlat_ctx"
_REORDERS = ("ReorderInput", "ReorderOutput")


def _is_layout(event):
    """A layout change ONNX Runtime inserted: NCHWc reorders (float32), or the unnamed NCHW<->NHWC
    Transposes around its 8-bit convs (a Transpose of the network itself keeps its node name)."""
    op = event["args"].get("op_name")
    return op in _REORDERS or (op == "Transpose" and event["name"].startswith("Transpose"))


def _event_shapes(event, key):
    return [list(v for v in item.values())[0] for item in event["args"].get(key, [])]


def unit_kernel_times(events, input_shapes, output_shapes):
    """Per-run kernel time (ms) of the unit a harness model measures, per-run total time, and the
    unit's nodes with their interquartile-mean times.

    Nodes named ``hwlat_ctx*`` are the harness (producers and consumers around the unit) and
    do not count; nor do the layout changes at the graph boundary: a reorder or transpose of a
    graph input before the unit's first node, of a graph output after its last. Every other
    node, layout changes between harness and unit included, is the unit's cost in context.
    A model without harness nodes counts every node.
    """
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    node_events = sorted(
        (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    per_run = [[] for _ in runs]
    starts = [r[0] for r in runs]
    for e in node_events:
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i >= 0 and e["ts"] <= runs[i][1]:
            per_run[i].append(e)
    totals, run_ms, node_times, node_info = [], [], {}, {}
    for i, seq in enumerate(per_run):
        if not seq:
            continue
        run_ms.append((runs[i][1] - runs[i][0]) / 1e3)
        core = [
            j for j, e in enumerate(seq) if not e["name"].startswith(HARNESS_PREFIX) and not _is_layout(e)
        ]
        first, last = (core[0], core[-1]) if core else (len(seq), -1)
        total = 0.0
        for j, e in enumerate(seq):
            op = e["args"].get("op_name")
            if e["name"].startswith(HARNESS_PREFIX):
                continue
            if (
                _is_layout(e)
                and op != "ReorderOutput"
                and j < first
                and _event_shapes(e, "input_type_shape")[:1]
                and _event_shapes(e, "input_type_shape")[0] in input_shapes
            ):
                continue
            if (
                _is_layout(e)
                and op != "ReorderInput"
                and j > last
                and _event_shapes(e, "output_type_shape")[:1]
                and _event_shapes(e, "output_type_shape")[0] in output_shapes
            ):
                continue
            total += e["dur"] / 1e3
            name = e["name"][: -len("_kernel_time")]
            node_times.setdefault(name, []).append(e["dur"] / 1e3)
            node_info[name] = (op, _event_shapes(e, "output_type_shape"))
        totals.append(total)
    nodes = [
        {
            "name": k,
            "op": node_info[k][0],
            "output_shapes": node_info[k][1],
            "mean_ms": _interquartile_mean(v),
        }
        for k, v in node_times.items()
    ]
    return totals, run_ms, nodes


# glibc returns a freed block of 64 KiB or more to the kernel at once. By default that threshold
# rises after the first large free, and the copies ORT makes while it loads a model (weights
# reordered for the NCHWc layout) then stay resident as heap nobody uses: a figure set by the
# allocator's history, not by the model (ResNet-18: 149 MB resident after loading, 55 MB
# after ``malloc_trim``).
ALLOCATOR_HELD_STILL = {"MALLOC_MMAP_THRESHOLD_": "65536"}
MEMORY_PROBE_RUNS = 5  # resident memory stops growing after 2-3 runs with the allocator held still


def memory_probe(model_path, settings):
    """A model's resident memory in a fresh process, by phase (MB, absolute).

    ``baseline_rss_mb`` is read once the runtime is imported; ``load_peak_rss_mb`` is the
    high-water mark while the session loads and ``loaded_rss_mb`` what stays resident after;
    the mark is then reset, and ``peak_rss_mb`` is the highest it reaches over
    ``MEMORY_PROBE_RUNS`` runs: the memory the model holds while it serves.
    """
    __import__("onnxruntime" if settings["backend"] == "ort" else "tvm")  # the runtime is baseline
    baseline_kb = _status_kb("VmRSS")
    _reset_peak_rss()
    runner = RUNNERS[settings["backend"]](model_path, settings)
    load_peak_kb, loaded_kb = _status_kb("VmHWM"), _status_kb("VmRSS")
    _reset_peak_rss()
    for _ in range(MEMORY_PROBE_RUNS):
        runner()
    return {
        "baseline_rss_mb": baseline_kb / 1024,
        "load_peak_rss_mb": load_peak_kb / 1024,
        "loaded_rss_mb": loaded_kb / 1024,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
    }


def _status_kb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in kB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
    except OSError:
        pass


def main():
    if sys.argv[1:] == ["--memory-probe"]:
        request = json.loads(sys.stdin.read())
        _send(memory_probe(request["model"], request["settings"]))
        return
    agent = Agent()
    handlers = {
        "hello": agent.hello,
        "configure": agent.configure,
        "measure": agent.measure,
        "measure_model": agent.measure_model,
        "profile_kernels": agent.profile_kernels,
    }
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        handler = handlers.get(msg.get("cmd"))
        try:
            if handler is None:
                raise ValueError(f"unknown command {msg.get('cmd')!r}")
            reply = handler(msg)
        except Exception as exc:
            reply = {
                "type": "result" if msg.get("cmd", "").startswith(("measure", "profile")) else "error",
                "key": msg.get("key"),
                "status": "failed",
                "error_msg": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5),
            }
        _send(reply)


if __name__ == "__main__":
    main()
