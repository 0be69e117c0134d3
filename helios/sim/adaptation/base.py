"""Monitoring, memory accounting, transfers and evictions shared by the dynamic strategies.

**Monitoring** (every window, :meth:`AdaptationEngine.observe`): the token-expert
pairs each (layer, expert) received in the window (``sim.window_expert_pairs``, read
and reset), as pairs/s, smoothed by an EWMA of weight ``ewma_alpha`` on the newest
window: the counts of completed windows are all the engines read. The engine acts only while requests arrive
(``t <= sim.duration_s``): during the drain nothing is left to adapt to.

**Schedule.** The engine decides every ``interval_s`` (rounded to whole windows; null:
every window) on the EWMA loads, or, with ``count_window_s`` set, on the mean load of
the last ``count_window_s`` (whole windows), as vLLM and SGLang count over a window.

**Memory and transfers.** A GPU has ``spec.slots_per_gpu`` expert slots per layer. A
slot is *held* by a serving replica or by an incoming transfer (reserved when the
transfer starts), so held <= slots at every instant. An expert never gains a replica
while it has ``max(max_replicas_per_expert, its initial replica count)`` serving or
incoming. A new replica copies ``spec.expert_bytes`` from the serving replica of the
expert with the earliest idle-network delivery (:meth:`Cluster.transfer_time`, the
engine's store-and-forward model) with ``sim.network.send``: the bytes share the FIFO link queues with
token traffic, by default one network chunk at a time (``paced_transfers``, see
:meth:`AdaptationEngine._send_paced`). With a budget ``migration_gbyte_s`` (B), the
copies are paced by a token bucket one piece deep (a piece: a chunk, or a whole unpaced
copy): a piece of ``c`` bytes leaves once the budget of the pieces before it is spent
and then holds the budget for ``c / B``, in the order the pieces asked, with no credit
banked while nothing waits. So by time ``t`` the copies of a stretch of copying that
started at ``t0`` have put at most ``B x (t - t0)`` bytes plus the last piece on the
network, and a copy that is slower than B on its own is not slowed
(:meth:`AdaptationEngine._release`). The replica is added to the serving set
(``sim.set_replicas``) only when the last byte has arrived. An eviction takes the
replica out of the serving set at once and frees its slot at once; messages dispatched to it before the eviction
still compute there (its weights are taken to live until its queued batches ran).
The last replica of an expert is never evicted, nor any replica of an expert with a
transfer in flight (the transfer reads from one of them).

**Records.** ``sim.adaptation_events`` gets one dict per action (``time_s, action,
layer, expert, from_gpu, to_gpu, bytes``; actions ``transfer_start``,
``replica_ready``, ``evict_for_memory``, ``evict_rebalance``);
``replicas_added`` counts ready replicas, ``replication_bytes`` bytes put on the
network; ``budget_log`` (time, bytes) per piece released under a budget. The
``replication_bytes_in_flight`` of window ``w``'s time-series sample is
the *peak* of bytes in flight during the window (a snapshot at its start would miss
transfers shorter than a window).
"""

from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

_ROUTE_TABLES: "weakref.WeakKeyDictionary[Any, np.ndarray]" = weakref.WeakKeyDictionary()


def route_table(cluster: Any) -> np.ndarray:
    """Link ids of every GPU pair's route, shape (G, G, max hops), padded with ``num_links``."""
    table = _ROUTE_TABLES.get(cluster)
    if table is None:
        gpus, pad = cluster.num_gpus, cluster.num_links
        routes = [cluster.route(s, d) for s in range(gpus) for d in range(gpus)]
        table = np.full((gpus * gpus, max(1, max(map(len, routes)))), pad, dtype=np.int64)
        for i, route in enumerate(routes):
            table[i, :len(route)] = route
        table = table.reshape(gpus, gpus, -1)
        _ROUTE_TABLES[cluster] = table
    return table


@dataclass
class Transfer:
    """One replica's weights on their way from ``src`` to ``dst``."""

    layer: int
    expert: int
    src: int
    dst: int
    nbytes: float
    start_s: float


