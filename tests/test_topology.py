"""Tests of helios.topology: structure, routing and validation of the cluster graphs."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

import networkx as nx
import numpy as np
import pytest

from helios.errors import ConfigError
from helios.topology import Cluster, build, dragonfly, fat_tree


def all_pairs(cluster: Cluster):
    return itertools.product(range(cluster.num_gpus), repeat=2)


def kinds_on(cluster: Cluster, route: tuple[int, ...]) -> Counter:
    return Counter(cluster.link_kind[i] for i in route)


def assert_walk(cluster: Cluster, src: int, dst: int) -> list[str]:
    """The route is a simple directed walk gpu{src} -> gpu{dst}; returns its nodes."""
    route = cluster.route(src, dst)
    if src == dst:
        assert route == ()
        return [f"gpu{src}"]
    edges = [cluster.links[i] for i in route]
    assert edges[0][0] == f"gpu{src}" and edges[-1][1] == f"gpu{dst}"
    for (_, v), (u, _) in zip(edges, edges[1:]):
        assert v == u
    for lid, (u, v) in zip(route, edges):
        assert cluster.graph.edges[u, v]["id"] == lid
    nodes = [edges[0][0]] + [v for _, v in edges]
    assert len(set(nodes)) == len(nodes)
    return nodes


def global_cables(cluster: Cluster) -> tuple[Counter, Counter]:
    """Cables per unordered group pair and per router, from the global edges."""
    groups, routers = Counter(), Counter()
    for u, v, data in cluster.graph.edges(data=True):
        if data["kind"] == "global":
            gu, gv = cluster.graph.nodes[u]["group"], cluster.graph.nodes[v]["group"]
            assert gu != gv
            if gu < gv:
                groups[(gu, gv)] += data["cables"]
            routers[u] += data["cables"]
    return groups, routers


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("k", [2, 4, 6, 8])
@pytest.mark.parametrize("gps", [1, 4])
def test_fat_tree_counts(k, gps):
    c = fat_tree(k, gpus_per_server=gps)
    servers = k**3 // 4
    assert (c.num_servers, c.num_switches, c.num_gpus) == (servers, 5 * k * k // 4, servers * gps)
    kinds = Counter(d["kind"] for _, d in c.graph.nodes(data=True))
    assert kinds == {"gpu": servers * gps, "nvswitch": servers, "switch": 5 * k * k // 4}
    # undirected: GPU-NVSwitch, server uplink, edge-agg (k^3/4), agg-core (k^3/4)
    assert c.num_links == 2 * (servers * gps + servers + k**3 // 2)
    assert c.graph.number_of_edges() == c.num_links == len(c.link_bandwidth) == len(c.link_kind)
    assert Counter(c.link_kind) == {"nvlink": 2 * servers * gps, "nic": 2 * servers,
                                    "fabric": k**3}
    for lid, (u, v) in enumerate(c.links):
        assert c.graph.edges[u, v]["id"] == lid
        assert c.graph.has_edge(v, u)
    np.testing.assert_array_equal(c.gpu_server, np.arange(c.num_gpus) // gps)
    assert c.server_of(c.num_gpus - 1) == servers - 1


def test_fat_tree_core_wiring():
    c = fat_tree(4)
    for core in range(4):  # core j*2+m reaches aggregation switch j of every pod
        aggs = sorted(c.graph.successors(f"core{core}"))
        assert aggs == sorted(f"agg{pod}_{core // 2}" for pod in range(4))


@pytest.mark.parametrize("a,p,h", [(1, 1, 1), (2, 1, 1), (2, 2, 2), (4, 2, 2), (3, 1, 2)])
def test_dragonfly_default_g_counts(a, p, h):
    c = dragonfly(a, p, h, gpus_per_server=2)
    g = a * h + 1
    assert (c.num_switches, c.num_servers, c.num_gpus) == (a * g, a * p * g, 2 * a * p * g)
    assert sum(1 for _, d in c.graph.nodes(data=True) if d["kind"] == "switch") == a * g
    groups, routers = global_cables(c)
    assert groups == {pair: 1 for pair in itertools.combinations(range(g), 2)}
    assert all(routers[f"rtr{grp}_{r}"] == h for grp in range(g) for r in range(a))
    assert c.graph.number_of_edges() == c.num_links


def test_dragonfly_fewer_groups_spreads_cables():
    for a, h in itertools.product(range(1, 5), repeat=2):
        for g in range(2, a * h + 2):
            c = dragonfly(a, 1, h, g, gpus_per_server=1)
            groups, routers = global_cables(c)
            counts = [groups[pair] for pair in itertools.combinations(range(g), 2)]
            base = (a * h) // (g - 1)
            assert min(counts) >= 1 and set(counts) <= {base, base + 1}, (a, h, g)
            assert max(routers.values()) <= h
            for grp in range(g):  # at most one idle global port per group
                used = sum(routers[f"rtr{grp}_{r}"] for r in range(a))
                assert used >= a * h - 1
            assert (c.num_switches, c.num_servers) == (a * g, a * g)


def test_parallel_cables_form_one_trunk():
    c = dragonfly(1, 1, 3, 2, global_bandwidth=10e9)  # 3 cables, both ends on one router
    assert c.graph.edges["rtr0_0", "rtr1_0"]["cables"] == 3
    assert c.graph.edges["rtr0_0", "rtr1_0"]["bandwidth"] == 30e9
    assert c.link_kind.count("global") == 2


@pytest.mark.parametrize("a,g", [(1, 2), (3, 4), (5, 11)])
def test_dragonfly_groups_are_complete(a, g):
    c = dragonfly(a, 1, 2, g)
    local = nx.DiGraph([(u, v) for u, v, d in c.graph.edges(data=True) if d["kind"] == "local"])
    for grp in range(g):
        names = [f"rtr{grp}_{r}" for r in range(a)]
        sub = local.subgraph(names)
        assert sub.number_of_edges() == a * (a - 1)
        assert all(sub.has_edge(u, v) for u, v in itertools.permutations(names, 2))
    assert local.number_of_edges() == g * a * (a - 1)


# --------------------------------------------------------------------------- routing
@pytest.mark.parametrize("k,gps", [(2, 2), (4, 2)])
def test_fat_tree_routes_are_shortest(k, gps):
    c = fat_tree(k, gpus_per_server=gps)
    lengths = dict(nx.all_pairs_shortest_path_length(c.graph))
    for src, dst in all_pairs(c):
        assert_walk(c, src, dst)
        assert c.hops(src, dst) == lengths[f"gpu{src}"][f"gpu{dst}"]


def test_ecmp_uses_every_shortest_switch_path():
    c = fat_tree(4, gpus_per_server=8)  # 16 GPUs per edge switch: 256 pairs, 4 paths
    for dst_edge, servers in [("edge3_1", range(14, 16)), ("edge0_1", range(2, 4))]:
        used = set()
        dst_gpus = [gpu for s in servers for gpu in range(8 * s, 8 * s + 8)]
        for src, dst in itertools.product(range(16), dst_gpus):
            nodes = assert_walk(c, src, dst)
            used.add(tuple(n for n in nodes if not n.startswith(("gpu", "nvs"))))
        expected = {tuple(p) for p in nx.all_shortest_paths(c.graph, "edge0_0", dst_edge)}
        assert used == expected


def test_route_shapes_inside_server_and_edge():
    c = fat_tree(4, gpus_per_server=4)
    assert kinds_on(c, c.route(0, 3)) == {"nvlink": 2}
    assert kinds_on(c, c.route(0, 4)) == {"nvlink": 2, "nic": 2}  # same edge switch
    assert kinds_on(c, c.route(0, 63)) == {"nvlink": 2, "nic": 2, "fabric": 4}


@pytest.mark.parametrize("a,p,h,g", [(2, 2, 1, None), (2, 1, 2, None), (3, 1, 2, 4), (2, 1, 2, 2)])
def test_dragonfly_minimal_routes(a, p, h, g):
    c = dragonfly(a, p, h, g, gpus_per_server=2)
    for src, dst in all_pairs(c):
        nodes = assert_walk(c, src, dst)
        kinds = kinds_on(c, c.route(src, dst))
        assert kinds["global"] <= 1 and kinds["local"] <= 2
        groups = {c.graph.nodes[n]["group"] for n in nodes if n.startswith("rtr")}
        same_group = (src // 2 // p) // a == (dst // 2 // p) // a
        assert kinds["global"] == (0 if same_group else 1)
        assert len(groups) == (1 if same_group else 2) or c.server_of(src) == c.server_of(dst)


@pytest.mark.parametrize("a,p,h,g", [(2, 1, 1, None), (2, 1, 2, None), (2, 1, 2, 4)])
def test_dragonfly_valiant_routes(a, p, h, g):
    c = dragonfly(a, p, h, g, routing="valiant")
    minimal = dragonfly(a, p, h, g, routing="minimal")
    mids = set()
    for src, dst in all_pairs(c):
        nodes = assert_walk(c, src, dst)
        kinds = kinds_on(c, c.route(src, dst))
        group = [c.graph.nodes[n]["group"] for n in nodes if n.startswith("rtr")]
        if group and group[0] != group[-1]:
            assert kinds["global"] == 2 and kinds["local"] <= 3
            (mid,) = set(group) - {group[0], group[-1]}
            mids.add(mid)
        else:
            assert c.route(src, dst) == minimal.route(src, dst)
    assert len(mids) == (g or a * h + 1)  # every group serves as an intermediate


def test_valiant_with_two_groups_is_minimal():
    c = dragonfly(2, 1, 2, 2, routing="valiant")
    m = dragonfly(2, 1, 2, 2)
    assert all(c.route(s, d) == m.route(s, d) for s, d in all_pairs(c))


def test_ecmp_is_deterministic_and_spreads():
    first, again, other = fat_tree(4), fat_tree(4), fat_tree(4, seed=1)
    pairs = list(all_pairs(first))
    assert [first.route(s, d) for s, d in pairs] == [again.route(s, d) for s, d in pairs]
    assert any(first.route(s, d) != other.route(s, d) for s, d in pairs)
    cores = Counter(v for s, d in pairs for i in first.route(s, d)
                    for _, v in [first.links[i]] if v.startswith("core"))
    assert len(cores) == 4
    assert max(cores.values()) < 2 * min(cores.values())  # roughly even spreading
    assert first.route(5, 60) is first.route(5, 60)  # memoised


def test_dragonfly_spreads_over_parallel_cables():
    c = dragonfly(2, 2, 2, 2, gpus_per_server=1)  # 4 cables between the two groups
    used = {next(i for i in c.route(s, d) if c.link_kind[i] == "global")
            for s in range(4) for d in range(4, 8)}
    assert len(used) > 1


def test_path_latency_by_hand():
    c = fat_tree(4, gpus_per_server=2, nics_per_server=2)
    # gpu0 (pod 0) to gpu31 (pod 3): 2 NVLink hops + 6 network hops; bottleneck is the
    # 50 GB/s fabric, not the bonded 100 GB/s uplink or the 450 GB/s NVLink.
    assert c.hops(0, 31) == 8
    assert c.path_latency(0, 31, 1e6) == pytest.approx(2 * 0.5e-6 + 6 * 1e-6 + 1e6 / 50e9)
    assert c.path_latency(0, 1, 9e6) == pytest.approx(2 * 0.5e-6 + 9e6 / 450e9)
    assert c.path_latency(0, 2, 1e6) == pytest.approx(2 * 0.5e-6 + 2 * 1e-6 + 1e6 / 100e9)
    assert c.path_latency(3, 3, 1e9) == 0.0
    route = c.route(0, 31)
    assert c.path_latency(0, 31, 0.0) == pytest.approx(sum(c.link_latency[list(route)]))


@pytest.mark.parametrize("make", [lambda: fat_tree(4, gpus_per_server=2),
                                  lambda: dragonfly(2, 1, 2, 4, routing="valiant")])
def test_incidence_matches_routes(make):
    c = make()
    inc = c.incidence()
    assert inc.shape == (c.num_gpus**2, c.num_links)
    for src, dst in all_pairs(c):
        row = inc.getrow(src * c.num_gpus + dst)
        assert sorted(row.indices) == sorted(c.route(src, dst))
        assert np.all(row.data == 1.0)
    inc.data[:] = 5.0  # a copy: the cached matrix stays intact
    assert np.all(c.incidence().data == 1.0)


def test_fallback_shortest_routing_when_no_switch_route():
    c = fat_tree(4, gpus_per_server=1)
    plain = Cluster(c.name, c.graph, c.num_gpus, c.gpus_per_server, c.num_servers,
                    c.num_switches, c.gpu_server, c.links, c.link_bandwidth, c.link_latency,
                    c.link_kind)
    for src, dst in [(0, 1), (0, 2), (0, 15), (7, 8)]:
        assert_walk(plain, src, dst)
        assert plain.hops(src, dst) == c.hops(src, dst)


def test_route_rejects_unknown_gpu():
    c = fat_tree(2, gpus_per_server=1)
    with pytest.raises(IndexError):
        c.route(0, 2)
    with pytest.raises(IndexError):
        c.route(1, -1)


def test_k8_all_routes_fast():
    start = time.perf_counter()
    c = fat_tree(8)
    inc = c.incidence()  # every one of the 512^2 routes
    assert inc.shape[0] == 512**2 and time.perf_counter() - start < 10.0
    start = time.perf_counter()
    for dst in range(512):
        c.route(7, dst)
    assert time.perf_counter() - start < 0.05


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("call,key,value", [
    (lambda: fat_tree(3), "topology.k", 3),
    (lambda: fat_tree(0), "topology.k", 0),
    (lambda: fat_tree(4.0), "topology.k", 4.0),
    (lambda: fat_tree(True), "topology.k", True),
    (lambda: fat_tree(4, nic_bandwidth=-1.0), "topology.nic_bandwidth", -1.0),
    (lambda: fat_tree(4, fabric_bandwidth=0), "topology.fabric_bandwidth", 0),
    (lambda: fat_tree(4, nvlink_bandwidth=math.inf), "topology.nvlink_bandwidth", math.inf),
    (lambda: fat_tree(4, link_latency=-1e-6), "topology.link_latency", -1e-6),
    (lambda: fat_tree(4, gpus_per_server=0), "topology.gpus_per_server", 0),
    (lambda: fat_tree(4, nics_per_server=0), "topology.nics_per_server", 0),
    (lambda: fat_tree(4, seed=-1), "topology.seed", -1),
    (lambda: fat_tree(2, thin_servers=3), "topology.thin_servers", 3),
    (lambda: fat_tree(2, nics_per_server=2, thin_servers=1, thin_nics=2), "topology.thin_nics", 2),
    (lambda: dragonfly(2, 2, 2, gpus_per_server=4, nic_per_gpu=True, thin_servers=1, thin_nics=4),
     "topology.thin_nics", 4),
    (lambda: fat_tree(2, thin_servers=-1), "topology.thin_servers", -1),
    (lambda: dragonfly(2, 2, 2, 6), "topology.g", 6),
    (lambda: dragonfly(2, 2, 2, 1), "topology.g", 1),
    (lambda: dragonfly(0, 2, 2), "topology.a", 0),
    (lambda: dragonfly(2, 0, 2), "topology.p", 0),
    (lambda: dragonfly(2, 2, 0), "topology.h", 0),
    (lambda: dragonfly(2, 2, 2, routing="ugal"), "topology.routing", "ugal"),
    (lambda: dragonfly(2, 2, 2, global_bandwidth=-5), "topology.global_bandwidth", -5),
    (lambda: dragonfly(2, 2, 2, nvlink_latency=float("nan")), "topology.nvlink_latency", None),
])
def test_bad_parameters_name_the_key(call, key, value):
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.key == key
    if value is not None:
        assert info.value.value == value and type(info.value.value) is type(value)
    assert info.value.allowed


def test_build_from_config_units():
    config = pytest.importorskip("helios.config")
    c = build(config.FatTreeConfig(k=2, nics_per_server=2), seed=3)
    assert c.name == "fat_tree" and c.num_servers == 2
    bw = {kind: c.link_bandwidth[[i for i, k in enumerate(c.link_kind) if k == kind]]
          for kind in ("nvlink", "nic", "fabric")}
    assert np.allclose(bw["nvlink"], 450e9) and np.allclose(bw["nic"], 100e9)
    assert np.allclose(bw["fabric"], 50e9)
    d = build(config.DragonflyConfig(a=2, p=1, h=1, routing="valiant"))
    assert d.name == "dragonfly" and d.num_switches == 6
    assert kinds_on(d, d.route(0, d.num_gpus - 1))["global"] == 2


def test_oversubscription_tapers_only_the_spine():
    flat, tapered = fat_tree(4), fat_tree(4, oversubscription=4.0)
    for edge, bw_flat, bw_tapered in zip(flat.links, flat.link_bandwidth, tapered.link_bandwidth):
        spine = edge[0].startswith(("agg", "core")) and edge[1].startswith(("agg", "core"))
        assert bw_tapered == pytest.approx(bw_flat / 4 if spine else bw_flat)
    # across pods a message now crosses a 4x slower link; inside a pod nothing changes
    nbytes = 1e6
    assert tapered.path_latency(0, 60, nbytes) > 3 * flat.path_latency(0, 60, nbytes)  # GPU 60: pod 3
    assert tapered.path_latency(0, 12, nbytes) == flat.path_latency(0, 12, nbytes)  # pod 0


def test_oversubscription_below_one_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        fat_tree(4, oversubscription=0.5)
    assert err.value.key == "topology.oversubscription"


# --------------------------------------------------------------------------- mixed servers
def test_thin_servers_have_fewer_nics_bonded_or_per_gpu():
    nic = 50e9
    bonded = fat_tree(2, gpus_per_server=4, nics_per_server=4, nic_bandwidth=nic, thin_servers=1,
                      thin_nics=1)
    per_gpu = dragonfly(2, 1, 1, gpus_per_server=4, nic_per_gpu=True, nic_bandwidth=nic,
                        thin_servers=2, thin_nics=2)
    def nic_links(cluster):
        return {(u, v): cluster.link_bandwidth[i] for i, (u, v) in enumerate(cluster.links)
                if cluster.link_kind[i] == "nic"}
    up = nic_links(bonded)
    assert up[("nvs0", "edge0_0")] == 4 * nic and up[("nvs1", "edge1_0")] == 1 * nic
    links = nic_links(per_gpu)
    servers = per_gpu.num_servers
    for (u, v), bw in links.items():
        gpu = int((u if u.startswith("gpu") else v)[3:])
        thin = per_gpu.server_of(gpu) >= servers - 2
        assert bw == (nic * 2 / 4 if thin else nic)
    # a message into a thin server takes longer than into a full one, from the same source
    t_full = bonded.transfer_time(0, 1, 8e6, 64e3)  # same server: NVLink only
    t_thin = bonded.transfer_time(0, 4, 8e6, 64e3)
    t_back = bonded.transfer_time(4, 0, 8e6, 64e3)
    assert t_thin > 3.5 * 8e6 / (4 * nic) and t_thin == pytest.approx(t_back) and t_full < t_thin
