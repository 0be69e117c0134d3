"""Compiled task lists of one layer's ``per_node`` dispatch and combine (DeepEP's normal kernels).

:meth:`helios.sim.ep.step.StepBuilder._exchange_per_node` describes the exchange: RDMA
pieces to a relay GPU per server, NVLink forwarding, direct NVLink flows within the
server, and the reverse for the combine. A default cell builds it ~8000 times with a few
dozen flows each, where numpy's per-call overhead (about a hundred small array
operations per layer) cost more than the kernel that then simulates the step. This
module builds the same lists in one compiled call: every message in task-id order and
every edge in insertion order, so the task graph, and every result, is the one the
numpy formulation gives (``tests/test_step_exchange.py`` holds the numpy formulation and
compares the graphs).

Every order is generated directly by nested loops, with no sort: the numpy formulation
sorts by (sender, piece, staggered key), and each sender's receivers in staggered order
are a fixed walk of the servers and of the GPUs within a server.
"""

from __future__ import annotations

import numpy as np

from helios.sim.kernel import _njit


@_njit
def _piece(count, k, pieces):
    """Tokens of piece ``k`` of a flow of ``count`` tokens cut into ``pieces`` near-equal pieces."""
    return count // pieces + (1 if k < count % pieces else 0)


@_njit
def per_node_tasks(per_node, per_gpu, gps, pieces, dispatch_bytes, combine_bytes,
                   base, attn, gemm, into_gemm):
    """Messages and edges of one layer's ``per_node`` exchange.

    Parameters
    ----------
    per_node : int array, shape (G, N)
        Tokens of each rank that need each server.
    per_gpu : int array, shape (G, G)
        Tokens of each rank that need each GPU (one copy each).
    gps : int
        GPUs per server (GPU ``g`` is GPU ``g % gps`` of server ``g // gps``).
    pieces : int
        ``serving.relay_chunks``.
    dispatch_bytes, combine_bytes : float
        Bytes of one token out and back.
    base : int
        Id the first message will get (the graph's size).
    attn, gemm, into_gemm : int arrays, shape (G,)
        Task ids per rank: what dispatches wait for, what combines wait for, what
        dispatch arrivals feed.

    Returns
    -------
    src, dst : int arrays, shape (M,)
        Messages in task-id order: RDMA dispatch pieces, direct NVLink flows, forwarded
        pieces, combine pieces over NVLink, RDMA combine pieces.
    nbytes : float array, shape (M,)
    network_bytes : float
        Bytes of the messages between different GPUs.
    edge_from, edge_to : int arrays
        Edges in the order the numpy formulation adds them.
    ends, end_ranks : int arrays
        Tasks the next layer waits for, and the rank of each.
    """
    G = per_gpu.shape[0]
    N = G // gps
    K = pieces
    rdma_flows, direct, relayed = 0, 0, 0
    for r in range(G):
        for n in range(N):
            if per_node[r, n] != 0 and n != r // gps:
                rdma_flows += 1
        for j in range(G):
            if per_gpu[r, j] != 0 and j != r:
                if j // gps == r // gps:
                    direct += 1
                else:
                    relayed += 1
    n_rdma, n_fwd, n_back = K * rdma_flows, K * relayed, K * (relayed + direct)
    M = 2 * n_rdma + direct + n_fwd + n_back
    src, dst, tok = np.empty(M, np.int64), np.empty(M, np.int64), np.empty(M, np.int64)
    e_from = np.empty(n_rdma + 2 * direct + 3 * n_fwd + n_back, np.int64)
    e_to = np.empty(e_from.size, np.int64)
    m, e = 0, 0  # next message, next edge
    # RDMA dispatch: each rank's pieces piece by piece, a piece's servers in staggered order.
    rdma_id = np.full((K, G, N), -1, np.int64)
    for r in range(G):
        for k in range(K):
            for off in range(1, N):
                n = (r // gps + off) % N
                if per_node[r, n] != 0:
                    src[m], dst[m], tok[m] = r, n * gps + r % gps, _piece(per_node[r, n], k, K)
                    rdma_id[k, r, n] = base + m
                    e_from[e], e_to[e] = attn[r], base + m
                    m, e = m + 1, e + 1
    # Direct NVLink flows within the sender's server, whole, in staggered order.
    for r in range(G):
        for off in range(1, gps):
            j = (r // gps) * gps + (r % gps + off) % gps
            if per_gpu[r, j] != 0:
                src[m], dst[m], tok[m] = r, j, per_gpu[r, j]
                e_from[e], e_to[e] = attn[r], base + m
                e_from[e + direct], e_to[e + direct] = base + m, into_gemm[j]
                m, e = m + 1, e + 1
    e += direct
    # Forwarded pieces: each relay's piece by piece, its server's GPUs in staggered order,
    # the sources (one per other server, with the relay's local index) in rank order.
    for v in range(G):
        for k in range(K):
            for off in range(gps):
                j = (v // gps) * gps + (v % gps + off) % gps
                for n in range(N):
                    r = n * gps + v % gps
                    if n != v // gps and per_gpu[r, j] != 0:
                        src[m], dst[m], tok[m] = v, j, _piece(per_gpu[r, j], k, K)
                        e_from[e], e_to[e] = rdma_id[k, r, j // gps], base + m
                        e_from[e + n_fwd], e_to[e + n_fwd] = base + m, into_gemm[j]
                        m, e = m + 1, e + 1
    e += n_fwd
    # Combine over NVLink: every GPU's pieces piece by piece, its server's GPUs in
    # staggered order; to each, the relayed flows (by source rank), then the direct one.
    back0 = m
    feeds = np.full(n_back, -1, np.int64)  # the RDMA combine piece a relayed piece feeds
    for g in range(G):
        for k in range(K):
            for off in range(gps):
                v = (g // gps) * gps + (g % gps + off) % gps
                for n in range(N):
                    r = n * gps + v % gps
                    if n != g // gps and per_gpu[r, g] != 0:
                        src[m], dst[m], tok[m] = g, v, _piece(per_gpu[r, g], k, K)
                        feeds[m - back0] = (k * G + r) * N + g // gps
                        e_from[e], e_to[e] = gemm[g], base + m
                        m, e = m + 1, e + 1
                if v != g and per_gpu[v, g] != 0:
                    src[m], dst[m], tok[m] = g, v, _piece(per_gpu[v, g], k, K)
                    e_from[e], e_to[e] = gemm[g], base + m
                    m, e = m + 1, e + 1
    # RDMA combine: each relay's pieces piece by piece, the servers in staggered order.
    ends = np.empty(n_rdma + K * direct + G, np.int64)
    end_ranks = np.empty(ends.size, np.int64)
    back_id = np.full((K, G, N), -1, np.int64)
    q = 0
    for v in range(G):
        for k in range(K):
            for off in range(1, N):
                r = ((v // gps + off) % N) * gps + v % gps
                if per_node[r, v // gps] != 0:
                    src[m], dst[m], tok[m] = v, r, _piece(per_node[r, v // gps], k, K)
                    back_id[k, r, v // gps] = base + m
                    ends[q], end_ranks[q] = base + m, r
                    m, q = m + 1, q + 1
    for x in range(n_back):
        if feeds[x] >= 0:
            e_from[e], e_to[e] = base + back0 + x, back_id.ravel()[feeds[x]]
            e += 1
        else:
            ends[q], end_ranks[q] = base + back0 + x, dst[back0 + x]
            q += 1
    for g in range(G):
        ends[q + g], end_ranks[q + g] = gemm[g], g
    nbytes = np.empty(M, np.float64)
    network_bytes = 0.0
    out_end = n_rdma + direct + n_fwd
    for x in range(M):
        nbytes[x] = tok[x] * (dispatch_bytes if x < out_end else combine_bytes)
        if src[x] != dst[x]:
            network_bytes += nbytes[x]
    return src, dst, nbytes, network_bytes, e_from, e_to, ends, end_ranks
