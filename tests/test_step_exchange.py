"""The compiled step builders give what their numpy formulations give.

The traffic counts of a layer (:func:`helios.sim.ep.step.layer_traffic`) are compared
with :func:`numpy_layer_traffic`, and the ``per_node`` exchange's task graph with
:class:`NumpyPerNode`'s.

:class:`NumpyPerNode` below is the exchange as it was first written, in numpy (each
order an ``np.lexsort``); :func:`helios.sim.ep.exchange.per_node_tasks` must give the
very same graph: the same tasks in the same id order, the same edges in the same order,
and the same tasks for the next layer to wait for. Any difference, even one of order,
could change a simulated time.
"""

from __future__ import annotations

import numpy as np
import pytest

from helios.sim.ep.step import LayerTraffic, StepBuilder, layer_traffic


def _distinct(keys, pad):
    """Each row's keys with repeats replaced by ``pad`` (a value no key takes)."""
    if keys.shape[1] <= 1:
        return keys
    ranked = np.sort(keys, axis=1)
    out = ranked.copy()
    out[:, 1:][ranked[:, 1:] == ranked[:, :-1]] = pad
    return out


def numpy_layer_traffic(src, gpu, expert, G, gps, E) -> LayerTraffic:
    """The numpy formulation of :func:`layer_traffic` (bincounts of deduplicated keys)."""
    nodes = G // gps
    pair = src[:, None] * G + gpu
    per_expert = np.bincount(pair.ravel(), minlength=G * G).reshape(G, G)
    per_gpu = np.bincount(_distinct(pair, pad=G * G).ravel(), minlength=G * G + 1)[:G * G].reshape(G, G)
    node_pair = src[:, None] * nodes + gpu // gps
    per_node = np.bincount(_distinct(node_pair, pad=G * nodes).ravel(),
                           minlength=G * nodes + 1)[:G * nodes].reshape(G, nodes)
    served = np.bincount((gpu * E + expert).ravel(), minlength=G * E).reshape(G, E)
    return LayerTraffic(per_gpu, per_expert, per_node, served.sum(axis=1), (served > 0).sum(axis=1))


@pytest.mark.parametrize("G,gps,E,k,tokens", [(16, 8, 256, 8, 300), (32, 4, 64, 4, 50),
                                              (8, 8, 16, 1, 40), (16, 2, 32, 6, 0)])
