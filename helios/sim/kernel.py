"""Compiled event loop of one serving step: FIFO link queues, FIFO GPUs and a task graph.

A step of expert-parallel serving is a directed acyclic graph of *tasks*:

* a **compute** task runs on one GPU for a fixed time; a GPU runs its tasks one at a
  time, in the order they became ready (a FIFO queue, like a CUDA stream);
* a **message** task moves ``nbytes`` from GPU ``src`` to GPU ``dst`` over the
  cluster's route with exactly the link model of :mod:`helios.sim.network`: the
  message is cut into chunks of at most ``chunk_bytes``; a chunk that reaches link
  ``l`` at ``t`` starts at ``max(t, free_at[l])``, occupies the link for
  ``size / bandwidth[l]`` and reaches the next node ``latency[l]`` later (store and
  forward per chunk, so chunks pipeline across hops). It is done when its last chunk
  arrives. A message to the same GPU, or of zero bytes, is done at once.

A task starts when all its predecessors are done (and not before its own
``start`` time): in the event that completes its last predecessor, as a SimPy
callback would start it. The loop handles events in simulated-time order; equal times go in
the order the events were scheduled, which is SimPy's rule, so a graph of messages
with given start times gives the very delivery times of
:class:`helios.sim.network.Network` (``tests/test_kernel.py`` checks this on
recorded traffic). Link and GPU states (``free_at``) persist across calls: a step
starts on the links as the previous one (and any weight copy) left them.

The loop runs under numba (``cache=True``: one compilation per machine); the same
function runs as plain Python with :data:`run_graph_py` (slow; for tests and for
machines without numba).
"""

from __future__ import annotations


import numpy as np

try:  # numba is a pinned dependency; the fallback keeps the reference importable anywhere
    import numba

    _njit = numba.njit(cache=True, nogil=True)
    # Hot helpers (metering, link crossing, the heap's push and sift) are inlined into the
    # loop at numba's IR level: a call costs ~15% here, the heap's calls another 3-14%.
    _njit_inline = numba.njit(cache=True, nogil=True, inline="always")
except ImportError:  # pragma: no cover
    numba = None

    def _njit(fn):
        return fn

    _njit_inline = _njit

COMPUTE, MESSAGE = 0, 1
_START, _HOP, _DONE = 0, 1, 2


@_njit_inline
def _meter(busy_win, busy_meas, col, begin, finish, window, mstart, mend):
    """Add busy time ``[begin, finish)`` of column ``col`` to the window and interval sums."""
    if finish > mstart and begin < mend:
        busy_meas[col] += min(finish, mend) - max(begin, mstart)
    nwin = busy_win.shape[0]
    finish = min(finish, nwin * window)
    if begin >= finish:
        return
    w = int(begin / window)
    while w < nwin:
        edge = (w + 1) * window
        if finish <= edge:
            busy_win[w, col] += finish - begin
            return
        busy_win[w, col] += edge - begin
        begin = edge
        w += 1


@_njit_inline
def _meter_fast(busy_win, busy_meas, col, begin, finish, window, inv_window, mstart, mend):
    """:func:`_meter` with its common case inlined: inside one window and wholly inside or
    outside the measured interval."""
    w = int(begin * inv_window)
    if (w < busy_win.shape[0] and finish <= (w + 1) * window
            and (finish <= mstart or begin >= mend or (mstart <= begin and finish <= mend))):
        busy = finish - begin
        busy_win[w, col] += busy
        if mstart <= begin and finish <= mend:
            busy_meas[col] += busy
        return
    _meter(busy_win, busy_meas, col, begin, finish, window, mstart, mend)


@_njit_inline
def _push(ht, hs, hp, n, t, seq, payload):
    """Insert an event into the binary min-heap of (time, seq); returns the new size."""
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        pt = ht[parent]
        if pt < t or (pt == t and hs[parent] < seq):
            break
        ht[i], hs[i], hp[i] = pt, hs[parent], hp[parent]
        i = parent
    ht[i], hs[i], hp[i] = t, seq, payload
    return n + 1


