"""The compiled step kernel against the SimPy link model it replaces, and on task graphs."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from simpy.events import Timeout

from helios.sim.kernel import LinkState
from helios.sim.taskgraph import TaskGraph
from helios.sim.network import LinkMeter, Network
from helios.topology import dragonfly, fat_tree

WINDOW, HORIZON, MSTART, MEND = 1e-4, 2e-2, 2e-4, 1.5e-2


def _recorded_traffic(cluster, rng, count):
    """Random sends: (start time, src, dst, bytes); some share a start time."""
    times = np.sort(rng.uniform(0, 2e-3, count))
    times[1::7] = times[0::7][: len(times[1::7])]  # exact ties, as a step's sends have
    src = rng.integers(cluster.num_gpus, size=count)
    dst = rng.integers(cluster.num_gpus, size=count)
    nbytes = rng.choice([0.0, 3e3, 7e4, 1.3e6, 5e6], size=count)
    order = np.lexsort((np.arange(count), times))
    return times[order], src[order], dst[order], nbytes[order]


def _simpy_delivery(cluster, chunk, traffic):
    times, src, dst, nbytes = traffic
    env = simpy.Environment()
    meter = LinkMeter(cluster.num_links, WINDOW, HORIZON, MSTART, MEND)
    net = Network(env, cluster.route, cluster.link_bandwidth.tolist(),
                  cluster.link_latency.tolist(), chunk, meter)
    done = np.full(len(times), np.nan)

    def sender(i):
        def fire(_event):
            net.send(int(src[i]), int(dst[i]), float(nbytes[i]),
                     lambda: done.__setitem__(i, env.now))
        return fire

    for i, t in enumerate(times):
        Timeout(env, t).callbacks.append(sender(i))
    env.run()
    return done, meter


def _kernel_delivery(cluster, chunk, traffic, compiled):
    times, src, dst, nbytes = traffic
    graph = TaskGraph()
    graph.message(src, dst, nbytes, times)
    state = LinkState(cluster, chunk, WINDOW, HORIZON, MSTART, MEND)
    finish = state.run(graph.arrays(), compiled=compiled)
    return finish, state.link_win, state.link_meas, state.link_bytes


@pytest.mark.parametrize("make", [lambda: fat_tree(4, gpus_per_server=4, seed=0),
                                  lambda: dragonfly(2, 2, 1, gpus_per_server=2, seed=0)],
                         ids=["fat_tree", "dragonfly"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_delivers_exactly_when_the_simpy_network_does(make, seed):
    cluster = make()
    traffic = _recorded_traffic(cluster, np.random.default_rng(seed), 600)
    chunk = 512 * 1024
    expected, meter = _simpy_delivery(cluster, chunk, traffic)
    for compiled in (True, False):
        finish, link_win, link_meas, link_bytes = _kernel_delivery(cluster, chunk, traffic, compiled)
        np.testing.assert_array_equal(finish, expected)
        np.testing.assert_allclose(link_bytes, meter.bytes_total, rtol=0, atol=1e-6)
        np.testing.assert_allclose(link_meas, meter.busy_measured, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(link_win, meter.window_utilisation() * WINDOW,
                                   rtol=1e-9, atol=1e-15)


def test_tasks_wait_for_predecessors_and_share_a_gpu_in_ready_order():
    cluster = fat_tree(2, gpus_per_server=2, seed=0)
    graph = TaskGraph()
    a = graph.compute(0, 1e-3)                 # GPU 0 busy [0, 1 ms)
    m = graph.message(0, 2, 1e6)               # after a
    graph.edges(a, m)
    c = graph.compute(2, 2e-3)                 # GPU 2: after the message
    graph.edges(m, c)
    d = graph.compute(0, 5e-4, start=2e-4)     # ready at 0.2 ms, waits for a (FIFO)
    finish = LinkState(cluster, 1e9, window=1.0, horizon=2.0, measure_end=3.0).run(graph.arrays())
    path = cluster.route(0, 2)
    one_chunk = 1e-3 + sum(1e6 / cluster.link_bandwidth[link] + cluster.link_latency[link]
                           for link in path)
    assert finish[a] == pytest.approx(1e-3)
    assert finish[d] == pytest.approx(1.5e-3)
    assert finish[m] == pytest.approx(one_chunk)
    assert finish[c] == pytest.approx(one_chunk + 2e-3)


@pytest.mark.parametrize("nbytes", [3e3, 5e5, 2.3e6, 5e6])
def test_transfer_time_is_the_idle_network_delivery_of_the_link_model(nbytes):
    cluster = fat_tree(4, gpus_per_server=2, seed=0)
    chunk = 512 * 1024
    for src, dst in [(0, 1), (0, 5), (3, 30)]:
        traffic = (np.array([0.0]), np.array([src]), np.array([dst]), np.array([nbytes]))
        expected, _ = _simpy_delivery(cluster, chunk, traffic)
        assert cluster.transfer_time(src, dst, nbytes, chunk) == pytest.approx(expected[0], rel=1e-12)


def test_successor_lists_keep_the_order_edges_were_added():
    from helios.sim.taskgraph import successors

    rng = np.random.default_rng(7)
    size = 500
    src, dst = rng.integers(0, size, 4000), rng.integers(0, size, 4000)
    deps, ptr, succ = successors(src, dst, size)
    order = np.argsort(src, kind="stable")  # each task's successors in insertion order
    np.testing.assert_array_equal(succ, dst[order])
    np.testing.assert_array_equal(ptr, np.r_[0, np.cumsum(np.bincount(src, minlength=size))])
    np.testing.assert_array_equal(deps, np.bincount(dst, minlength=size))
    empty = successors(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert [a.tolist() for a in empty] == [[0, 0, 0], [0, 0, 0, 0], []]


def test_chunk_hops_count_only_messages_that_cross_the_network():
    from helios.sim.taskgraph import count_chunk_hops

    rng = np.random.default_rng(3)
    n, gpus, chunk = 3000, 16, 4096.0
    kind = rng.integers(0, 2, n).astype(np.int8)
    src, dst = rng.integers(0, gpus, n), rng.integers(0, gpus, n)
    nbytes = rng.choice([0.0, 100.0, 4096.0, 4097.0, 7392.0 * 37], n)
    route_len = rng.integers(1, 6, (gpus, gpus))
    msg = (kind == 1) & (nbytes > 0) & (src != dst)
    hops = route_len[src[msg], dst[msg]]
    chunk_hops, byte_hops = count_chunk_hops(kind, src, dst, nbytes, route_len, chunk)
    assert chunk_hops == int((np.ceil(nbytes[msg] / chunk) * hops).sum()) > 0
    assert byte_hops == (nbytes[msg] * hops).sum()  # whole numbers: exact in any order
