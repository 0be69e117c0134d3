"""The :class:`Cluster`: a built network, its links and the route of every GPU pair.

Routes are fixed per (src GPU, dst GPU, seed) pair, as flow-hashed ECMP does: where
several paths qualify, ``zlib.crc32`` of the pair and the seed picks one, so a route
is the same in every process (Python's ``hash()`` of strings is salted per process).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.sparse as sp

#: ``(src_gpu, dst_gpu, src_server, dst_server) -> link ids`` between the two access switches.
SwitchRoute = Callable[[int, int, int, int], tuple[int, ...]]


def flow_hash(n: int, src: int, dst: int, seed: int, salt: int = 0) -> int:
    """Deterministic index in ``[0, n)`` for a GPU pair: a stable flow hash."""
    if n == 1:
        return 0
    return zlib.crc32(f"{salt}:{src}:{dst}:{seed}".encode()) % n


@dataclass(eq=False)
class Cluster:
    """A built cluster: graph, link table and memoised per-GPU-pair routes.

    Attributes
    ----------
    name : str
        ``"fat_tree"`` or ``"dragonfly"``.
    graph : networkx.DiGraph
        Nodes ``gpu{i}`` / ``nvs{s}`` (attrs ``kind``, ``server``) and switches (``kind``
        ``"switch"``); edge attrs ``bandwidth`` (bytes/s), ``latency`` (s), ``kind``, ``id``.
    num_gpus, gpus_per_server, num_servers : int
        GPU ``i`` sits in server ``i // gpus_per_server``.
    num_switches : int
        Network switches (fat-tree switches, dragonfly routers), not NVSwitches.
    gpu_server : numpy.ndarray
        Server index per GPU.
    links : list of (str, str)
        Directed edge of each link id; ``link_bandwidth``, ``link_latency`` (arrays)
        and ``link_kind`` (``nvlink``, ``nic``, ``fabric``, ``local``, ``global``)
        are indexed by the same id.
    switch_route : callable, optional
        ``(src_gpu, dst_gpu, src_server, dst_server) -> link ids`` between the two
        servers' access switches; set by the generators; if None, a networkx
        shortest path.
    """

    name: str
    graph: nx.DiGraph
    num_gpus: int
    gpus_per_server: int
    num_servers: int
    num_switches: int
    gpu_server: np.ndarray
    links: list[tuple[str, str]]
    link_bandwidth: np.ndarray
    link_latency: np.ndarray
    link_kind: list[str]
    switch_route: SwitchRoute | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._link_id = {edge: i for i, edge in enumerate(self.links)}
        nodes = self.graph.nodes
        def switch_of(node: str) -> str | None:
            return next((n for n in self.graph.successors(node) if nodes[n]["kind"] == "switch"),
                        None)

        # A server reaches the network through its NVSwitch (bonded NICs), or each GPU
        # through a NIC of its own (GPUDirect RDMA, one NIC per GPU).
        self.nic_per_gpu = switch_of(f"nvs{0}") is None
        access = [switch_of(f"gpu{s * self.gpus_per_server}" if self.nic_per_gpu else f"nvs{s}")
                  for s in range(self.num_servers)]
        # Links from a GPU to its access switch and back, and to / from its NVSwitch.
        self._up: list[tuple[int, ...]] = []
        self._down: list[tuple[int, ...]] = []
        self._nv_up: list[int] = []
        self._nv_down: list[int] = []
        for gpu in range(self.num_gpus):
            s = gpu // self.gpus_per_server
            gpu_node, nvs = f"gpu{gpu}", f"nvs{s}"
            self._nv_up.append(self._link_id[(gpu_node, nvs)])
            self._nv_down.append(self._link_id[(nvs, gpu_node)])
            if self.nic_per_gpu:
                self._up.append((self._link_id[(gpu_node, access[s])],))
                self._down.append((self._link_id[(access[s], gpu_node)],))
            else:
                self._up.append((self._link_id[(gpu_node, nvs)], self._link_id[(nvs, access[s])]))
                self._down.append((self._link_id[(access[s], nvs)], self._link_id[(nvs, gpu_node)]))
        self._access = access
        self._lat = self.link_latency.tolist()
        self._bw = self.link_bandwidth.tolist()
        self._routes: dict[tuple[int, int], tuple[int, ...]] = {}
        self._lat_bw: dict[tuple[int, int], tuple[float, float]] = {}
        self._incidence: sp.csr_matrix | None = None
        if self.switch_route is None:
            self.switch_route = self._shortest_switch_route

    def _shortest_switch_route(self, src: int, dst: int, ss: int, ds: int) -> tuple[int, ...]:
        # Fallback for hand-built clusters: one networkx shortest path, no ECMP.
        nodes = nx.shortest_path(self.graph, self._access[ss], self._access[ds])
        return tuple(self._link_id[e] for e in zip(nodes, nodes[1:]))

    @property
    def num_links(self) -> int:
        """Number of directed links."""
        return len(self.links)

    def server_of(self, gpu: int) -> int:
        """Server index of ``gpu``."""
        return int(gpu) // self.gpus_per_server

    def route(self, src_gpu: int, dst_gpu: int) -> tuple[int, ...]:
        """Link ids from ``src_gpu`` to ``dst_gpu`` in travel order; ``()`` if equal."""
        key = (src_gpu, dst_gpu)  # a tuple, so out-of-range pairs cannot alias valid ones
        found = self._routes.get(key)
        if found is not None:
            return found
        if not (0 <= src_gpu < self.num_gpus and 0 <= dst_gpu < self.num_gpus):
            raise IndexError(f"GPU pair ({src_gpu}, {dst_gpu}) outside 0..{self.num_gpus - 1}")
        src, dst = int(src_gpu), int(dst_gpu)
        ss, ds = src // self.gpus_per_server, dst // self.gpus_per_server
        if src == dst:
            path: tuple[int, ...] = ()
        elif ss == ds:
            path = (self._nv_up[src], self._nv_down[dst])
        else:
            path = self._up[src] + self.switch_route(src, dst, ss, ds) + self._down[dst]
        self._routes[key] = path
        return path

    def hops(self, src_gpu: int, dst_gpu: int) -> int:
        """Number of links on ``route(src_gpu, dst_gpu)``."""
        return len(self.route(src_gpu, dst_gpu))

    def path_latency(self, src_gpu: int, dst_gpu: int, nbytes: float) -> float:
        """Unloaded transfer time: sum of link latencies + ``nbytes`` / bottleneck bandwidth.

        This is the pipelined (cut-through) time of one message on an idle network;
        contention is the simulator's business.  0 for the same GPU.
        """
        if src_gpu == dst_gpu:
            return 0.0
        key = (src_gpu, dst_gpu)
        lat_bw = self._lat_bw.get(key)
        if lat_bw is None:
            path = self.route(src_gpu, dst_gpu)
            lat_bw = (sum(self._lat[i] for i in path), min(self._bw[i] for i in path))
            self._lat_bw[key] = lat_bw
        return lat_bw[0] + nbytes / lat_bw[1]

    def transfer_time(self, src_gpu: int, dst_gpu: int, nbytes: float, chunk: float) -> float:
        """Unloaded delivery time under the simulator's own link model (store and forward).

        The message is cut into chunks of at most ``chunk`` bytes; each hop serialises a
        whole chunk before forwarding it, so chunks pipeline across hops: the first
        chunk pays every hop's serialisation and latency, every later chunk one more
        serialisation at the slowest hop. This is exactly the delivery time
        :class:`helios.sim.network.Network` gives on an idle network (checked in the
        tests), unlike :meth:`path_latency`'s cut-through figure. 0 for the same GPU.
        """
        if src_gpu == dst_gpu or nbytes <= 0:
            return 0.0
        path = self.route(src_gpu, dst_gpu)
        full, rest = divmod(float(nbytes), float(chunk))
        sizes = [chunk] * int(full) + ([rest] if rest > 0 else [])
        # Event recursion of the FIFO model with every link idle at time 0.
        free = [0.0] * len(path)
        done = 0.0
        for size in sizes:
            t = 0.0
            for h, link in enumerate(path):
                begin = max(t, free[h])
                free[h] = begin + size / self._bw[link]
                t = free[h] + self._lat[link]
            done = t
        return done

    def incidence(self) -> sp.csr_matrix:
        """Route-link incidence, shape ``(num_gpus**2, num_links)``.

        Row ``src * num_gpus + dst`` holds 1.0 at each link of ``route(src, dst)``
        (link load = incidence.T @ pair traffic).  Built once (all G^2 routes), then
        a copy is returned so callers may modify it.
        """
        if self._incidence is None:
            n = self.num_gpus
            routes = [self.route(s, d) for s in range(n) for d in range(n)]
            indptr = np.zeros(n * n + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, routes), dtype=np.int64, count=n * n), out=indptr[1:])
            indices = np.fromiter(itertools.chain.from_iterable(routes), dtype=np.int64,
                                  count=int(indptr[-1]))
            inc = sp.csr_matrix((np.ones(indices.size), indices, indptr),
                                shape=(n * n, self.num_links))
            inc.sort_indices()
            self._incidence = inc
        return self._incidence.copy()