def test_compiled_traffic_counts_are_the_numpy_counts(G, gps, E, k, tokens):
    rng = np.random.default_rng(G + E + k)
    for copies in (1, 2, 4):  # experts with copies on several GPUs, some on the same server
        src = np.sort(rng.integers(0, G, tokens))
        expert = np.argsort(rng.random((tokens, E)), axis=1)[:, :k]
        home = rng.integers(0, G, (E, copies))
        gpu = home[expert, rng.integers(0, copies, expert.shape)]
        want, got = numpy_layer_traffic(src, gpu, expert, G, gps, E), layer_traffic(src, gpu, expert, G, gps, E)
        for name in ("per_gpu", "per_expert", "per_node", "pairs", "active"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert got.per_expert.sum() == tokens * k
        if k > 1 and tokens:  # repeats were there to drop
            assert got.per_gpu.sum() < tokens * k and got.per_node.sum() < got.per_gpu.sum()


class NumpyPerNode(StepBuilder):
    """The numpy formulation of :meth:`StepBuilder._exchange_per_node`."""

    def _pieces(self, count):
        K = self.relay_chunks
        k = np.arange(K)[:, None]
        return count[None, :] // K + (k < count[None, :] % K)

    def _split(self, src, dst, count):
        K = self.relay_chunks
        return (np.tile(src, K), np.tile(dst, K), np.repeat(np.arange(K), src.size),
                self._pieces(count).ravel())

    def _exchange_per_node(self, graph, attn, gemm, t: LayerTraffic, into_gemm):
        G, node, K = self.G, self.node, self.relay_chunks
        N = G // self.gps
        r, n = self._staggered(*np.nonzero(t.per_node), nodes=True)
        R, Nn, Kp, C = self._split(r, n, t.per_node[r, n])
        Rel = Nn * self.gps + self.local[R]
        o = np.lexsort((self._key(R, Nn, nodes=True), Kp, R))
        rdma = self._messages(graph, R[o], Rel[o], C[o], self.db)
        graph.edges(attn[R[o]], rdma)
        rdma_id = np.full((K, G, N), -1, dtype=np.int64)
        rdma_id[Kp[o], R[o], Nn[o]] = rdma
        r2, j = self._staggered(*np.nonzero(t.per_gpu))
        same = node[j] == node[r2]
        rd, jd = r2[same], j[same]
        direct = self._messages(graph, rd, jd, t.per_gpu[rd, jd], self.db)
        graph.edges(attn[rd], direct)
        graph.edges(direct, into_gemm[jd])
        rc, jc = r2[~same], j[~same]
        RC, JC, KQ, FC = self._split(rc, jc, t.per_gpu[rc, jc])
        VIA = node[JC] * self.gps + self.local[RC]
        o2 = np.lexsort((self._key(VIA, JC), KQ, VIA))
        fwd = self._messages(graph, VIA[o2], JC[o2], FC[o2], self.db)
        graph.edges(rdma_id[KQ[o2], RC[o2], node[JC[o2]]], fwd)
        graph.edges(fwd, into_gemm[JC[o2]])
        RD, JD, KD, DC = self._split(rd, jd, t.per_gpu[rd, jd])
        snd, rcv = np.concatenate([JC, JD]), np.concatenate([VIA, RD])
        piece, count = np.concatenate([KQ, KD]), np.concatenate([FC, DC])
        ob = np.lexsort((self._key(snd, rcv), piece, snd))
        back = self._messages(graph, snd[ob], rcv[ob], count[ob], self.cb)
        graph.edges(gemm[snd[ob]], back)
        relayed = ob < JC.size
        o3, od = ob[relayed], ob[~relayed]
        o4 = np.lexsort((self._key(Rel, node[R], nodes=True), Kp, Rel))
        rdma_back = self._messages(graph, Rel[o4], R[o4], C[o4], self.cb)
        back_id = np.full((K, G, N), -1, dtype=np.int64)
        back_id[Kp[o4], R[o4], Nn[o4]] = rdma_back
        graph.edges(back[relayed], back_id[KQ[o3], RC[o3], node[JC[o3]]])
        ends = np.concatenate([rdma_back, back[~relayed], gemm])
        ranks = np.concatenate([R[o4], rcv[od], self.ranks])
        return ends, ranks


def _traffic(rng, G, gps, E, k, tokens_per_rank, idle):
    """One layer's traffic: random experts, some ranks idle (empty batches)."""
    counts = np.where(rng.random(G) < idle, 0, tokens_per_rank)
    src = np.repeat(np.arange(G), counts)
    expert = np.argsort(rng.random((src.size, E)), axis=1)[:, :k]
    return layer_traffic(src, expert // (E // G), expert, G, gps, E)


@pytest.mark.parametrize("G,gps,pieces,tokens,idle,overhead", [
    (16, 8, 8, 3, 0.5, 0.0),     # the default cell's shape: sparse decode traffic
    (16, 8, 8, 200, 0.0, 0.0),   # dense: every pair, pieces with tokens in all
    (32, 4, 3, 5, 0.3, 2e-5),    # eight servers, uneven pieces, a phase overhead
    (24, 8, 1, 40, 0.0, 0.0),    # whole flows (one piece)
    (8, 8, 4, 10, 0.0, 0.0),     # one server: no RDMA at all
    (16, 2, 5, 1, 0.7, 0.0),     # single-token flows: most pieces empty
])
def test_compiled_exchange_builds_the_numpy_graph(G, gps, pieces, tokens, idle, overhead):
    rng = np.random.default_rng(G * 1000 + gps * 10 + pieces)
    E, k = 4 * G, 8 if G >= 16 else 4
    for _ in range(4):
        layers = [[_traffic(rng, G, gps, E, k, tokens, idle) for _ in range(3)] for _ in range(2)]
        times = [[rng.random(G) * 1e-4 for _ in range(3)] for _ in range(2)]
        args = (0.5, rng.random(G) * 1e-4, times, times, layers, rng.random(G) * 1e-4)
        plans = [cls(G, gps, "per_node", 7392.0, 14336.0, relay_chunks=pieces,
                     phase_overhead_s=overhead).build(*args) for cls in (NumpyPerNode, StepBuilder)]
        want, got = (p.graph.arrays() for p in plans)
        for name, a, b in zip(("kind", "a", "b", "value", "start", "deps", "succ_ptr", "succ"),
                              want, got):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        np.testing.assert_array_equal(plans[0].tail, plans[1].tail)
        assert plans[0].network_bytes == plans[1].network_bytes > (0 if G > gps else -1)
