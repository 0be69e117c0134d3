"""k-ary Fat-Tree (Al-Fares et al.) of GPU servers with flow-hashed ECMP."""

from __future__ import annotations

import itertools

from helios.errors import ConfigError
from helios.topology.builder import GraphBuilder, check_integer, check_server_params
from helios.topology.cluster import Cluster, flow_hash


def fat_tree(k: int, *, gpus_per_server: int = 4, nics_per_server: int = 1,
             nic_per_gpu: bool = False,
             nvlink_bandwidth: float = 450e9, nic_bandwidth: float = 50e9,
             fabric_bandwidth: float = 50e9, nvlink_latency: float = 0.5e-6,
             link_latency: float = 1e-6, oversubscription: float = 1.0, thin_servers: int = 0,
             thin_nics: int = 1, seed: int = 0) -> Cluster:
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
    nic_per_gpu : bool
        If true, every GPU has a NIC of its own (``nic_bandwidth``) to the edge switch,
        as in DGX/HGX H100 servers with GPUDirect RDMA, and ``nics_per_server`` is
        ignored; GPUs of one server still talk over the NVSwitch.
    nvlink_bandwidth, nic_bandwidth, fabric_bandwidth : float
        Per-direction bandwidths, bytes/s (H100 NVLink4 450e9; a 400 Gb/s NIC 50e9).
    nvlink_latency, link_latency : float
        Per-hop latency, s, of GPU<->NVSwitch links and of network links.
    oversubscription : float
        Taper at the spine: aggregation<->core links run at ``fabric_bandwidth /
        oversubscription`` (1: non-blocking; 2 or 4: a 2:1 or 4:1 tapered tree), so
        traffic between pods is slower than inside a pod.
    thin_servers, thin_nics : int
        Mixed server types: the last ``thin_servers`` servers have only ``thin_nics``
        NICs (:meth:`GraphBuilder.add_servers`).
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
    params.pop("oversubscription")
    k = check_integer("k", k, 2, "an even integer >= 2")
    if not oversubscription >= 1.0:
        raise ConfigError("topology.oversubscription", oversubscription,
                          "at least 1 (1: non-blocking; 2: a 2:1 taper at the spine)")
    if k % 2:
        raise ConfigError("topology.k", k, "an even integer >= 2")
    check_server_params(params)
    gpus_per_server, seed, half = int(gpus_per_server), int(seed), k // 2
    net = GraphBuilder()
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
            net.connect(aggs[pod * half + j], cores[j * half + m],
                        fabric_bandwidth / oversubscription, link_latency, "fabric")
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
        return paths[flow_hash(len(paths), src, dst, seed)]

    return net.cluster("fat_tree", gpus_per_server, num_servers, len(edges + aggs + cores), ecmp)
