"""SearchSpace: decisions, architectures as tuples of option indices, and the lookup-table layout.

An architecture (``Arch``) is a tuple with one option index per decision, in canonical form:
choices that do not change the network (a block beyond its stage's depth, say) are 0 and
equivalent orderings are reduced to one, so equal networks are equal tuples.

A space is a list of *slots* (stem, blocks or stages, head). Each slot's kernels depend only
on a few decisions (its ``deps``; the resolution is always the first), and every slot's input
shape depends on the resolution alone. That gives the lookup-table layout: ``cells()`` lists
every distinct kernel group a slot can produce, and ``cell_indices(arch)`` picks one per
slot, so a table lookup is a gather and a sum (``ops(arch)`` is the concatenation of the
picked cells, as the same multiset).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwlat.errors import ConfigError, HwlatError
from hwlat.predictors.models.memory import Footprint
from hwlat.profiler.onnx_models import torch_to_onnx
from hwlat.profiler.opspec import OpSpec, unique
from hwlat.search.spaces.cell_sum import CellSum
from hwlat.search.spaces.graph import Net, Tensor

Arch = tuple[int, ...]


class InvalidArchError(HwlatError):
    """An architecture (tuple, vector or dict) that is not one of the space's networks."""


@dataclass(frozen=True)
class Decision:
    name: str
    options: tuple

    def index_of(self, value: Any) -> int:
        """The option index of ``value`` (its string form matches too: "224" finds 224)."""
        for i, option in enumerate(self.options):
            if value == option or str(value) == str(option):
                return i
        raise InvalidArchError(
            f"{value!r} is not an option of {self.name!r}; options: {', '.join(map(str, self.options))}"
        )


@dataclass(frozen=True)
class Slot:
    """One part of the network and the decisions its kernels depend on.

    ``build(net, x, values)`` appends the part's layers to ``net`` and returns its output;
    ``values`` are the chosen option values of ``deps`` (decision indices, resolution first).
    ``key(in_shape, out_shape, values)`` names the kernel group in the table (an OFA-style
    key), or is None when nothing runs (a skipped block; a group that turns out to have no
    kernels is the empty cell too). Equal keys must mean equal kernels.
    """

    name: str
    deps: tuple[int, ...]
    build: Callable[[Net, Tensor, tuple], Tensor]
    key: Callable[[tuple, tuple, tuple], str | None]


@dataclass
class _Layout:
    cells: list[tuple[OpSpec, ...]]
    keys: list[str]
    resolutions: list[frozenset[int]]
    tables: list[np.ndarray]  # per slot: option indices of its deps -> cell index


