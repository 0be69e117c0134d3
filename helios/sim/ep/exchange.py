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

Orders are those of ``np.lexsort`` on up to three keys; a stable sort on one composite
key (``(a * B + b) * C + c`` with every key below its base) gives the same permutation.
"""

from __future__ import annotations

import numpy as np

from helios.sim.kernel import _njit


@_njit
def _split(src, dst, count, pieces):
    """Flows ``src -> dst`` of ``count`` tokens as ``pieces`` near-equal pieces each,
    piece-major: ``(src, dst, piece, tokens)``, each of length ``pieces * flows``."""
    flows = src.size
    s = np.empty(pieces * flows, np.int64)
    d = np.empty(pieces * flows, np.int64)
    p = np.empty(pieces * flows, np.int64)
    c = np.empty(pieces * flows, np.int64)
    for k in range(pieces):
        for i in range(flows):
            x = k * flows + i
            s[x], d[x], p[x] = src[i], dst[i], k
            c[x] = count[i] // pieces + (1 if k < count[i] % pieces else 0)
    return s, d, p, c


@_njit
def _gpu_key(src, dst, node, local, gps, num_nodes):
    """Staggered send order of GPU ``src`` to GPU ``dst``: server offset, then local offset."""
    return ((node[dst] - node[src]) % num_nodes) * gps + (local[dst] - local[src]) % gps


@_njit
def per_node_tasks(per_node, per_gpu, node, local, gps, pieces, dispatch_bytes, combine_bytes,
                   base, attn, gemm, into_gemm, ranks):
    """Messages and edges of one layer's ``per_node`` exchange.

    Parameters
    ----------
    per_node : int array, shape (G, N)
        Tokens of each rank that need each server.
    per_gpu : int array, shape (G, G)
        Tokens of each rank that need each GPU (one copy each).
    node, local : int arrays, shape (G,)
        Server and index within it of every GPU; ``gps`` GPUs per server.
    pieces : int
        ``serving.relay_chunks``.
    dispatch_bytes, combine_bytes : float
        Bytes of one token out and back.
    base : int
        Id the first message will get (the graph's size).
    attn, gemm, into_gemm, ranks : int arrays, shape (G,)
        Task ids per rank: what dispatches wait for, what combines wait for, what
        dispatch arrivals feed; and the ranks themselves.

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
    # RDMA flows to every other server, each rank's in staggered server order.
    flows = 0
    for r in range(G):
        for n in range(N):
            if per_node[r, n] != 0 and n != node[r]:
                flows += 1
    r1 = np.empty(flows, np.int64)
    n1 = np.empty(flows, np.int64)
    c1 = np.empty(flows, np.int64)
    key = np.empty(flows, np.int64)
    i = 0
    for r in range(G):
        for n in range(N):
            if per_node[r, n] != 0 and n != node[r]:
                r1[i], n1[i], c1[i] = r, n, per_node[r, n]
                key[i] = r * N + (n - node[r]) % N
                i += 1
    o = np.argsort(key, kind="mergesort")
    R, Nn, Kp, C = _split(r1[o], n1[o], c1[o], pieces)
    Rel = Nn * gps + local[R]
    o = np.argsort((R * pieces + Kp) * N + (Nn - node[R]) % N, kind="mergesort")
    rdma_src, rdma_dst, rdma_tok = R[o], Rel[o], C[o]
    rdma_at = np.full((pieces, G, N), -1, np.int64)
    for x in range(o.size):
        rdma_at[Kp[o[x]], R[o[x]], Nn[o[x]]] = x
    # Flows to single GPUs, each rank's in staggered order; its own server's go direct.
    flows = 0
    for r in range(G):
        for j in range(G):
            if per_gpu[r, j] != 0 and j != r:
                flows += 1
    r2 = np.empty(flows, np.int64)
    j2 = np.empty(flows, np.int64)
    c2 = np.empty(flows, np.int64)
    key = np.empty(flows, np.int64)
    i = 0
    for r in range(G):
        for j in range(G):
            if per_gpu[r, j] != 0 and j != r:
                r2[i], j2[i], c2[i] = r, j, per_gpu[r, j]
                key[i] = r * G + ((node[j] - node[r]) % N) * gps + (local[j] - local[r]) % gps
                i += 1
    o = np.argsort(key, kind="mergesort")
    r2, j2, c2 = r2[o], j2[o], c2[o]
    same = node[j2] == node[r2]
    rd, jd, cd = r2[same], j2[same], c2[same]
    rc, jc, cc = r2[~same], j2[~same], c2[~same]
    # Forwarded pieces: relay -> destination, each relay's piece by piece.
    RC, JC, KQ, FC = _split(rc, jc, cc, pieces)
    VIA = node[JC] * gps + local[RC]
    o2 = np.argsort((VIA * pieces + KQ) * G + _gpu_key(VIA, JC, node, local, gps, N),
                    kind="mergesort")
    # Combine: every GPU's pieces to relays and to its own server's GPUs, piece by piece.
    RD, JD, KD, DC = _split(rd, jd, cd, pieces)
    snd = np.concatenate((JC, JD))
    rcv = np.concatenate((VIA, RD))
    piece = np.concatenate((KQ, KD))
    count = np.concatenate((FC, DC))
    ob = np.argsort((snd * pieces + piece) * G + _gpu_key(snd, rcv, node, local, gps, N),
                    kind="mergesort")
    relayed = ob < JC.size
    o3, od = ob[relayed], ob[~relayed]
    o4 = np.argsort((Rel * pieces + Kp) * N + (node[R] - node[Rel]) % N, kind="mergesort")
    back_at = np.full((pieces, G, N), -1, np.int64)
    for x in range(o4.size):
        back_at[Kp[o4[x]], R[o4[x]], Nn[o4[x]]] = x
    # Messages in id order.
    n_rdma, n_direct, n_fwd, n_back = rdma_src.size, rd.size, o2.size, ob.size
    src = np.concatenate((rdma_src, rd, VIA[o2], snd[ob], Rel[o4]))
    dst = np.concatenate((rdma_dst, jd, JC[o2], rcv[ob], R[o4]))
    tok = np.concatenate((rdma_tok, cd, FC[o2], count[ob], C[o4]))
    out_end = n_rdma + n_direct + n_fwd
    nbytes = np.empty(src.size, np.float64)
    network_bytes = 0.0
    for x in range(src.size):
        nbytes[x] = tok[x] * (dispatch_bytes if x < out_end else combine_bytes)
        if src[x] != dst[x]:
            network_bytes += nbytes[x]
    rdma_id = base + np.arange(n_rdma)
    direct_id = base + n_rdma + np.arange(n_direct)
    fwd_id = base + n_rdma + n_direct + np.arange(n_fwd)
    back_id = base + out_end + np.arange(n_back)
    rdma_back_id = base + out_end + n_back + np.arange(o4.size)
    fwd_rc, fwd_jc, fwd_k = RC[o2], JC[o2], KQ[o2]
    fwd_pred = np.empty(n_fwd, np.int64)
    for x in range(n_fwd):
        fwd_pred[x] = rdma_id[rdma_at[fwd_k[x], fwd_rc[x], node[fwd_jc[x]]]]
    back_succ = np.empty(o3.size, np.int64)
    for x in range(o3.size):
        back_succ[x] = rdma_back_id[back_at[KQ[o3[x]], RC[o3[x]], node[JC[o3[x]]]]]
    edge_from = np.concatenate((attn[rdma_src], attn[rd], direct_id, fwd_pred, fwd_id,
                                gemm[snd[ob]], back_id[relayed]))
    edge_to = np.concatenate((rdma_id, direct_id, into_gemm[jd], fwd_id, into_gemm[fwd_jc],
                              back_id, back_succ))
    ends = np.concatenate((rdma_back_id, back_id[~relayed], gemm))
    end_ranks = np.concatenate((R[o4], rcv[od], ranks))
    return src, dst, nbytes, network_bytes, edge_from, edge_to, ends, end_ranks
