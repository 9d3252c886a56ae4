"""hwlat: how long does this network take on that device, and how much memory does it need?

Subpackages, in the order data flows: ``hwlat.devices`` (where to measure),
``hwlat.profiler`` (measure ops and models into a store), ``hwlat.predictors`` (latency
models built from the store) and ``hwlat.search`` (hardware-aware search under budgets);
``hwlat.cli`` is the ``hwlat`` command.
"""

__version__ = "0.2.0"
