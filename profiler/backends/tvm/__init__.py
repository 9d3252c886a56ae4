"""TVM backends (``tvm`` tuned with MetaSchedule, ``tvm-untuned``): compile, tune, targets, RPC."""

from hwlat.profiler.backends.tvm.backend import DEFAULT_TUNE_TRIALS, TvmBackend, TvmUntunedBackend

__all__ = ["DEFAULT_TUNE_TRIALS", "TvmBackend", "TvmUntunedBackend"]
