"""Dragonfly (Kim et al.) of GPU servers with minimal or Valiant routing."""

from __future__ import annotations

import itertools

from helios.errors import ConfigError
from helios.topology.builder import GraphBuilder, check_integer, check_server_params
from helios.topology.cluster import Cluster, flow_hash


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
              nics_per_server: int = 1, nic_per_gpu: bool = False,
              nvlink_bandwidth: float = 450e9,
              nic_bandwidth: float = 50e9, local_bandwidth: float = 50e9,
              global_bandwidth: float = 50e9, nvlink_latency: float = 0.5e-6,
              link_latency: float = 1e-6, routing: str = "minimal", thin_servers: int = 0,
              thin_nics: int = 1, seed: int = 0) -> Cluster:
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
    gpus_per_server, nics_per_server, nic_per_gpu, nvlink_bandwidth, nic_bandwidth : see fat_tree.
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
    thin_servers, thin_nics : int
        Mixed server types, as in :func:`~helios.topology.fat_tree.fat_tree`.
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
    a, p, h = check_integer("a", a, 1), check_integer("p", p, 1), check_integer("h", h, 1)
    if g is None:
        g = a * h + 1
    g = check_integer("g", g, 2, f"an integer in [2, a*h+1 = {a * h + 1}]")
    if g > a * h + 1:
        raise ConfigError("topology.g", g, f"an integer in [2, a*h+1 = {a * h + 1}]")
    if routing not in ("minimal", "valiant"):
        raise ConfigError("topology.routing", routing, "one of minimal, valiant")
    check_server_params(params)
    gpus_per_server, seed = int(gpus_per_server), int(seed)

    net = GraphBuilder()
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
        return paths[flow_hash(len(paths), src, dst, seed)]

    def valiant(src: int, dst: int, ss: int, ds: int) -> tuple[int, ...]:
        rs, rd = ss // p, ds // p
        gs, gd = rs // a, rd // a
        if gs == gd or g < 3:
            return minimal(src, dst, ss, ds)
        mid = flow_hash(g - 2, src, dst, seed, salt=1)  # index among groups other than gs, gd
        for skipped in sorted((gs, gd)):
            mid += mid >= skipped
        cables = between[(gs, mid)]
        x, y = cables[flow_hash(len(cables), src, dst, seed, salt=2)]
        onward = minimal_candidates(y, rd)
        return via(rs, x, y, y) + onward[flow_hash(len(onward), src, dst, seed, salt=3)]

    route = minimal if routing == "minimal" else valiant
    return net.cluster("dragonfly", gpus_per_server, g * a * p, g * a, route)
