"""Cluster network graphs (k-ary Fat-Tree, Dragonfly) and the route of every GPU pair.

Model of a server: each GPU has an NVLink-class link, one per direction, to its
server's NVSwitch node ``nvs{s}``; the NVSwitch node reaches the server's access
switch (fat-tree edge switch or dragonfly router) through one link per direction
whose bandwidth is ``nics_per_server * nic_bandwidth`` (the NICs are bonded).
Intra-server traffic is gpu -> nvs -> gpu; inter-server traffic is
gpu -> nvs -> access switch -> ... -> access switch -> nvs -> gpu.

Every direction of every link is its own ``networkx.DiGraph`` edge with a link id.
A link's latency is the one-way time from entering the link until the node at its
far end has forwarded the data (propagation plus that node's traversal), so a
path's latency is the sum over its links: ``nvlink_latency`` on GPU<->NVSwitch
links and ``link_latency`` on every network link.

Routes are fixed per (src GPU, dst GPU, seed) pair, as flow-hashed ECMP does: where
several paths qualify, ``zlib.crc32`` of the pair and the seed picks one, so a route
is the same in every process (Python's ``hash()`` of strings is salted per process).
"""

from __future__ import annotations

import itertools
import math
import numbers
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from helios.errors import ConfigError

__all__ = ["Cluster", "fat_tree", "dragonfly", "build"]

#: ``(src_gpu, dst_gpu, src_server, dst_server) -> link ids`` between the two access switches.
SwitchRoute = Callable[[int, int, int, int], tuple[int, ...]]


def _pick(n: int, src: int, dst: int, seed: int, salt: int = 0) -> int:
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
        access = [next(n for n in self.graph.successors(f"nvs{s}") if nodes[n]["kind"] == "switch")
                  for s in range(self.num_servers)]
        # First two and last two links of every inter-server route, per GPU.
        self._up: list[tuple[int, int]] = []
        self._down: list[tuple[int, int]] = []
        for gpu in range(self.num_gpus):
            s = gpu // self.gpus_per_server
            gpu_node, nvs = f"gpu{gpu}", f"nvs{s}"
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
            path = (self._up[src][0], self._down[dst][1])
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


# --------------------------------------------------------------------------- validation
def _integer(key: str, value: Any, minimum: int, allowed: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"topology.{key}", value, allowed or f"an integer >= {minimum}")
    return int(value)


def _number(key: str, value: Any, positive: bool) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        allowed = "a finite number > 0 (bytes/s)" if positive else "a finite number >= 0 (s)"
        raise ConfigError(f"topology.{key}", value, allowed)
    return float(value)


def _check_common(params: dict[str, Any]) -> None:
    """Validate the server/link parameters every generator shares (keys as in the signature)."""
    _integer("gpus_per_server", params["gpus_per_server"], 1)
    _integer("nics_per_server", params["nics_per_server"], 1)
    _integer("seed", params["seed"], 0)
    for key, value in params.items():
        if key.endswith("_bandwidth"):
            _number(key, value, positive=True)
        elif key.endswith("_latency"):
            _number(key, value, positive=False)