class AdaptationEngine:
    """Monitoring, memory accounting, transfers and evictions shared by the dynamic strategies.

    Parameters
    ----------
    sim : helios.sim.engine.Simulation
    cfg : helios.config.CellConfig
        Reads ``strategy.adaptation``, ``sim.window_s`` and ``scenario.tokens_per_request``.
    """

    def __init__(self, sim: Any, cfg: Any) -> None:
        self.sim, self.cell_cfg, self.cfg = sim, cfg, cfg.strategy.adaptation
        self.window = cfg.sim.window_s
        self.slots = sim.spec.slots_per_gpu
        layers, gpus = sim.layers, sim.num_gpus
        self.held = np.zeros((layers, gpus), dtype=int)
        for layer, row in enumerate(sim.replicas):
            for replicas in row:
                self.held[layer, replicas] += 1
        self.initial_counts = np.array([[len(r) for r in row] for row in sim.replicas])
        self.ewma: np.ndarray | None = None
        self.pending: dict[tuple[int, int], list[Transfer]] = {}
        self.decisions = 0
        """Windows in which the engine decided (``adapt_decisions`` in the cells table)."""
        adapt = cfg.strategy.adaptation
        self.every = 1 if adapt.interval_s is None else max(1, round(adapt.interval_s / self.window))
        keep = None if adapt.count_window_s is None else max(1, round(adapt.count_window_s / self.window))
        self._rates: collections.deque = collections.deque(maxlen=keep)
        self._peak_in_flight = 0.0
        self.share = np.asarray(sim.workload.source_distribution(), dtype=float)
        self.budget = None if adapt.migration_gbyte_s is None else adapt.migration_gbyte_s * 1e9
        self._budget_free_at = 0.0
        self.budget_log: list[tuple[float, float]] = []
        sim.adaptation_engine = self  # lets tests and probes inspect the engine

    # ------------------------------------------------------------------ process
    def run(self):
        """The SimPy process: observe and act at every window boundary."""
        env = self.sim.env
        while True:
            yield env.timeout(self.window)
            w = int(round(env.now / self.window)) - 1
            self._close_window(w)
            self.observe(w)
            if env.now <= self.sim.end and (w + 1) % self.every == 0:
                self.decisions += 1
                self.act()

    def _close_window(self, w: int) -> None:
        samples = self.sim.window_samples
        if w < len(samples):
            samples[w]["replication_bytes_in_flight"] = self._peak_in_flight
        self._peak_in_flight = self.sim.replication_bytes_in_flight

    def observe(self, w: int) -> None:
        """Fold window ``w``'s expert counts into the load EWMA."""
        sim, a = self.sim, self.cfg.ewma_alpha
        rate = sim.window_expert_pairs / self.window
        sim.window_expert_pairs[...] = 0.0
        self._rates.append(rate)
        self.ewma = rate if self.ewma is None else a * rate + (1 - a) * self.ewma
        if self.cfg.count_window_s is not None:  # the engines' window: a plain mean, no EWMA
            self.ewma = np.mean(self._rates, axis=0)

    def act(self) -> None:
        """Adaptation decisions of one window (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def count(self, layer: int, expert: int) -> int:
        """Replicas of (layer, expert) serving or incoming."""
        return len(self.sim.replicas[layer][expert]) + len(self.pending.get((layer, expert), ()))

    def holders(self, layer: int, expert: int) -> set[int]:
        """GPUs that serve (layer, expert) or receive a copy of it."""
        return set(self.sim.replicas[layer][expert]) | {
            t.dst for t in self.pending.get((layer, expert), ())}

    def free_slots(self, layer: int) -> np.ndarray:
        """Free expert slots per GPU in ``layer`` (incoming transfers hold theirs)."""
        return self.slots - self.held[layer]

    def cap(self, layer: int, expert: int) -> int:
        """Most replicas the engine lets (layer, expert) reach."""
        return max(self.cfg.max_replicas_per_expert, int(self.initial_counts[layer, expert]))

    def _event(self, action: str, layer: int, expert: int, src: int, dst: int, nbytes: float) -> None:
        self.sim.adaptation_events.append({
            "time_s": float(self.sim.env.now), "action": action, "layer": int(layer),
            "expert": int(expert), "from_gpu": int(src), "to_gpu": int(dst), "bytes": float(nbytes)})

    # ------------------------------------------------------------------ actions
    def start_transfer(self, layer: int, expert: int, dst: int, src: int | None = None) -> Transfer:
        """Copy (layer, expert) onto ``dst`` from ``src`` (default: the serving replica with
        the cheapest path to ``dst``); it serves from the moment it has arrived."""
        sim = self.sim
        serving = sim.replicas[layer][expert]
        if dst in self.holders(layer, expert):
            raise ValueError(f"GPU {dst} already holds layer {layer} expert {expert}")
        if self.free_slots(layer)[dst] <= 0:
            raise ValueError(f"GPU {dst} has no free slot in layer {layer}")
        if src is None:
            nbytes, chunk = sim.spec.expert_bytes, sim.network.chunk
            src = min(serving, key=lambda g: (sim.cluster.transfer_time(g, dst, nbytes, chunk), g))
        transfer = Transfer(layer, expert, int(src), int(dst), sim.spec.expert_bytes, sim.env.now)
        self.held[layer, dst] += 1
        self.pending.setdefault((layer, expert), []).append(transfer)
        sim.replication_bytes += transfer.nbytes
        sim.replication_bytes_in_flight += transfer.nbytes
        self._peak_in_flight = max(self._peak_in_flight, sim.replication_bytes_in_flight)
        self._event("transfer_start", layer, expert, transfer.src, dst, transfer.nbytes)
        if self.cfg.paced_transfers:
            self._send_paced(transfer, transfer.nbytes)
        else:
            self._release(transfer.nbytes, lambda: sim.network.send(
                transfer.src, dst, transfer.nbytes, lambda: self._arrived(transfer)))
        return transfer

    def _release(self, nbytes: float, send) -> None:
        """Call ``send()`` when the migration budget lets ``nbytes`` go (at once without one).

        One queue over all of the engine's copies: the piece leaves at the later of now
        and the end of the previous piece's budget, and holds the budget for
        ``nbytes / B`` from there.
        """
        if self.budget is None:
            send()
            return
        env = self.sim.env
        release = max(env.now, self._budget_free_at)
        self._budget_free_at = release + nbytes / self.budget
        self.budget_log.append((release, nbytes))
        if release == env.now:
            send()
        else:
            env.timeout(release - env.now).callbacks.append(lambda _event: send())

    def _send_paced(self, transfer: Transfer, left: float) -> None:
        """Send the weights one network chunk at a time, the next when the last has arrived.

        A bulk message enqueues all its chunks on the first link at once, so token
        messages arriving behind it wait for the whole transfer (FIFO). Paced, a
        token waits for at most one weight chunk per link; the transfer runs slightly
        slower (one route latency per chunk) - a background, low-priority copy. Each
        chunk waits for the migration budget (:meth:`_release`).
        """
        piece = min(left, self.sim.network.chunk)
        rest = left - piece
        done = (lambda: self._send_paced(transfer, rest)) if rest > 0 else (
            lambda: self._arrived(transfer))
        self._release(piece, lambda: self.sim.network.send(transfer.src, transfer.dst, piece, done))

    def _arrived(self, transfer: Transfer) -> None:
        sim, key = self.sim, (transfer.layer, transfer.expert)
        self.pending[key].remove(transfer)
        if not self.pending[key]:
            del self.pending[key]
        sim.replication_bytes_in_flight -= transfer.nbytes
        sim.set_replicas(transfer.layer, transfer.expert,
                         sim.replicas[transfer.layer][transfer.expert] + [transfer.dst])
        sim.replicas_added += 1
        self._event("replica_ready", transfer.layer, transfer.expert, transfer.src, transfer.dst,
                    transfer.nbytes)
        self.on_ready(transfer)

    def on_ready(self, transfer: Transfer) -> None:
        """Hook run when a transfer has arrived and its replica serves."""

    def evict(self, layer: int, expert: int, gpu: int, action: str) -> None:
        """Stop serving (layer, expert) on ``gpu`` and free its slot."""
        sim = self.sim
        serving = sim.replicas[layer][expert]
        if len(serving) <= 1 or gpu not in serving:
            raise ValueError(f"cannot evict layer {layer} expert {expert} from GPU {gpu}: {serving}")
        if (layer, expert) in self.pending:
            raise ValueError(f"layer {layer} expert {expert} has a transfer in flight")
        sim.set_replicas(layer, expert, [g for g in serving if g != gpu])
        self.held[layer, gpu] -= 1
        sim.replicas_evicted += 1
        self._event(action, layer, expert, gpu, -1, 0.0)
