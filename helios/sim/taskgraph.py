"""A step's task graph as it is built (:class:`TaskGraph`), and the arrays the kernel reads.

:func:`helios.sim.kernel.run_graph` runs a graph from the arrays of
:meth:`TaskGraph.arrays`: its tasks in id order and every task's successors in the
order their edges were added (:func:`successors`). :func:`count_chunk_hops` totals what
a graph's messages put on the network, for the benchmarks and the conservation tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from helios.sim.kernel import COMPUTE, MESSAGE, _njit


@dataclass
class TaskGraph:
    """A step's tasks being built: append tasks, then edges, then :meth:`arrays`.

    Task ids are assigned in insertion order. ``start`` defaults to 0 (start as soon
    as the predecessors are done).
    """

    def __post_init__(self) -> None:
        self._kind: list[np.ndarray] = []
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._value: list[np.ndarray] = []
        self._start: list[np.ndarray] = []
        self._edges_from: list[np.ndarray] = []
        self._edges_to: list[np.ndarray] = []
        self.size = 0

    def add(self, kind: int, a, b, value, start=0.0) -> np.ndarray:
        """Append tasks (arrays broadcast together); returns their ids."""
        parts = [np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64),
                 np.asarray(value, dtype=float), np.asarray(start, dtype=float)]
        shapes = {p.shape for p in parts if p.ndim}
        if len(shapes) > 1:
            parts = np.broadcast_arrays(*parts)
            shape = parts[0].shape
        else:  # a step adds ~40 task arrays per layer: skip broadcast_arrays' overhead
            shape = shapes.pop() if shapes else ()
        count = math.prod(shape)  # np.prod of a tuple costs ~5 us, a sixth of this call
        flat = [p.ravel() if p.ndim else np.full(count, p, dtype=p.dtype) for p in parts]
        ids = np.arange(self.size, self.size + count, dtype=np.int64).reshape(shape)
        self._kind.append(np.full(count, kind, dtype=np.int8))
        self._a.append(flat[0])
        self._b.append(flat[1])
        self._value.append(flat[2])
        self._start.append(flat[3])
        self.size += count
        return ids

    def compute(self, gpu, seconds, start=0.0) -> np.ndarray:
        """Compute tasks on ``gpu`` lasting ``seconds``; returns their ids."""
        return self.add(COMPUTE, gpu, 0, seconds, start)

    def message(self, src, dst, nbytes, start=0.0) -> np.ndarray:
        """Messages of ``nbytes`` from ``src`` to ``dst``; returns their ids."""
        return self.add(MESSAGE, src, dst, nbytes, start)

    def edges(self, before, after) -> None:
        """Task ``after[i]`` waits for task ``before[i]`` (arrays broadcast together)."""
        before, after = np.asarray(before, dtype=np.int64), np.asarray(after, dtype=np.int64)
        if before.shape != after.shape:
            before, after = np.broadcast_arrays(before, after)
        self._edges_from.append(before.ravel())
        self._edges_to.append(after.ravel())

    def arrays(self) -> tuple[np.ndarray, ...]:
        """``kind, a, b, value, start, deps, succ_ptr, succ_idx`` for :func:`run_graph`."""
        cat = lambda parts, dtype: (np.concatenate(parts).astype(dtype, copy=False)  # noqa: E731
                                    if parts else np.zeros(0, dtype=dtype))
        kind = cat(self._kind, np.int8)
        deps, succ_ptr, succ = successors(cat(self._edges_from, np.int64),
                                          cat(self._edges_to, np.int64), self.size)
        return (kind, cat(self._a, np.int64), cat(self._b, np.int64), cat(self._value, float),
                cat(self._start, float), deps, succ_ptr, succ)


@_njit
def successors(src: np.ndarray, dst: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Edges ``src[i] -> dst[i]`` among ``size`` tasks as ``(deps, succ_ptr, succ)``: the
    predecessor count of every task, and the successors of task ``t`` in
    ``succ[succ_ptr[t]:succ_ptr[t + 1]]`` in the order their edges were added (a counting
    sort: the stable ``argsort`` of ``src`` in one pass)."""
    deps = np.zeros(size, np.int64)
    succ_ptr = np.zeros(size + 1, np.int64)
    for e in range(src.size):
        succ_ptr[src[e] + 1] += 1
        deps[dst[e]] += 1
    for t in range(size):
        succ_ptr[t + 1] += succ_ptr[t]
    fill = succ_ptr[:-1].copy()
    succ = np.empty(src.size, np.int64)
    for e in range(src.size):
        succ[fill[src[e]]] = dst[e]
        fill[src[e]] += 1
    return deps, succ_ptr, succ


@_njit
def count_chunk_hops(kind: np.ndarray, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray,
                     route_len: np.ndarray, chunk: float) -> tuple[int, float]:
    """``(chunk-hops, bytes x hops)`` of a graph's messages that cross the network (to
    another GPU, with bytes): chunks of at most ``chunk`` bytes times the hops of their
    route. Tokens times token bytes are whole numbers, so the byte total is exact in any
    order."""
    hops_total, byte_hops = 0, 0.0
    for x in range(kind.size):
        if kind[x] == MESSAGE and nbytes[x] > 0 and src[x] != dst[x]:
            hops = route_len[src[x], dst[x]]
            hops_total += int(math.ceil(nbytes[x] / chunk)) * hops
            byte_hops += nbytes[x] * hops
    return hops_total, byte_hops