# --------------------------------------------------------------------------- construction
class _Net:
    """Nodes and directed links accumulated while a generator runs."""

    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self.links: list[tuple[str, str]] = []
        self.bandwidth: list[float] = []
        self.latency: list[float] = []
        self.kind: list[str] = []
        self.link_id: dict[tuple[str, str], int] = {}

    def connect(self, u: str, v: str, bandwidth: float, latency: float, kind: str,
                **attrs: Any) -> None:
        """Add a bidirectional link as two directed links with the same figures."""
        bandwidth, latency = float(bandwidth), float(latency)
        for a, b in ((u, v), (v, u)):
            lid = len(self.links)
            self.link_id[(a, b)] = lid
            self.links.append((a, b))
            self.bandwidth.append(bandwidth)
            self.latency.append(latency)
            self.kind.append(kind)
            self.graph.add_edge(a, b, bandwidth=bandwidth, latency=latency, kind=kind, id=lid,
                                **attrs)

    def path(self, nodes: list[str]) -> tuple[int, ...]:
        return tuple(self.link_id[e] for e in zip(nodes, nodes[1:]))

    def add_servers(self, access: list[str], gps: int, p: dict[str, Any]) -> None:
        """Server ``s`` (GPUs ``s*gps .. s*gps+gps-1``) hangs off switch ``access[s]``."""
        for s, switch in enumerate(access):
            nvs = f"nvs{s}"
            self.graph.add_node(nvs, kind="nvswitch", server=s)
            for gpu in range(s * gps, (s + 1) * gps):
                self.graph.add_node(f"gpu{gpu}", kind="gpu", server=s)
                self.connect(f"gpu{gpu}", nvs, p["nvlink_bandwidth"], p["nvlink_latency"], "nvlink")
            self.connect(nvs, switch, int(p["nics_per_server"]) * p["nic_bandwidth"],
                         p["link_latency"], "nic")

    def cluster(self, name: str, gps: int, num_servers: int, num_switches: int,
                switch_route: SwitchRoute) -> Cluster:
        num_gpus = num_servers * gps
        return Cluster(name=name, graph=self.graph, num_gpus=num_gpus, gpus_per_server=gps,
                       num_servers=num_servers, num_switches=num_switches,
                       gpu_server=np.arange(num_gpus, dtype=np.int64) // gps,
                       links=self.links, link_bandwidth=np.asarray(self.bandwidth, dtype=float),
                       link_latency=np.asarray(self.latency, dtype=float), link_kind=self.kind,
                       switch_route=switch_route)