@_njit_inline
def _replace_top(ht, hs, hp, n, t, seq, payload):
    """Replace the root of the heap (the caller has read it) by a new event: one sift
    down where a pop and a push would take two; returns the size (unchanged)."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        right = child + 1
        if right < n and (ht[right] < ht[child] or (ht[right] == ht[child] and hs[right] < hs[child])):
            child = right
        if t < ht[child] or (t == ht[child] and seq < hs[child]):
            break
        ht[i], hs[i], hp[i] = ht[child], hs[child], hp[child]
        i = child
    ht[i], hs[i], hp[i] = t, seq, payload
    return n


@_njit_inline
def _pop(ht, hs, hp, n):
    """Remove the root of the heap (the caller has read it); returns the new size."""
    n -= 1
    if n > 0:  # the last entry takes the root's place and sifts down
        _replace_top(ht, hs, hp, n, ht[n], hs[n], hp[n])
    return n


# An event's payload packs (GPU pair of a message, task, hop, last-chunk flag, event
# kind) into one int64, so that a chunk's hop reads its route without touching the
# (large, randomly accessed) per-task arrays.
_HOP_BITS, _HOP_SHIFT, _LAST_SHIFT, _OP_SHIFT, _PAIR_SHIFT = 0x3FF, 2, 12, 13, 40
_OP_BITS = (1 << (_PAIR_SHIFT - _OP_SHIFT)) - 1
#: Most tasks of one graph and GPU pairs (src * G + dst) the payload can hold.
MAX_TASKS, MAX_PAIRS = _OP_BITS + 1, 1 << (63 - _PAIR_SHIFT)


@_njit
def _pack(op, hop, last, ev, pair=0):
    return (pair << _PAIR_SHIFT) | (op << _OP_SHIFT) | (last << _LAST_SHIFT) | (hop << _HOP_SHIFT) | ev


@_njit_inline
def _cross_link(size, link, now, inv_bw, latency, link_free, link_win, link_meas, link_bytes,
                window, inv_window, mstart, mend):
    """A chunk of ``size`` bytes enters ``link`` at ``now``: queue it FIFO and meter it;
    returns when it reaches the link's far end."""
    free = link_free[link]
    begin = free if free > now else now
    end = begin + size * inv_bw[link]
    link_free[link] = end
    link_bytes[link] += size
    _meter_fast(link_win, link_meas, link, begin, end, window, inv_window, mstart, mend)
    # SimPy's arithmetic (now + delay), so that equal inputs give bit-equal times.
    return now + (end + latency[link] - now)


@_njit_inline
def _enter_link(op, pair, next_hop, last, size, link, now, inv_bw, latency, link_free, link_win,
                link_meas, link_bytes, window, inv_window, mstart, mend, ht, hs, hp, size_h, seq):
    """:func:`_cross_link`, then schedule the chunk's arrival at hop ``next_hop``; returns
    the heap size."""
    t = _cross_link(size, link, now, inv_bw, latency, link_free, link_win, link_meas, link_bytes,
                    window, inv_window, mstart, mend)
    return _push(ht, hs, hp, size_h, t, seq, _pack(op, next_hop, last, _HOP, pair))


@_njit_inline
def _begin(op, now, kind, a, b, value, routes, route_len, inv_bw, latency, chunk, link_free,
           gpu_free, link_win, link_meas, link_bytes, gpu_win, gpu_meas, window, inv_window,
           mstart, mend, chunks_left, rest_of, ht, hs, hp, size_h, seq):
    """Start task ``op`` at ``now``; returns (heap size, seq, done-at-once flag).

    A compute task queues on its GPU; a message puts its chunks on the first link of
    its route; a message that uses no link (same GPU, zero bytes) is done at once.
    """
    if kind[op] == COMPUTE:
        g = a[op]
        begin = gpu_free[g] if gpu_free[g] > now else now
        end = begin + value[op]
        gpu_free[g] = end
        if end > begin:
            _meter(gpu_win, gpu_meas, g, begin, end, window, mstart, mend)
        size_h = _push(ht, hs, hp, size_h, now + (end - now), seq, _pack(op, 0, 0, _DONE))
        return size_h, seq + 1, False
    src, dst, nbytes = a[op], b[op], value[op]
    if src == dst or nbytes <= 0.0 or route_len[src, dst] == 0:
        return size_h, seq, True
    full = np.floor(nbytes / chunk)
    rest = nbytes - full * chunk
    count = int(full) + (1 if rest > 0.0 else 0)
    chunks_left[op] = count
    rest_of[op] = rest if rest > 0.0 else chunk
    link = routes[src, dst, 0]
    pair = src * route_len.shape[1] + dst
    for c in range(count):
        last = 1 if c == count - 1 else 0
        size_h = _enter_link(op, pair, 1, last, rest_of[op] if last else chunk, link, now, inv_bw,
                             latency, link_free, link_win, link_meas, link_bytes, window,
                             inv_window, mstart, mend, ht, hs, hp, size_h, seq)
        seq += 1
    return size_h, seq, False


