"""One serving step as a task graph: per MoE layer a dispatch, a grouped GEMM, a combine.

For every rank ``r`` (a GPU; all ranks take part in every step, as DP-attention ranks
do, idle ones with an empty batch) and every simulated MoE layer ``l``:

* ``attn[l, r]`` (compute on ``r``): attention and shared experts of ``r``'s batch;
  it waits for ``r``'s previous layer: every combine message into ``r`` and ``r``'s
  own GEMM (layer 0 waits for the dense layers);
* **dispatch** messages carry ``r``'s tokens to the GPUs serving their experts, each
  waiting for ``attn[l, r]``; a rank sends them in staggered order (server offset
  1, 2, ..., and local offset 0, 1, ... within a server), as all-to-all kernels do
  against incast. ``serving.dispatch`` counts them:
  ``per_gpu``: one copy per (token, destination GPU);
  ``per_expert``: one copy per (token, expert), as DeepEP's low-latency kernels;
  ``per_node``: as DeepEP's normal kernels, one RDMA copy per (token, destination
  server) to the GPU of that server with ``r``'s local index, which forwards one copy
  per (token, destination GPU) over NVLink; GPUs of ``r``'s own server get theirs
  over NVLink directly. Relayed flows go in ``serving.relay_chunks`` pieces, each
  forwarded as soon as it is in, so the two stages pipeline as DeepEP's kernels do;
* ``gemm[l, j]`` (compute on ``j``): one grouped GEMM over everything ``j``
  received; it waits for all of ``j``'s incoming dispatch messages and ``attn[l, j]``;
* **combine** messages send the results back by the reverse routes (``per_node``:
  NVLink to the relay GPU, which sends one RDMA copy per token and server), each
  waiting for the GEMM that produced it. ``per_node`` combines go in pieces, relayed
  and direct alike, and a GPU sends piece ``k`` of every flow before piece ``k + 1``
  (DeepEP's channels walk their tokens in order), so its own server's results do not
  hold back what the relays must send over RDMA.

No barrier is added: a GEMM waits for its inputs, a layer for its combines, so the
slowest rank paces everyone. ``serving.phase_overhead_us`` adds a fixed cost on the
receiving rank to every dispatch and every combine, as a compute task between the last
arrival and what waits for it (a GEMM, the next layer): the kernel launch, count
exchange and completion polling that all-to-all kernels pay per phase whatever they
carry (DeepEP's low-latency kernels: ~25 us, fitted in ``helios.bench deepep``). With ``serving.overlap=two_batch`` every rank's batch is
split into two micro-batches with their own chains of tasks; both share the rank's
GPU (tasks run in the order they become ready), so one micro-batch's communication
proceeds while the other computes (DeepSeek's two-micro-batch overlap). A step ends
when every rank has run its LM head after its last combine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helios.sim.ep.exchange import per_node_tasks
from helios.sim.kernel import _njit
from helios.sim.taskgraph import TaskGraph


@dataclass
class LayerTraffic:
    """Token counts of one micro-batch in one MoE layer.

    ``per_gpu[r, j]``: tokens of rank ``r`` that need GPU ``j`` (one copy each);
    ``per_expert[r, j]``: token-expert pairs of ``r`` served on ``j``;
    ``per_node[r, n]``: tokens of ``r`` that need server ``n``;
    ``pairs[j]`` and ``active[j]``: pairs and distinct experts GPU ``j`` computes.
    """

    per_gpu: np.ndarray
    per_expert: np.ndarray
    per_node: np.ndarray
    pairs: np.ndarray
    active: np.ndarray


def layer_traffic(src: np.ndarray, gpu: np.ndarray, expert: np.ndarray, num_gpus: int,
                  gpus_per_server: int, num_experts: int) -> LayerTraffic:
    """Count one layer's traffic.

    Parameters
    ----------
    src : int array, shape (T,)
        Rank of each token.
    gpu, expert : int arrays, shape (T, k)
        GPU serving each of the token's experts, and the expert.
    """
    G = num_gpus
    per_gpu = np.zeros((G, G), dtype=np.int64)
    per_expert = np.zeros((G, G), dtype=np.int64)
    per_node = np.zeros((G, G // gpus_per_server), dtype=np.int64)
    served = np.zeros((G, num_experts), dtype=np.int64)
    _count_traffic(src, gpu, expert, gpus_per_server, per_gpu, per_expert, per_node, served)
    return LayerTraffic(per_gpu, per_expert, per_node, served.sum(axis=1), (served > 0).sum(axis=1))


@_njit
def _count_traffic(src, gpu, expert, gps, per_gpu, per_expert, per_node, served):
    """Add every token's pairs (``per_expert``, ``served``), distinct GPUs (``per_gpu``) and
    distinct servers (``per_node``); a token's ``k`` GPUs are few, so a scan of those
    before each finds its repeats."""
    tokens, k = gpu.shape
    server = np.empty(k, np.int64)  # the server of each of the token's pairs
    for t in range(tokens):
        r = src[t]
        for c in range(k):
            g = gpu[t, c]
            server[c] = g // gps
            per_expert[r, g] += 1
            served[g, expert[t, c]] += 1
            new_gpu, new_node = True, True
            for b in range(c):
                if gpu[t, b] == g:
                    new_gpu = False
                    new_node = False
                    break
                if server[b] == server[c]:
                    new_node = False
            if new_gpu:
                per_gpu[r, g] += 1
            if new_node:
                per_node[r, server[c]] += 1


@dataclass
class StepPlan:
    """The task graph of a step and the ids needed to read its results."""

    graph: TaskGraph
    tail: np.ndarray
    """LM-head task per rank: the step ends when all are done."""
    network_bytes: float
    """Bytes of all messages between different GPUs (dispatch, forward, combine)."""


class StepBuilder:
    """Builds a step's task graph from per-layer traffic and compute times.

    Parameters
    ----------
    num_gpus, gpus_per_server : int
    dispatch : str
        ``per_gpu``, ``per_node`` or ``per_expert``.
    dispatch_token_bytes, combine_token_bytes : float
        Bytes of one token's hidden vector sent out and back.
    relay_chunks : int
        ``per_node``: pieces of every relayed flow (see :meth:`_exchange_per_node`).
    """

    def __init__(self, num_gpus: int, gpus_per_server: int, dispatch: str,
                 dispatch_token_bytes: float, combine_token_bytes: float,
                 relay_chunks: int = 8, phase_overhead_s: float = 0.0) -> None:
        self.G, self.gps, self.dispatch = num_gpus, gpus_per_server, dispatch
        self.relay_chunks = relay_chunks
        self.phase_overhead_s = phase_overhead_s
        self.db, self.cb = dispatch_token_bytes, combine_token_bytes
        self.ranks = np.arange(num_gpus)
        self.node = self.ranks // gpus_per_server
        self.local = self.ranks % gpus_per_server

    def build(self, start: float, dense_s: np.ndarray, attn_s: list[list[np.ndarray]],
              gemm_s: list[list[np.ndarray]], traffic: list[list[LayerTraffic]],
              head_s: np.ndarray) -> StepPlan:
        """Graph of a step starting at ``start``.

        ``attn_s[m][l]``, ``gemm_s[m][l]`` (shape (G,)) and ``traffic[m][l]`` are per
        micro-batch ``m`` and layer ``l``; ``dense_s`` and ``head_s`` per rank.
        """
        graph = TaskGraph()
        pre = graph.compute(self.ranks, dense_s, start)
        tail = graph.compute(self.ranks, head_s)
        self.network_bytes = 0.0
        for m in range(len(attn_s)):
            before, before_rank = pre, self.ranks
            for l in range(len(attn_s[m])):
                attn = graph.compute(self.ranks, attn_s[m][l])
                graph.edges(before, attn[before_rank])
                gemm = graph.compute(self.ranks, gemm_s[m][l])
                graph.edges(attn, gemm)
                into_gemm = gemm
                if self.phase_overhead_s > 0:  # the dispatch's fixed cost, after its arrivals
                    into_gemm = graph.compute(self.ranks, np.full(self.G, self.phase_overhead_s))
                    graph.edges(attn, into_gemm)
                    graph.edges(into_gemm, gemm)
                before, before_rank = self._exchange(graph, attn, gemm, traffic[m][l], into_gemm)
                if self.phase_overhead_s > 0:  # the combine's, before the next layer
                    done = graph.compute(self.ranks, np.full(self.G, self.phase_overhead_s))
                    graph.edges(before, done[before_rank])
                    before, before_rank = done, self.ranks
            graph.edges(before, tail[before_rank])
        return StepPlan(graph, tail, self.network_bytes)

    def _key(self, src: np.ndarray, dst: np.ndarray, nodes: bool = False) -> np.ndarray:
        """Staggered send order of ``src`` to ``dst`` (a GPU, or with ``nodes`` a server).

        A GPU sends to the peers at server offset 1, 2, ... and within each server at
        local offset 0, 1, ... (mod the counts), as all-to-all kernels stagger their peers,
        so that at any moment no receiver gets every sender's message at once. Key 0 is
        the sender itself (its own server).
        """
        N = self.G // self.gps
        if nodes:
            return (dst - self.node[src]) % N
        return (((self.node[dst] - self.node[src]) % N) * self.gps
                + (self.local[dst] - self.local[src]) % self.gps)

    def _staggered(self, src: np.ndarray, dst: np.ndarray,
                   nodes: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Pairs to another GPU (server), each source's in :meth:`_key` order."""
        key = self._key(src, dst, nodes)
        keep = key != 0
        src, dst, key = src[keep], dst[keep], key[keep]
        order = np.lexsort((key, src))
        return src[order], dst[order]

    def _order(self, src: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Permutation that lists each source's messages in staggered order."""
        return np.lexsort((key, src))

    def _messages(self, graph: TaskGraph, src, dst, tokens, token_bytes) -> np.ndarray:
        nbytes = tokens * token_bytes
        self.network_bytes += float(nbytes[src != dst].sum())
        return graph.message(src, dst, nbytes)

    def _exchange(self, graph: TaskGraph, attn: np.ndarray, gemm: np.ndarray,
                  t: LayerTraffic, into_gemm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dispatch and combine of one layer; returns (tasks, their ranks) the next layer
        waits for. Dispatch arrivals go to ``into_gemm`` (the GEMM, or the dispatch's
        fixed cost before it)."""
        if self.dispatch != "per_node":
            counts = t.per_expert if self.dispatch == "per_expert" else t.per_gpu
            r, j = self._staggered(*np.nonzero(counts))
            n = counts[r, j]
            out = self._messages(graph, r, j, n, self.db)
            graph.edges(attn[r], out)
            graph.edges(out, into_gemm[j])
            o = self._order(j, self._key(j, r))  # each GPU staggers its own combines too
            back = self._messages(graph, j[o], r[o], n[o], self.cb)
            graph.edges(gemm[j[o]], back)
            return np.concatenate([back, gemm]), np.concatenate([r[o], self.ranks])
        return self._exchange_per_node(graph, attn, gemm, t, into_gemm)

    def _exchange_per_node(self, graph: TaskGraph, attn: np.ndarray, gemm: np.ndarray,
                           t: LayerTraffic, into_gemm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DeepEP's normal kernels: RDMA to a relay per server, NVLink forwarding, and back.

        - **Dispatch.** Every rank sends one RDMA copy per (token, destination server) to
          the GPU of that server with the rank's local index (the relay), in
          :attr:`relay_chunks` pieces per flow, each rank's pieces piece by piece and
          within a piece in staggered server order. A relay forwards each piece over
          NVLink to the destination GPUs as soon as that piece is in (so the RDMA and
          NVLink stages pipeline as DeepEP's chunked kernels do), each relay's pieces
          piece by piece in staggered order. GPUs of the sender's own server get their
          flows over NVLink directly, whole.
        - **Combine.** Every GPU sends its results over NVLink, relayed flows in pieces
          to the relay, which sends one RDMA copy per token and piece once that piece is
          in from all its GPUs; flows back within the server go as direct pieces. A GPU
          sends piece ``k`` of all its flows (relayed and direct, in staggered order)
          before piece ``k + 1``, as DeepEP's channels walk their tokens in order; direct
          flows sent first would hold every relay's first RDMA piece back by a whole
          direct phase.

        The lists are built by the compiled :func:`helios.sim.ep.exchange.per_node_tasks`.
        """
        src, dst, nbytes, network_bytes, edge_from, edge_to, ends, ranks = per_node_tasks(
            t.per_node, t.per_gpu, self.gps, self.relay_chunks, float(self.db), float(self.cb),
            graph.size, attn, gemm, into_gemm)
        self.network_bytes += network_bytes
        graph.message(src, dst, nbytes)
        graph.edges(edge_from, edge_to)
        return ends, ranks