# --------------------------------------------------------------------------- fat-tree
def fat_tree(k: int, *, gpus_per_server: int = 4, nics_per_server: int = 1,
             nvlink_bandwidth: float = 450e9, nic_bandwidth: float = 50e9,
             fabric_bandwidth: float = 50e9, nvlink_latency: float = 0.5e-6,
             link_latency: float = 1e-6, seed: int = 0) -> Cluster:
    """k-ary Fat-Tree of GPU servers with flow-hashed ECMP routing.

    ``k`` pods, each with ``k/2`` edge switches ``edge{pod}_{i}`` and ``k/2``
    aggregation switches ``agg{pod}_{j}``; every edge switch links to every
    aggregation switch of its pod; ``(k/2)^2`` core switches ``core{j*k/2+m}``,
    core ``j*k/2+m`` linking to aggregation switch ``j`` of every pod; ``k/2``
    servers per edge switch.  Hence ``k^3/4`` servers and ``5k^2/4`` switches.

    Parameters
    ----------
    k : int
        Switch radix, an even integer >= 2 (k=2 is a degenerate two-server tree).
    gpus_per_server, nics_per_server : int
        Server shape; the server uplink is ``nics_per_server * nic_bandwidth``.
    nvlink_bandwidth, nic_bandwidth, fabric_bandwidth : float
        Per-direction bandwidths, bytes/s (H100 NVLink4 450e9; a 400 Gb/s NIC 50e9).
    nvlink_latency, link_latency : float
        Per-hop latency, s, of GPU<->NVSwitch links and of network links.
    seed : int
        Salt of the ECMP flow hash.

    Returns
    -------
    Cluster
        Routes take, per GPU pair, one of the shortest switch paths between the two
        edge switches (k/2 within a pod, (k/2)^2 across pods), chosen by crc32 of
        ``(src, dst, seed)``.

    References
    ----------
    M. Al-Fares, A. Loukissas, A. Vahdat, "A Scalable, Commodity Data Center Network
    Architecture", SIGCOMM 2008.  C. Hopps, "Analysis of an Equal-Cost Multi-Path
    Algorithm", RFC 2992, 2000 (hash-based ECMP).
    """
    params = dict(locals())
    k = _integer("k", k, 2, "an even integer >= 2")
    if k % 2:
        raise ConfigError("topology.k", k, "an even integer >= 2")
    _check_common(params)
    gpus_per_server, seed, half = int(gpus_per_server), int(seed), k // 2
    net = _Net()
    edges = [f"edge{pod}_{i}" for pod in range(k) for i in range(half)]
    aggs = [f"agg{pod}_{j}" for pod in range(k) for j in range(half)]
    cores = [f"core{c}" for c in range(half * half)]
    for level, names in (("edge", edges), ("agg", aggs), ("core", cores)):
        net.graph.add_nodes_from(names, kind="switch", level=level)
    for pod in range(k):
        for i, j in itertools.product(range(half), repeat=2):
            net.connect(edges[pod * half + i], aggs[pod * half + j], fabric_bandwidth,
                        link_latency, "fabric")
        for j, m in itertools.product(range(half), repeat=2):
            net.connect(aggs[pod * half + j], cores[j * half + m], fabric_bandwidth,
                        link_latency, "fabric")
    num_servers = k**3 // 4
    net.add_servers([edges[s // half] for s in range(num_servers)], gpus_per_server, params)

    candidates: dict[tuple[int, int], list[tuple[int, ...]]] = {}

    def shortest_paths(ea: int, eb: int) -> list[tuple[int, ...]]:
        """All shortest switch paths between global edge indices ``ea`` and ``eb``."""
        pa, pb = ea // half, eb // half
        if ea == eb:
            return [()]
        if pa == pb:
            return [net.path([edges[ea], aggs[pa * half + j], edges[eb]]) for j in range(half)]
        return [net.path([edges[ea], aggs[pa * half + j], cores[j * half + m],
                          aggs[pb * half + j], edges[eb]])
                for j, m in itertools.product(range(half), repeat=2)]

    def ecmp(src: int, dst: int, ss: int, ds: int) -> tuple[int, ...]:
        key = (ss // half, ds // half)
        paths = candidates.get(key)
        if paths is None:
            paths = candidates[key] = shortest_paths(*key)
        return paths[_pick(len(paths), src, dst, seed)]

    return net.cluster("fat_tree", gpus_per_server, num_servers, len(edges + aggs + cores), ecmp)


# --------------------------------------------------------------------------- dragonfly
def _global_cables(a: int, h: int, g: int) -> list[tuple[int, int, int, int]]:
    """Global cables ``(group, port, peer_group, peer_port)``, each listed once.

    Port ``k = r*h + j`` of a group is port ``j`` of its router ``r``.  Palm-tree
    arrangement: port ``k`` of group ``i`` goes to group ``(i - d_k) mod g`` where the
    offsets ``d_k`` run 1, 2, ..., g-1 and then repeat, round after round, for as many
    full rounds as the ``a*h`` ports allow; for ``g = a*h+1`` this is exactly one round,
    the palm-tree.  The ``r`` ports left for a last, partial round take the symmetric
    offsets 1, g-1, 2, g-2, ... (plus g/2 when ``r`` is odd and ``g`` even), so every
    pair of groups gets ``floor(a*h/(g-1))`` or one more cables, the pattern is the
    same in every group (circulant) and both ends of a cable agree.  When ``r`` is odd
    and ``g`` odd one port per group stays unused.
    """
    rounds, rest = divmod(a * h, g - 1)
    offsets, peers = [], []
    for rnd in range(rounds):
        base = rnd * (g - 1)
        offsets += range(1, g)
        peers += [base + g - 1 - d for d in range(1, g)]  # offset g-d sits at position g-d-1
    base = rounds * (g - 1)
    for d in range(1, rest // 2 + 1):
        offsets += [d, g - d]
        peers += [base + 2 * d - 1, base + 2 * d - 2]
    if rest % 2 and g % 2 == 0:
        offsets.append(g // 2)
        peers.append(len(peers))
    cables = []
    for group in range(g):
        for port, (d, peer) in enumerate(zip(offsets, peers)):
            peer_group = (group - d) % g
            if (group, port) < (peer_group, peer):
                cables.append((group, port, peer_group, peer))
    return cables


def dragonfly(a: int, p: int, h: int, g: int | None = None, *, gpus_per_server: int = 4,
              nics_per_server: int = 1, nvlink_bandwidth: float = 450e9,
              nic_bandwidth: float = 50e9, local_bandwidth: float = 50e9,
              global_bandwidth: float = 50e9, nvlink_latency: float = 0.5e-6,
              link_latency: float = 1e-6, routing: str = "minimal", seed: int = 0) -> Cluster:
    """Dragonfly of GPU servers with minimal or Valiant routing.

    ``g`` groups of ``a`` routers ``rtr{group}_{r}``, all-to-all inside a group
    (``local`` links); ``p`` servers per router (server index order: group, router,
    server); ``h`` global ports per router, cabled by :func:`_global_cables`.  Parallel
    cables between the same two routers (possible when ``g`` is small next to ``h``)
    form one ``global`` trunk link per direction with the summed bandwidth; every
    global edge carries the attribute ``cables``.

    Parameters
    ----------
    a, p, h : int
        Routers per group, servers per router, global ports per router (each >= 1).
    g : int, optional
        Groups, ``2 <= g <= a*h+1``; default ``a*h+1`` (one cable per group pair).
    gpus_per_server, nics_per_server, nvlink_bandwidth, nic_bandwidth : see fat_tree.
    local_bandwidth, global_bandwidth : float
        Per-direction bandwidth of one local link / one global cable, bytes/s.
    nvlink_latency, link_latency : float
        Per-hop latency, s.
    routing : {"minimal", "valiant"}
        ``minimal``: local hop to a router owning a cable to the destination group,
        the global hop, a local hop to the destination router (hops that are not
        needed are skipped); among the cables joining the two groups one is picked
        by crc32 of ``(src, dst, seed)``, weighted by cable, even where another
        cable would save a local hop (it spreads load like ECMP).  ``valiant``: inter-group traffic first
        goes minimally to an intermediate group (picked by crc32, neither source nor
        destination group) landing on the router at the end of the chosen cable,
        then minimally on to the destination; intra-group traffic and ``g = 2``
        (no intermediate group exists) route minimally.
    seed : int
        Salt of the flow hash.

    References
    ----------
    J. Kim, W. J. Dally, S. Scott, D. Abts, "Technology-Driven, Highly-Scalable
    Dragonfly Topology", ISCA 2008.  C. Camarero, E. Vallejo, R. Beivide, "Topological
    Characterization of Hamming and Dragonfly Networks and Its Implications on
    Routing", ACM TACO 11(4), 2014 (palm-tree arrangement).  L. G. Valiant, "A Scheme
    for Fast Parallel Communication", SIAM J. Computing 11(2), 1982.
    """
    params = dict(locals())
    a, p, h = _integer("a", a, 1), _integer("p", p, 1), _integer("h", h, 1)
    if g is None:
        g = a * h + 1
    g = _integer("g", g, 2, f"an integer in [2, a*h+1 = {a * h + 1}]")
    if g > a * h + 1:
        raise ConfigError("topology.g", g, f"an integer in [2, a*h+1 = {a * h + 1}]")
    if routing not in ("minimal", "valiant"):
        raise ConfigError("topology.routing", routing, "one of minimal, valiant")
    _check_common(params)
    gpus_per_server, seed = int(gpus_per_server), int(seed)

    net = _Net()
    routers = [f"rtr{grp}_{r}" for grp in range(g) for r in range(a)]
    for i, name in enumerate(routers):
        net.graph.add_node(name, kind="switch", group=i // a)
    for grp in range(g):
        for r1, r2 in itertools.combinations(range(a), 2):
            net.connect(routers[grp * a + r1], routers[grp * a + r2], local_bandwidth,
                        link_latency, "local")
    trunks: dict[tuple[int, int], int] = {}
    between: dict[tuple[int, int], list[tuple[int, int]]] = {}  # one entry per cable
    for grp, port, peer_grp, peer_port in _global_cables(a, h, g):
        x, y = grp * a + port // h, peer_grp * a + peer_port // h
        trunks[(x, y)] = trunks.get((x, y), 0) + 1
        between.setdefault((grp, peer_grp), []).append((x, y))
        between.setdefault((peer_grp, grp), []).append((y, x))
    for (x, y), n in trunks.items():
        net.connect(routers[x], routers[y], n * global_bandwidth, link_latency, "global", cables=n)
    net.add_servers([routers[s // p] for s in range(g * a * p)], gpus_per_server, params)

    def via(ra: int, x: int, y: int, rb: int) -> tuple[int, ...]:
        """ra -> x (local) -> y (global) -> rb (local), skipping hops not needed."""
        nodes = [routers[ra]] + ([routers[x]] if x != ra else []) + [routers[y]]
        return net.path(nodes + ([routers[rb]] if rb != y else []))

    minimal_paths: dict[tuple[int, int], list[tuple[int, ...]]] = {}

    def minimal_candidates(ra: int, rb: int) -> list[tuple[int, ...]]:
        paths = minimal_paths.get((ra, rb))
        if paths is None:
            ga, gb = ra // a, rb // a
            if ra == rb:
                paths = [()]
            elif ga == gb:
                paths = [net.path([routers[ra], routers[rb]])]
            else:
                paths = [via(ra, x, y, rb) for x, y in between[(ga, gb)]]
            minimal_paths[(ra, rb)] = paths
        return paths

    def minimal(src: int, dst: int, ss: int, ds: int) -> tuple[int, ...]:
        paths = minimal_candidates(ss // p, ds // p)
        return paths[_pick(len(paths), src, dst, seed)]

    def valiant(src: int, dst: int, ss: int, ds: int) -> tuple[int, ...]:
        rs, rd = ss // p, ds // p
        gs, gd = rs // a, rd // a
        if gs == gd or g < 3:
            return minimal(src, dst, ss, ds)
        mid = _pick(g - 2, src, dst, seed, salt=1)  # index among groups other than gs, gd
        for skipped in sorted((gs, gd)):
            mid += mid >= skipped
        cables = between[(gs, mid)]
        x, y = cables[_pick(len(cables), src, dst, seed, salt=2)]
        onward = minimal_candidates(y, rd)
        return via(rs, x, y, y) + onward[_pick(len(onward), src, dst, seed, salt=3)]

    route = minimal if routing == "minimal" else valiant
    return net.cluster("dragonfly", gpus_per_server, g * a * p, g * a, route)


# --------------------------------------------------------------------------- config
def build(topo: Any, seed: int = 0) -> Cluster:
    """Build the cluster a topology config (``helios.config.TopologyConfig``) describes.

    Converts the config's units (GB/s, Gb/s, us) to bytes/s and seconds.
    """
    common = dict(gpus_per_server=topo.gpus_per_server, nics_per_server=topo.nics_per_server,
                  nvlink_bandwidth=topo.nvlink_gbyte_s * 1e9,
                  nic_bandwidth=topo.nic_gbit_s * 1e9 / 8,
                  nvlink_latency=topo.nvlink_latency_us * 1e-6,
                  link_latency=topo.link_latency_us * 1e-6, seed=seed)
    if topo.name == "fat_tree":
        return fat_tree(topo.k, fabric_bandwidth=topo.fabric_gbit_s * 1e9 / 8, **common)
    if topo.name == "dragonfly":
        return dragonfly(topo.a, topo.p, topo.h, topo.g, routing=topo.routing,
                         local_bandwidth=topo.local_gbit_s * 1e9 / 8,
                         global_bandwidth=topo.global_gbit_s * 1e9 / 8, **common)
    raise ConfigError("topology.name", topo.name, "one of fat_tree, dragonfly")