def _run_graph(kind, a, b, value, start, deps, succ_ptr, succ_idx, routes, route_len,
               inv_bw, latency, chunk, link_free, gpu_free, link_win, link_meas, link_bytes,
               gpu_win, gpu_meas, window, mstart, mend):
    """Run the task graph; returns each task's finish time (``inf`` if never started).

    Parameters
    ----------
    kind : int8[n]
        :data:`COMPUTE` or :data:`MESSAGE` per task.
    a, b : int64[n]
        Compute: GPU, unused. Message: source and destination GPU.
    value : float64[n]
        Compute: seconds. Message: bytes.
    start : float64[n]
        Earliest start of each task.
    deps : int64[n]
        Number of predecessors (modified in place).
    succ_ptr, succ_idx : int64[n+1], int64[m]
        Successors of task ``i`` are ``succ_idx[succ_ptr[i]:succ_ptr[i+1]]``.
    routes, route_len : int64[G, G, H], int64[G, G]
        Link ids of every GPU pair's route (at most 1023 hops) and its length.
    inv_bw, latency : float64[L]
        Per link: seconds per byte, and propagation + switching delay.
    chunk : float
        Bytes per chunk.
    link_free, gpu_free : float64[L], float64[G]
        Time each link / GPU is next free (read and updated).
    link_win, gpu_win : float64[W, L], float64[W, G]
        Busy seconds per window (added to).
    link_meas, gpu_meas, link_bytes : float64[L], float64[G], float64[L]
        Busy seconds inside ``[mstart, mend)`` and bytes carried (added to).

    Event times are computed as SimPy computes them (``now + (when - now)``), so
    that equal inputs give bit-equal times.
    """
    n = kind.shape[0]
    gpus = route_len.shape[0]
    if n > MAX_TASKS or gpus * gpus > MAX_PAIRS:
        raise ValueError("task graph too large for the kernel's event payload")
    pair_routes = routes.reshape((gpus * gpus, routes.shape[2]))
    pair_len = route_len.reshape(gpus * gpus)
    inv_window = 1.0 / window
    finish = np.full(n, np.inf)
    chunks_left = np.zeros(n, dtype=np.int64)
    rest_of = np.zeros(n)
    cap = 1024
    for i in range(n):
        if kind[i] == MESSAGE:
            cap += int(np.ceil(value[i] / chunk)) + 1
        else:
            cap += 1
    ht = np.empty(cap)
    hs = np.empty(cap, dtype=np.int64)
    hp = np.empty(cap, dtype=np.int64)
    stack = np.empty(max(n, 1), dtype=np.int64)
    size_h = 0
    seq = 0
    for i in range(n):
        if deps[i] == 0:
            size_h = _push(ht, hs, hp, size_h, start[i], seq, _pack(i, 0, 0, _START))
            seq += 1
    while size_h > 0:
        now, payload = ht[0], hp[0]
        ev = payload & 3
        hop = (payload >> _HOP_SHIFT) & _HOP_BITS
        op = (payload >> _OP_SHIFT) & _OP_BITS
        pair = payload >> _PAIR_SHIFT
        if ev == _HOP and hop != pair_len[pair]:
            # A chunk crosses a node on its way: its one new event (the arrival at the next
            # hop) takes its place at the top of the heap.
            last = (payload >> _LAST_SHIFT) & 1
            t = _cross_link(rest_of[op] if last else chunk, pair_routes[pair, hop], now, inv_bw,
                            latency, link_free, link_win, link_meas, link_bytes, window,
                            inv_window, mstart, mend)
            size_h = _replace_top(ht, hs, hp, size_h, t, seq, _pack(op, hop + 1, last, _HOP, pair))
            seq += 1
            continue
        size_h = _pop(ht, hs, hp, size_h)
        if ev == _START:
            size_h, seq, instant = _begin(op, now, kind, a, b, value, routes, route_len, inv_bw,
                                          latency, chunk, link_free, gpu_free, link_win,
                                          link_meas, link_bytes, gpu_win, gpu_meas, window,
                                          inv_window, mstart, mend, chunks_left, rest_of,
                                          ht, hs, hp, size_h, seq)
            if instant:
                # As SimPy's Timeout(0) for a message that uses no link: done in a new event.
                size_h = _push(ht, hs, hp, size_h, now, seq, _pack(op, 0, 0, _DONE))
                seq += 1
            continue
        if ev == _HOP:  # the last hop
            chunks_left[op] -= 1
            if chunks_left[op] > 0:
                continue
            # The last chunk is in: the message is done now (no extra event, as in SimPy).
        # The task is done at `now`: release its successors. A released task starts at
        # once, in this event (no heap round trip), unless its own start time is later.
        finish[op] = now
        top = 0
        stack[top] = op
        top += 1
        while top > 0:
            top -= 1
            done = stack[top]
            for j in range(succ_ptr[done], succ_ptr[done + 1]):
                nxt = succ_idx[j]
                deps[nxt] -= 1
                if deps[nxt] != 0:
                    continue
                if start[nxt] > now:
                    size_h = _push(ht, hs, hp, size_h, start[nxt], seq, _pack(nxt, 0, 0, _START))
                    seq += 1
                    continue
                size_h, seq, instant = _begin(nxt, now, kind, a, b, value, routes, route_len,
                                              inv_bw, latency, chunk, link_free, gpu_free,
                                              link_win, link_meas, link_bytes, gpu_win,
                                              gpu_meas, window, inv_window, mstart, mend,
                                              chunks_left, rest_of, ht, hs, hp, size_h, seq)
                if instant:
                    finish[nxt] = now
                    stack[top] = nxt
                    top += 1
    return finish