class SearchSpace:
    """Base class; a space sets ``name``, builds ``decisions`` (resolution first) and ``slots``."""

    name = ""

    def __init__(self, decisions: Sequence[Decision], slots: Sequence[Slot]) -> None:
        if not decisions or decisions[0].name != "resolution":
            raise ValueError("the first decision of a space must be 'resolution'")
        for slot in slots:
            if not slot.deps or slot.deps[0] != 0:
                raise ValueError(f"slot {slot.name!r}: deps must start with the resolution (0)")
        self.decisions = list(decisions)
        self.slots = list(slots)
        self.resolutions: tuple[int, ...] = tuple(decisions[0].options)
        sizes = [len(d.options) for d in self.decisions]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self._layout: _Layout | None = None

    # ----- hooks for subclasses -----------------------------------------------
    def active(self, arch: Sequence[int]) -> list[bool]:
        """Which decisions change the network for ``arch`` (default: all)."""
        return [True] * len(self.decisions)

    def _canonical(self, arch: list[int]) -> list[int]:
        """Inactive decisions become 0; spaces with equivalent orderings reduce those too."""
        return [v if on else 0 for v, on in zip(arch, self.active(arch), strict=True)]

    def size(self) -> int:
        """Number of distinct architectures (canonical tuples)."""
        raise NotImplementedError

    # ----- architectures ----------------------------------------------------
    def canonicalize(self, arch: Sequence[int]) -> Arch:
        return tuple(int(v) for v in self._canonical([int(v) for v in arch]))

    def validate(self, arch: Sequence[int]) -> None:
        if not isinstance(arch, (tuple, list, np.ndarray)) or len(arch) != len(self.decisions):
            raise InvalidArchError(
                f"{self.name}: an architecture is a tuple of {len(self.decisions)} "
                f"option indices, got {arch!r}"
            )
        for value, decision in zip(arch, self.decisions, strict=True):
            if not isinstance(value, (int, np.integer)) or not 0 <= value < len(decision.options):
                raise InvalidArchError(
                    f"{self.name}: {decision.name!r} has {len(decision.options)} "
                    f"options (0..{len(decision.options) - 1}), got {value!r}"
                )
        canonical = self.canonicalize(arch)
        if canonical != tuple(int(v) for v in arch):
            raise InvalidArchError(
                f"{self.name}: {tuple(arch)} is not canonical (same network as "
                f"{canonical}); pass it through space.canonicalize()"
            )

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.canonicalize([rng.integers(len(d.options)) for d in self.decisions])

    def mutate(self, arch: Sequence[int], rng: np.random.Generator, rate: float | None = None) -> Arch:
        """Re-draw each decision with probability ``rate`` (default 1/#decisions), at least one,
        until the network differs from ``arch``."""
        arch = tuple(int(v) for v in arch)
        mutable = [i for i, d in enumerate(self.decisions) if len(d.options) > 1]
        if not mutable:
            raise InvalidArchError(f"{self.name}: every decision has a single option; nothing to mutate")
        rate = 1.0 / len(mutable) if rate is None else rate
        while True:
            picked = [i for i in mutable if rng.random() < rate] or [mutable[rng.integers(len(mutable))]]
            child = list(arch)
            for i in picked:
                n = len(self.decisions[i].options)
                child[i] = (child[i] + 1 + int(rng.integers(n - 1))) % n
            child = self.canonicalize(child)
            if child != arch:
                return child

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.Generator) -> Arch:
        """Uniform crossover: each decision from either parent."""
        take_a = rng.random(len(self.decisions)) < 0.5
        return self.canonicalize(np.where(take_a, np.asarray(a), np.asarray(b)))

    def encode(self, arch: Sequence[int]) -> np.ndarray:
        """One-hot per decision, concatenated (length ``encoding_length``)."""
        vec = np.zeros(self.encoding_length, dtype=np.float32)
        vec[self._offsets[:-1] + np.asarray(arch, dtype=int)] = 1.0
        return vec

    @property
    def encoding_length(self) -> int:
        return int(self._offsets[-1])

    def decode(self, vec: Sequence[float]) -> Arch:
        """The highest entry of each decision's segment wins; the result is canonical."""
        vec = np.asarray(vec, dtype=float)
        if vec.shape != (self.encoding_length,):
            raise InvalidArchError(
                f"{self.name}: an encoding has {self.encoding_length} values, got shape {vec.shape}"
            )
        return self.canonicalize(
            [int(np.argmax(vec[lo:hi])) for lo, hi in zip(self._offsets[:-1], self._offsets[1:], strict=True)]
        )

    def to_dict(self, arch: Sequence[int]) -> dict:
        """The chosen option of every decision that matters, by decision name."""
        self.validate(arch)
        active = self.active(arch)
        return {d.name: d.options[i] for d, i, on in zip(self.decisions, arch, active, strict=True) if on}

    def from_dict(self, choices: dict) -> Arch:
        by_name = {d.name: i for i, d in enumerate(self.decisions)}
        unknown = sorted(set(choices) - set(by_name))
        if unknown:
            raise InvalidArchError(f"{self.name}: unknown decisions {unknown}; known: {', '.join(by_name)}")
        arch = [0] * len(self.decisions)
        for name, value in choices.items():
            arch[by_name[name]] = self.decisions[by_name[name]].index_of(value)
        canonical = self.canonicalize(arch)
        missing = [
            d.name
            for d, on in zip(self.decisions, self.active(canonical), strict=True)
            if on and d.name not in choices
        ]
        if missing:
            raise InvalidArchError(f"{self.name}: missing decisions {missing}")
        return canonical

    # ----- networks ---------------------------------------------------------
    def input_shape(self, arch: Sequence[int]) -> tuple[int, int, int, int]:
        r = self.resolutions[arch[0]]
        return (1, 3, r, r)

    def build_net(self, arch: Sequence[int]) -> Net:
        """The whole network as a ``Net``."""
        net = Net(self.input_shape(arch))
        x = net.input
        for slot in self.slots:
            x = slot.build(net, x, self._values(slot, arch))
        return net.finish(x)

    def footprint(self, arch: Sequence[int]) -> Footprint:
        """Weights and activation peak of the architecture (what memory predictions start from)."""
        return self.build_net(arch).footprint()

    def ops(self, arch: Sequence[int]) -> list[OpSpec]:
        """The kernels the network runs, after folding BN and activations into convs."""
        return self.build_net(arch).kernels()

    def to_torch(self, arch: Sequence[int], seed: int = 0):
        """An eval-mode ``torch.nn.Module`` with BatchNorm; weights are random but fixed by ``seed``."""
        import torch

        self.validate(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build_net(arch).to_torch()

    def to_onnx(self, arch: Sequence[int], seed: int = 0):
        """The network as ONNX (hwlat's one exporter, profiler/onnx_models): batch-norm is folded."""
        model = torch_to_onnx(self.to_torch(arch, seed), self.input_shape(arch))
        model.doc_string = f"hwlat {self.name} {tuple(int(v) for v in arch)}"
        return model

    def _values(self, slot: Slot, arch: Sequence[int]) -> tuple:
        return tuple(self.decisions[d].options[arch[d]] for d in slot.deps)

    # ----- lookup-table layout ------------------------------------------------
    def cells(self) -> list[tuple[OpSpec, ...]]:
        """Every distinct kernel group a slot can produce; ``cells()[0]`` is the empty group."""
        return self._get_layout().cells

    def cell_keys(self) -> list[str]:
        """The table key of each cell (OFA-style, e.g. ``expanded_conv-input:...``); "" for cell 0."""
        return self._get_layout().keys

    def cell_resolutions(self) -> list[frozenset[int]]:
        """The input resolutions whose networks can contain each cell."""
        return self._get_layout().resolutions

    def cell_sum(self, cell_values: np.ndarray) -> CellSum:
        """A compiled sum of ``cell_values`` (one per cell) over architectures' cells: what a
        latency predictor answers a search with."""
        return CellSum(
            self._get_layout().tables, [slot.deps for slot in self.slots], len(self.decisions), cell_values
        )

    def cell_indices(self, arch: Sequence[int]) -> np.ndarray:
        """One cell index per slot (length ``len(self.slots)`` for every architecture)."""
        tables = self._get_layout().tables
        return np.array(
            [tables[s][tuple(arch[d] for d in slot.deps)] for s, slot in enumerate(self.slots)],
            dtype=np.int64,
        )

    def cell_indices_batch(self, archs: Iterable[Sequence[int]]) -> np.ndarray:
        """``cell_indices`` for many architectures at once: shape (n, len(self.slots))."""
        a = np.asarray(archs if isinstance(archs, np.ndarray) else list(archs), dtype=np.int64).reshape(
            -1, len(self.decisions)
        )
        tables = self._get_layout().tables
        out = np.empty((a.shape[0], len(self.slots)), dtype=np.int64)
        for s, slot in enumerate(self.slots):
            out[:, s] = tables[s][tuple(a[:, d] for d in slot.deps)]
        return out

    def unique_ops(self, resolutions: Iterable[int] | None = None) -> Iterator[OpSpec]:
        """Every kernel the space can produce (for the given input resolutions, default all)."""
        wanted = set(self.resolutions if resolutions is None else resolutions)
        unknown = sorted(wanted - set(self.resolutions))
        if unknown:
            raise ConfigError(
                f"{self.name} has no resolution {unknown}; its resolutions: "
                f"{', '.join(map(str, self.resolutions))}"
            )
        layout = self._get_layout()
        return unique(
            op
            for cell, res in zip(layout.cells, layout.resolutions, strict=True)
            if res & wanted
            for op in cell
        )

    def _get_layout(self) -> _Layout:
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self) -> _Layout:
        layout = _Layout(cells=[()], keys=[""], resolutions=[frozenset(self.resolutions)], tables=[])
        index: dict[str, int] = {}
        shapes = {r: self._slot_shapes(ri) for ri, r in enumerate(self.resolutions)}
        for s, slot in enumerate(self.slots):
            dims = [len(self.decisions[d].options) for d in slot.deps]
            table = np.zeros(dims, dtype=np.int64)
            for idx in itertools.product(*map(range, dims)):
                values = tuple(self.decisions[d].options[i] for d, i in zip(slot.deps, idx, strict=True))
                in_shape, out_shape = shapes[values[0]][s]
                key = slot.key(in_shape, out_shape, values)
                if key is None:
                    continue
                if key not in index:
                    net = Net(in_shape)
                    net.finish(slot.build(net, net.input, values))
                    kernels = tuple(net.kernels())
                    index[key] = len(layout.cells) if kernels else 0  # e.g. an all-identity stage
                    if kernels:
                        layout.cells.append(kernels)
                        layout.keys.append(key)
                        layout.resolutions.append(frozenset())
                cell = index[key]
                layout.resolutions[cell] |= {values[0]}
                table[idx] = cell
            layout.tables.append(table)
        return layout

    def _slot_shapes(self, resolution_index: int) -> list[tuple[tuple, tuple]]:
        """(input, output) shape of every slot; they depend on the resolution only."""
        arch = self.canonicalize([resolution_index] + [0] * (len(self.decisions) - 1))
        net = Net(self.input_shape(arch))
        x = net.input
        shapes = []
        for slot in self.slots:
            y = slot.build(net, x, self._values(slot, arch))
            shapes.append((x.shape, y.shape))
            x = y
        return shapes


def hwc(shape: tuple[int, ...]) -> str:
    """NCHW -> the ``HxWxC`` form of OFA keys."""
    _, c, h, w = shape
    return f"{h}x{w}x{c}"


def ofa_key(kind: str, in_shape: tuple, out: tuple | int, **fields: int | str) -> str:
    """``kind-input:HxWxC-output:HxWxC[-name:value...]`` as in OFA's and ProxylessNAS's tables."""
    output = str(out) if isinstance(out, int) else hwc(out)
    parts = [kind, f"input:{hwc(in_shape)}", f"output:{output}"]
    parts += [f"{name}:{value}" for name, value in fields.items()]
    return "-".join(parts)
