"""Link contention: every direction of every link is a FIFO queue of chunks.

Model. A message of ``S`` bytes is cut into chunks of at most ``chunk_bytes``. A chunk
that reaches link ``l`` waits until the link has sent everything queued before it,
then occupies the link for ``size / bandwidth[l]`` (serialisation) and arrives at the
next node ``latency[l]`` later (propagation + switching). Nodes store and forward
whole chunks, so the chunks of a long message pipeline across hops, as in
ASTRA-sim's congestion-aware network backend (Won et al., ISPASS 2023). A message is
delivered when its last chunk reaches the destination.

Since a link serves in arrival order at a fixed rate, its queue is fully described by
the time it next becomes free: a chunk arriving at ``t`` starts at
``max(t, free_at)``. Arrivals are handled in simulated-time order, so this is an exact
FIFO queue with one SimPy event per chunk and hop.

The :class:`LinkMeter` records each link's busy time per measurement window and over
the measured interval, so utilisations are busy-time fractions and lie in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import simpy
from simpy.events import Timeout


class LinkMeter:
    """Busy seconds and bytes of each link, per window and over the measured interval.

    Parameters
    ----------
    num_links : int
    window : float
        Width of a window, s.
    horizon : float
        Time by which every transfer has ended (sizes the window table).
    measure_start, measure_end : float
        The measured interval.
    """

    def __init__(self, num_links: int, window: float, horizon: float,
                 measure_start: float, measure_end: float) -> None:
        self.window = window
        self.inv_window = 1.0 / window
        self.num_windows = int(math.ceil(horizon / window)) + 1
        self.busy_windows = [[0.0] * num_links for _ in range(self.num_windows)]
        self.busy_measured = [0.0] * num_links
        self.bytes_total = [0.0] * num_links
        self.start, self.end = measure_start, measure_end

    def record(self, link: int, begin: float, finish: float, nbytes: float) -> None:
        """Account link ``link`` busy on ``[begin, finish)`` sending ``nbytes``."""
        self.bytes_total[link] += nbytes
        if finish > self.start and begin < self.end:
            self.busy_measured[link] += min(finish, self.end) - max(begin, self.start)
        # Work queued beyond the end of the table never happens: the run stops first.
        finish = min(finish, self.num_windows * self.window)
        if begin >= finish:
            return
        w = int(begin / self.window)
        while True:
            edge = (w + 1) * self.window
            if finish <= edge:
                self.busy_windows[w][link] += finish - begin
                return
            self.busy_windows[w][link] += edge - begin
            begin, w = edge, w + 1

    def utilisation(self) -> np.ndarray:
        """Busy fraction of each link over the measured interval: shape (num_links,)."""
        return np.asarray(self.busy_measured) / (self.end - self.start)

    def window_utilisation(self) -> np.ndarray:
        """Busy fraction per window and link: shape (num_windows, num_links)."""
        return np.asarray(self.busy_windows) / self.window


class Network:
    """Moves messages between GPUs over a cluster's routes with FIFO link queues.

    Parameters
    ----------
    env : simpy.Environment
    route : callable
        ``route(src_gpu, dst_gpu) -> tuple of link ids`` (``Cluster.route``).
    bandwidth, latency : sequence of float
        Per link: bytes/s and seconds.
    chunk_bytes : float
        Largest unit a link serialises at once.
    meter : LinkMeter
    """

    def __init__(self, env: simpy.Environment, route: Callable[[int, int], Sequence[int]],
                 bandwidth: Sequence[float], latency: Sequence[float], chunk_bytes: float,
                 meter: LinkMeter) -> None:
        self.env = env
        self.route = route
        self.inv_bw = [1.0 / b for b in bandwidth]
        self.latency = list(latency)
        self.chunk = float(chunk_bytes)
        self.free_at = [0.0] * len(self.inv_bw)
        self.meter = meter
        self.bytes_sent = 0.0
        self.bytes_delivered = 0.0

    def send(self, src: int, dst: int, nbytes: float, on_delivered: Callable[[], None]) -> None:
        """Start sending ``nbytes`` from GPU ``src`` to ``dst``; call ``on_delivered()`` at arrival.

        A message to the same GPU is delivered at once (no link is used).
        """
        path = self.route(src, dst)
        self.bytes_sent += nbytes
        if not path or nbytes <= 0:
            self.bytes_delivered += nbytes
            Timeout(self.env, 0.0).callbacks.append(lambda _e: on_delivered())
            return
        full, rest = divmod(nbytes, self.chunk)
        sizes = [self.chunk] * int(full) + ([rest] if rest > 0 else [])
        msg = _Message(path, len(sizes), on_delivered)
        for size in sizes:
            self._advance(_Chunk(self, msg, size))

    def backlog(self, link: int) -> float:
        """Seconds of queued work on ``link`` ahead of a chunk arriving now."""
        return max(0.0, self.free_at[link] - self.env.now)

    def _advance(self, chunk: "_Chunk") -> None:
        """The chunk has reached the entry of link ``path[hop]`` (or its destination)."""
        msg = chunk.msg
        path = msg.path
        hop = chunk.hop
        size = chunk.size
        if hop == len(path):
            self.bytes_delivered += size
            msg.chunks_left -= 1
            if msg.chunks_left == 0:
                msg.on_delivered()
            return
        link = path[hop]
        now = self.env._now  # hot path: SimPy's clock without the property call
        free = self.free_at[link]
        begin = free if free > now else now
        finish = begin + size * self.inv_bw[link]
        self.free_at[link] = finish
        meter = self.meter
        w = int(begin * meter.inv_window)
        if finish <= (w + 1) * meter.window and w < meter.num_windows and (
                finish <= meter.start or begin >= meter.end
                or (meter.start <= begin and finish <= meter.end)):
            # Inlined common case of LinkMeter.record: within one window, and wholly
            # inside or outside the measured interval.
            busy = finish - begin
            meter.bytes_total[link] += size
            meter.busy_windows[w][link] += busy
            if meter.start <= begin and finish <= meter.end:
                meter.busy_measured[link] += busy
        else:
            meter.record(link, begin, finish, size)
        chunk.hop = hop + 1
        Timeout(self.env, finish + self.latency[link] - now).callbacks.append(chunk)


class _Chunk:
    """A chunk in flight; called by SimPy when it reaches its next hop."""

    __slots__ = ("net", "msg", "size", "hop")

    def __init__(self, net: Network, msg: "_Message", size: float) -> None:
        self.net, self.msg, self.size, self.hop = net, msg, size, 0

    def __call__(self, _event: object) -> None:
        self.net._advance(self)


class _Message:
    __slots__ = ("path", "chunks_left", "on_delivered")

    def __init__(self, path: Sequence[int], chunks: int, on_delivered: Callable[[], None]) -> None:
        self.path = path
        self.chunks_left = chunks
        self.on_delivered = on_delivered
