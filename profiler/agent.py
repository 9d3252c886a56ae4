"""The measuring agent: one self-contained file run with the device's own Python.

It needs only the standard library, numpy and the runtime being measured
(onnxruntime, or TVM's runtime). The host starts it (locally as a subprocess, or
over SSH), then talks to it with one JSON object per line on stdin/stdout:

  {"cmd": "hello"}                         -> {"type": "hello", versions and host facts}
  {"cmd": "configure", ...settings...}     -> {"type": "configured", "canary_ms": ...}
  {"cmd": "measure", "key": K, "model": P} -> {"type": "result", ...}
  {"cmd": "measure_model", "model": P}     -> {"type": "result", ... memory ...}
  {"cmd": "exit"}                          -> process ends

Anything that fails while measuring one op comes back as a result with
status "failed" and error_msg; only a crash of the process itself loses the op.
The timing protocol and the disturbance rule are documented in profiler/protocol.py.
"""

import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

import numpy as np

PROTOCOL_DEFAULTS = {
    "warmup_ms": 30.0, "warmup_runs": 3, "min_repeat_ms": 20.0, "repeat": 9, "cooldown_ms": 0.0,
    "max_cv": 0.10, "canary_tolerance": 0.10, "canary_repeat": 3, "canary_min_repeat_ms": 10.0,
    "max_retries": 3, "retry_backoff_s": 0.5,
}
ORT_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                  "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _version(module_name):
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "unknown")
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
    return {"os": platform.platform(), "arch": platform.machine(), "cpu_model": cpu_model,
            "cores": os.cpu_count(), "governor": governor, "hostname": platform.node()}


def _random_feeds(inputs):
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape in inputs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
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
            ort.GraphOptimizationLevel, ORT_OPT_LEVELS[settings.get("graph_optimization", "all")])
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        self.feeds = _random_feeds([(i.name, i.shape) for i in self.session.get_inputs()])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self):
        self.session.run(self.outputs, self.feeds)


RUNNERS = {"ort": OrtRunner}


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
        self.protocol = dict(PROTOCOL_DEFAULTS)
        self.canary = None
        self.canary_reference_ms = None
        self.last_canary_ratio = None
        self.canary_history_ms = []

    # ----- commands -----------------------------------------------------------
    def hello(self, _msg):
        versions = {"python": platform.python_version(), "numpy": np.__version__,
                    "onnxruntime": _version("onnxruntime"), "tvm": _version("tvm")}
        return {"type": "hello", "pid": os.getpid(), "versions": versions, "host": host_facts()}

    def configure(self, msg):
        settings = {"backend": msg.get("backend", "ort"), "threads": int(msg.get("threads", 1)),
                    "cpu_affinity": msg.get("cpu_affinity"),
                    "graph_optimization": msg.get("graph_optimization", "all")}
        if settings["backend"] not in RUNNERS:
            raise ValueError(f"backend {settings['backend']!r} is not available in this agent")
        if settings["cpu_affinity"]:
            os.sched_setaffinity(0, set(settings["cpu_affinity"]))
        settings["cpu_affinity"] = sorted(os.sched_getaffinity(0))
        self.settings = settings
        self.protocol.update(msg.get("protocol", {}))
        self.canary = None
        canary_ms = []
        if msg.get("canary_model"):
            self.canary = RUNNERS[settings["backend"]](msg["canary_model"], settings)
            canary_ms = [self._time_canary() for _ in range(int(msg.get("canary_calibration", 5)))]
            ref = msg.get("canary_reference_ms")
            self.canary_reference_ms = min([*canary_ms, ref] if ref else canary_ms)
            self.last_canary_ratio = min(canary_ms) / self.canary_reference_ms
        return {"type": "configured", "settings": settings, "canary_ms": canary_ms,
                "canary_reference_ms": self.canary_reference_ms}

    def measure(self, msg):
        started = time.perf_counter()
        p = self.protocol
        runner = self._runner(msg["model"])
        attempts = []
        for attempt in range(int(p["max_retries"]) + 1):
            if attempt:
                time.sleep(p["retry_backoff_s"] * 2 ** (attempt - 1))
            samples, number = time_runner(runner, p["warmup_ms"], p["warmup_runs"],
                                          p["min_repeat_ms"], p["repeat"])
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
            attempts.append({"samples_ms": samples, "number": number, "canary_ratio": ratio,
                             "reasons": reasons})
            if not reasons:
                break
        best = attempts[-1] if not attempts[-1]["reasons"] else min(
            attempts, key=lambda a: statistics.median(a["samples_ms"]))
        if p["cooldown_ms"]:
            time.sleep(p["cooldown_ms"] / 1e3)
        return {"type": "result", "key": msg.get("key"), "status": "ok",
                "samples_ms": best["samples_ms"], "number": best["number"],
                "canary_ratio": best["canary_ratio"], "disturbed": bool(best["reasons"]),
                "reasons": best["reasons"], "attempts": len(attempts),
                "canary_reference_ms": self.canary_reference_ms,
                "wall_s": time.perf_counter() - started}

    def measure_model(self, msg):
        baseline_kb = _current_rss_kb()
        result = self.measure(msg)
        result["baseline_rss_mb"] = baseline_kb / 1024
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result

    # ----- helpers ------------------------------------------------------------
    def _runner(self, model_path):
        if self.settings is None:
            raise RuntimeError("the agent was not configured; send a configure command first")
        return RUNNERS[self.settings["backend"]](model_path, self.settings)

    def _time_canary(self):
        p = self.protocol
        samples, _ = time_runner(self.canary, 5.0, 1, p["canary_min_repeat_ms"], p["canary_repeat"])
        ms = statistics.median(samples)
        if self.canary_reference_ms is not None and ms < self.canary_reference_ms:
            self.canary_reference_ms = ms
        self.canary_history_ms.append(ms)
        return ms


def _current_rss_kb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main():
    agent = Agent()
    handlers = {"hello": agent.hello, "configure": agent.configure, "measure": agent.measure,
                "measure_model": agent.measure_model}
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
            reply = {"type": "result" if msg.get("cmd", "").startswith("measure") else "error",
                     "key": msg.get("key"), "status": "failed",
                     "error_msg": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=5)}
        _send(reply)


if __name__ == "__main__":
    main()
