"""What ONNX Runtime's CPU arena holds once a model has run: a simulation of its allocator.

With its arena on (the default), ORT does not return a run's tensors to the system: it carves
them out of regions it keeps, a best-fit allocator with coalescing (BFC, as TensorFlow's). A
region is a power of two that doubles with each extension, so the first run's tensors land
in regions up to twice their live size. From the second run on, the memory pattern places
all of a run's planned tensors in one block, which the arena serves from its free space or
from a new region beside the first run's. Only the pages a tensor is written to become
resident, so what a process holds is the union of the pages those runs touched.

``arena_held_bytes`` replays one run node by node and one run with the memory pattern over
``execution_steps`` (``liveness_peak``'s steps), with ORT's defaults: 1 MB initial region,
256-byte rounding, a chunk split only when it is at least twice the request. It leaves out
what ORT allocates while loading: measured, what stays resident after loading is linear in
the weights (``benchmarks/RESULTS-memory.md``). Kernel scratch (``scratch`` tensors) is
allocated within its step in both runs and is never part of the pattern.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

MB = 1024 * 1024
INITIAL_REGION_BYTES = 1 * MB
MAX_DEAD_BYTES_PER_CHUNK = 128 * MB
ALIGNMENT = 256
PAGE_BYTES = 4096


def _rounded(n: int) -> int:
    return max(ALIGNMENT, -(-n // ALIGNMENT) * ALIGNMENT)


@dataclass
class _Chunk:
    offset: int
    size: int
    free: bool = True


@dataclass
class BfcArena:
    """Regions of chunks, best fit across all free chunks (smallest, then first), and the
    byte ranges written so far per region."""

    next_region_bytes: int = INITIAL_REGION_BYTES
    regions: list[list[_Chunk]] = field(default_factory=list)
    written: list[list[tuple[int, int]]] = field(default_factory=list)

    def allocate(self, n_bytes: int) -> tuple[int, int]:
        """A chunk of at least ``n_bytes``: (region, offset)."""
        rounded = _rounded(n_bytes)
        fits = [
            (chunk.size, r, i)
            for r, chunks in enumerate(self.regions)
            for i, chunk in enumerate(chunks)
            if chunk.free and chunk.size >= rounded
        ]
        if fits:
            _, r, i = min(fits)
        else:
            r, i = self._extend(rounded), 0
        chunk = self.regions[r][i]
        if chunk.size >= 2 * rounded or chunk.size - rounded >= MAX_DEAD_BYTES_PER_CHUNK:
            self.regions[r].insert(i + 1, _Chunk(chunk.offset + rounded, chunk.size - rounded))
            chunk.size = rounded
        chunk.free = False
        return r, chunk.offset

    def _extend(self, rounded: int) -> int:
        grown = False
        while rounded > self.next_region_bytes:
            self.next_region_bytes *= 2
            grown = True
        self.regions.append([_Chunk(0, self.next_region_bytes)])
        self.written.append([])
        if not grown:
            self.next_region_bytes *= 2
        return len(self.regions) - 1

    def release(self, handle: tuple[int, int]) -> None:
        r, offset = handle
        chunks = self.regions[r]
        i = next(i for i, c in enumerate(chunks) if c.offset == offset)
        chunks[i].free = True
        if i + 1 < len(chunks) and chunks[i + 1].free:
            chunks[i].size += chunks.pop(i + 1).size
        if i > 0 and chunks[i - 1].free:
            chunks[i - 1].size += chunks.pop(i).size

    def write(self, handle: tuple[int, int], start: int, n_bytes: int) -> None:
        r, offset = handle
        self.written[r].append((offset + start, offset + start + n_bytes))

    def resident_bytes(self) -> int:
        """Pages written at least once, over all regions."""
        total = 0
        for ranges in self.written:
            end = -1
            for a, b in sorted((a // PAGE_BYTES, -(-b // PAGE_BYTES)) for a, b in ranges):
                if b > end:
                    total += b - max(a, end)
                    end = b
        return total * PAGE_BYTES


def _events(
    steps: Sequence[tuple[str, Sequence[Hashable], Sequence[Hashable]]],
    size_bytes: dict[Hashable, int],
    inputs: Iterable[Hashable],
    outputs: Iterable[Hashable],
    scratch: Collection[Hashable],
) -> list[tuple[bool, Hashable, int]]:
    """(allocate?, tensor, bytes) in execution order: a step allocates its outputs, frees its
    scratch, then frees what it read last. Graph inputs are the caller's, not the arena's."""
    fed = set(inputs)
    last_read: dict[Hashable, int] = {t: i for i, (_, ins, _) in enumerate(steps) for t in ins}
    for t in outputs:
        last_read[t] = len(steps)
    live: set[Hashable] = set()
    events = []
    for i, (_, _, outs) in enumerate(steps):
        for t in outs:
            if t not in live and t not in fed and size_bytes.get(t, 0) > 0:
                live.add(t)
                events.append((True, t, size_bytes[t]))
        done = [t for t in live if t in scratch or last_read.get(t, -1) <= i]
        for t in sorted(done, key=str):
            live.discard(t)
            events.append((False, t, 0))
    events += [(False, t, 0) for t in sorted(live, key=str)]
    return events


def _pattern(events: list[tuple[bool, Hashable, int]], scratch: Collection[Hashable]) -> tuple[int, dict]:
    """ORT's memory pattern: each planned tensor at the smallest gap between those alive that
    holds it, else at the end. Returns the block's size and each tensor's offset."""
    placed: dict[Hashable, tuple[int, int]] = {}
    offsets: dict[Hashable, int] = {}
    block = 0
    for allocate, t, n in events:
        if t in scratch:
            continue
        if not allocate:
            placed.pop(t, None)
            continue
        n = _rounded(n)
        best, best_gap, end = None, None, 0
        for start, size in sorted(placed.values()):
            gap = start - end
            if gap >= n and (best_gap is None or gap < best_gap):
                best, best_gap = end, gap
            end = max(end, start + size)
        offset = end if best is None else best
        placed[t] = (offset, n)
        offsets[t] = offset
        block = max(block, offset + n)
    return block, offsets


def arena_held_bytes(
    steps: Sequence[tuple[str, Sequence[Hashable], Sequence[Hashable]]],
    size_bytes: dict[Hashable, int],
    inputs: Iterable[Hashable],
    outputs: Iterable[Hashable],
    scratch: Collection[Hashable] = (),
) -> int:
    """Bytes ORT's arena holds resident after a model's runs: the first run node by node, then
    a run with the memory pattern (every later run repeats it on the same chunks)."""
    events = _events(steps, size_bytes, list(inputs), list(outputs), scratch)
    arena = BfcArena()
    held: dict[Hashable, tuple[int, int]] = {}
    for allocate, t, n in events:
        if allocate:
            held[t] = arena.allocate(n)
            arena.write(held[t], 0, n)
        else:
            arena.release(held.pop(t))
    block_bytes, offsets = _pattern(events, scratch)
    block = arena.allocate(block_bytes) if block_bytes else None
    for allocate, t, n in events:
        if allocate and t in offsets:
            arena.write(block, offsets[t], n)
        elif allocate:
            held[t] = arena.allocate(n)
            arena.write(held[t], 0, n)
        elif t in held:
            arena.release(held.pop(t))
    return arena.resident_bytes()
