"""A user accuracy function for the shared-study test: slow enough to kill a worker mid-way, no CPU."""

import time


def accuracy(arch) -> float:
    time.sleep(0.4)
    return float(sum(arch))
