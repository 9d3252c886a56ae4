"""Search spaces: ``get_space(name, **kwargs)`` and the ``SPACES`` registry.

Spaces are immutable once built, so ``get_space`` hands out one shared instance per name and
configuration; its lookup-table layout (``cells()``) is then built once per process.
"""

from __future__ import annotations

from hwlat.errors import HwlatError
from hwlat.search.spaces.base import Arch, Decision, InvalidArchError, SearchSpace, Slot
from hwlat.search.spaces.fbnet import FbnetSpace
from hwlat.search.spaces.nb201 import Nb201Space
from hwlat.search.spaces.ofa_mbv3 import OfaMbv3Space
from hwlat.search.spaces.proxyless import ProxylessSpace

SPACES: dict[str, type[SearchSpace]] = {
    "proxyless": ProxylessSpace,
    "ofa_mbv3": OfaMbv3Space,
    "nb201": Nb201Space,
    "fbnet": FbnetSpace,
}

__all__ = [
    "Arch",
    "Decision",
    "InvalidArchError",
    "SearchSpace",
    "Slot",
    "SPACES",
    "UnknownSpaceError",
    "get_space",
]

_instances: dict[tuple, SearchSpace] = {}


class UnknownSpaceError(HwlatError):
    """A search-space name that hwlat does not know."""


def get_space(name: str, **kwargs) -> SearchSpace:
    """The space ``name`` (e.g. ``get_space("ofa_mbv3", resolutions=(224,))``)."""
    if name not in SPACES:
        raise UnknownSpaceError(f"unknown search space {name!r}; known spaces: {', '.join(SPACES)}")
    key = (name, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))
    if key not in _instances:
        _instances[key] = SPACES[name](**kwargs)
    return _instances[key]