run_graph = _njit(_run_graph) if numba is not None else _run_graph
#: The same loop as plain Python (the reference the compiled version is checked against).
run_graph_py = _run_graph


class LinkState:
    """A cluster's links and GPUs as the kernel sees them, kept across :meth:`run` calls.

    Parameters
    ----------
    cluster : helios.topology.Cluster
    chunk : float
        Bytes per chunk.
    window, horizon : float
        Width of a metering window and the time by which everything has ended, s.
    measure_start, measure_end : float
        The measured interval.

    Attributes
    ----------
    link_free, gpu_free : ndarray
        When each link / GPU is next free.
    link_win, gpu_win : ndarray, shape (windows, links) / (windows, GPUs)
        Busy seconds per window.
    link_meas, gpu_meas, link_bytes : ndarray
        Busy seconds inside the measured interval, and bytes each link carried.
    """

    def __init__(self, cluster, chunk: float, window: float = 1.0, horizon: float = 1.0,
                 measure_start: float = 0.0, measure_end: float = 1.0) -> None:
        from helios.sim.adaptation.base import route_table

        self.routes = route_table(cluster)
        self.route_len = (self.routes < cluster.num_links).sum(axis=2).astype(np.int64)
        self.inv_bw = 1.0 / cluster.link_bandwidth
        self.latency = cluster.link_latency.astype(float)
        self.chunk, self.window = float(chunk), float(window)
        self.start, self.end = float(measure_start), float(measure_end)
        windows = int(np.ceil(horizon / window)) + 1
        links, gpus = cluster.num_links, cluster.num_gpus
        self.link_free, self.gpu_free = np.zeros(links), np.zeros(gpus)
        self.link_win, self.gpu_win = np.zeros((windows, links)), np.zeros((windows, gpus))
        self.link_meas, self.gpu_meas = np.zeros(links), np.zeros(gpus)
        self.link_bytes = np.zeros(links)

    def run(self, arrays: tuple[np.ndarray, ...], compiled: bool = True) -> np.ndarray:
        """Run a graph (:meth:`helios.sim.taskgraph.TaskGraph.arrays`) from the current state;
        its finish times."""
        fn = run_graph if compiled else run_graph_py
        return fn(*arrays, self.routes, self.route_len, self.inv_bw, self.latency, self.chunk,
                  self.link_free, self.gpu_free, self.link_win, self.link_meas, self.link_bytes,
                  self.gpu_win, self.gpu_meas, self.window, self.start, self.end)
