"""Runtime adaptation under ``serving=ep``: counts, rebalance schedule, weight copies.

:class:`EpAdapter` runs between steps (the engine calls :meth:`EpAdapter.before_step`
and :meth:`EpAdapter.after_step`); subclasses (:mod:`helios.sim.ep.adapters`) say
what a rebalance wants in :meth:`EpAdapter.plan`.

**Telemetry.** An adapter sees only the expert counts of completed steps (the
token-expert pairs the gate drew, per layer and expert, as vLLM's and SGLang's expert
load recorders count them), summed over the last ``window_steps`` of them, and of those
only the steps that ended at least ``telemetry.delay_s`` before the decision (null: no
delay beyond the window itself, in ``serving=ep``). No link or queue state is read.

**Schedule.** A rebalance is due after every ``interval_steps`` completed steps while
requests arrive (``t <= sim.duration_s``). ``layers_per_chunk`` splits it into chunks of
layers, one chunk applied per step boundary, as SGLang's ``EPLBManager`` does (one
forward pass between chunks).

**Weight copies.** A layer change lists copies ``(expert, src, dst)``: ``dst`` gains the
expert and ``src`` is the nearest GPU that holds it now (unloaded store-and-forward time
of the copy, lowest id on ties). Each copy is ``spec.expert_bytes`` over the simulated
network (the compiled kernel, so copies and token messages share the FIFO link queues
and the link meters count them).

* ``stop_the_world`` (vLLM's and SGLang's default): all copies of a chunk start at the
  step boundary and no step starts until the last has arrived; the chunk's layers then
  switch to their new placement.
* ``async``: copies go in the background while steps run. With a budget
  ``migration_gbyte_s`` (B), each step boundary releases at most ``B x`` (time since
  the last boundary) bytes of the copies not yet sent, oldest first, as messages
  starting at the boundary (so the bytes released by time ``t`` never exceed
  ``B x (t - t0)``, ``t0`` when copying started, with no banking of unused budget while
  nothing waits). A layer switches at the first boundary after all its copies arrived;
  until then it serves from its old placement (the copies land in a staging buffer, as
  vLLM's asynchronous EPLB does).

Staging buffers for the incoming weights are not counted against expert memory.

**Records.** ``events`` rows per action (``rebalance``, ``rebalance_skipped``,
``transfer_start``, ``replica_ready``, ``evict_rebalance``) with the columns of the
request model's adaptation events; ``replicas_added``, ``replicas_evicted``,
``replication_bytes``, ``rebalances`` and ``migration_pause_s`` per cell;
``budget_log`` (time, bytes released) for the budget test.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helios.placement.incremental import held_matrix
from helios.sim.taskgraph import TaskGraph


#: Steps of counts kept beyond a window, for ``telemetry.delay_s``.
HISTORY_SLACK = 256


@dataclass
class Copy:
    """One expert's weights on their way from ``src`` to ``dst``."""

    layer: int
    expert: int
    src: int
    dst: int
    nbytes: float
    left: float
    arrive_s: float = np.inf


@dataclass
class LayerChange:
    """A layer's new replica sets and shares, and the copies it waits for."""

    layer: int
    replicas: list[list[int]]
    shares: list[list[float]] | None
    copies: list[Copy] = field(default_factory=list)


class EpAdapter:
    """Counts, schedule and weight copies shared by the ``serving=ep`` dynamic strategies.

    Parameters
    ----------
    sim : helios.sim.ep.engine.EpSimulation
    cfg : helios.config.CellConfig
    ctx : helios.placement.PlacementContext
        The cell's placement inputs (cluster, model, representative step).
    """

    def __init__(self, sim: Any, cfg: Any, ctx: Any) -> None:
        self.sim, self.cell_cfg, self.ctx = sim, cfg, ctx
        self.cfg = cfg.strategy.adaptation
        self.delay = cfg.telemetry.delay_s or 0.0
        self.replicas = [[list(g) for g in layer] for layer in sim.placement.replicas]
        self.shares = [[list(s) for s in layer] for layer in sim.placement.share_table()]
        self.history: deque[tuple[float, np.ndarray]] = deque()
        self.steps_done = 0
        self.chunks: list[list[LayerChange]] = []  # stop_the_world: chunks still to apply
        self.waiting: list[LayerChange] = []      # async: changes whose copies are under way
        self.unsent: deque[Copy] = deque()
        self.budget = None if self.cfg.migration_gbyte_s is None else self.cfg.migration_gbyte_s * 1e9
        self._last_boundary = self._accrue_from = 0.0
        self.budget_log: list[tuple[float, float]] = []
        self.events: list[dict[str, Any]] = []
        self.replicas_added = self.replicas_evicted = self.rebalances = 0
        self.replication_bytes = self.pause_s = 0.0

    @functools.cached_property
    def copy_time(self) -> np.ndarray:
        """Unloaded seconds to copy one expert from GPU ``s`` to ``d``, shape (G, G); built on
        the first copy (the oracle never copies)."""
        cl = self.sim.cluster
        nbytes, chunk = self.ctx.spec.expert_bytes, self.cell_cfg.sim.chunk_kib * 1024
        return np.array([[cl.transfer_time(s, d, nbytes, chunk) if s != d else 0.0
                          for d in range(cl.num_gpus)] for s in range(cl.num_gpus)])

    # ------------------------------------------------------------------ engine hooks
    def after_step(self, end_s: float, counts: np.ndarray) -> None:
        """Record one finished step's expert counts, shape (layers, experts)."""
        self.history.append((end_s, counts.astype(np.int32)))
        # The delay may hide the newest steps; 256 more than a window bounds the memory
        # (58 layers x 256 experts x 1256 steps of int32: 75 MB at vLLM's window of 1000).
        while len(self.history) > self.cfg.window_steps + HISTORY_SLACK:
            self.history.popleft()
        self.steps_done += 1

    def before_step(self, now: float) -> float:
        """Install finished changes, release budgeted bytes, rebalance when due.

        Returns the seconds serving pauses before the next step (stop_the_world).
        """
        self._install_arrived(now)
        pause = 0.0
        if self.chunks:
            pause = self._apply_chunk(now)
        elif self._due(now):
            self._rebalance(now)
            if self.chunks:
                pause = self._apply_chunk(now)
        if self.cfg.transfer == "async":
            self._release(now)
        self._last_boundary = now + pause
        self.pause_s += pause
        return pause

    # ------------------------------------------------------------------ policy
    def plan(self, now: float, counts: np.ndarray) -> list[LayerChange]:
        """The layer changes one rebalance wants (subclasses)."""
        raise NotImplementedError

    def window_counts(self, now: float) -> np.ndarray | None:
        """Expert counts of the last ``window_steps`` steps that ended by ``now - delay``."""
        seen = [c for end, c in self.history if end <= now - self.delay + 1e-12]
        if not seen:
            return None
        return np.sum(seen[-self.cfg.window_steps:], axis=0, dtype=np.int64).astype(float)

    def _due(self, now: float) -> bool:
        return (now <= self.sim.end and self.steps_done > 0 and not self.waiting
                and not self.unsent and self.steps_done % self.cfg.interval_steps == 0)

    def _rebalance(self, now: float) -> None:
        counts = self.window_counts(now)
        if counts is None or counts.sum() <= 0:
            return
        changes = [c for c in self.plan(now, counts) if c.copies or c.replicas != self.replicas[c.layer]]
        self.rebalances += 1
        self._event(now, "rebalance", -1, -1, -1, -1,
                    float(sum(copy.nbytes for c in changes for copy in c.copies)))
        if not changes:
            return
        if self.cfg.transfer == "async":
            for change in changes:
                self.waiting.append(change)
                for copy in change.copies:
                    self._event(now, "transfer_start", change.layer, copy.expert, copy.src,
                                copy.dst, copy.nbytes)
                    if not self.unsent:
                        self._accrue_from = now  # the budget accrues only while copies wait
                    self.unsent.append(copy)
            return
        per = self.cfg.layers_per_chunk or len(changes)
        self.chunks = [changes[i:i + per] for i in range(0, len(changes), per)]

    def change(self, layer: int, replicas: list[list[int]],
               shares: list[list[float]] | None) -> LayerChange:
        """A change of ``layer`` to ``replicas`` with its copies (nearest holder as source)."""
        G = self.sim.num_gpus
        held = held_matrix(self.replicas[layer], G)
        change = LayerChange(layer, [list(map(int, g)) for g in replicas], shares)
        nbytes = self.ctx.spec.expert_bytes
        for expert, gpus in enumerate(change.replicas):
            holders = np.flatnonzero(held[expert])
            for dst in gpus:
                if not held[expert, dst]:
                    src = int(holders[np.lexsort((holders, self.copy_time[holders, dst]))[0]])
                    change.copies.append(Copy(layer, expert, src, int(dst), nbytes, nbytes))
        return change

    # ------------------------------------------------------------------ copies
    def _apply_chunk(self, now: float) -> float:
        """stop_the_world: run one chunk's copies to completion; returns the pause."""
        chunk = self.chunks.pop(0)
        copies = [c for change in chunk for c in change.copies]
        end = now
        if copies:
            graph = TaskGraph()
            graph.message([c.src for c in copies], [c.dst for c in copies],
                          [c.nbytes for c in copies], now)
            end = float(self.sim.links.run(graph.arrays()).max())
            for c in copies:
                self._event(now, "transfer_start", c.layer, c.expert, c.src, c.dst, c.nbytes)
                self.replication_bytes += c.nbytes
                c.left, c.arrive_s = 0.0, end
        for change in chunk:
            self._install(end, change)
        return end - now

    def _release(self, now: float) -> None:
        """async: put up to the budget's bytes of the unsent copies on the network."""
        if not self.unsent:
            return
        since = max(self._last_boundary, self._accrue_from)
        allowance = np.inf if self.budget is None else self.budget * max(now - since, 0.0)
        size, sent = [], []
        while self.unsent and allowance > 0:
            copy = self.unsent[0]
            piece = min(copy.left, allowance)
            allowance -= piece
            copy.left -= piece
            size.append(piece)
            sent.append(copy)
            if copy.left <= 0:
                self.unsent.popleft()
        if not size:
            return
        graph = TaskGraph()
        graph.message([c.src for c in sent], [c.dst for c in sent], size, now)
        finish = self.sim.links.run(graph.arrays())
        released = float(np.sum(size))
        self.replication_bytes += released
        self.budget_log.append((now, released))
        for copy, t in zip(sent, finish):
            if copy.left <= 0:
                copy.arrive_s = float(t)

    def _install_arrived(self, now: float) -> None:
        done = [c for c in self.waiting if all(copy.arrive_s <= now for copy in c.copies)]
        for change in done:
            self.waiting.remove(change)
            self._install(max((c.arrive_s for c in change.copies), default=now), change)

    def _install(self, when: float, change: LayerChange) -> None:
        layer, old = change.layer, self.replicas[change.layer]
        for copy in change.copies:
            self._event(when, "replica_ready", layer, copy.expert, copy.src, copy.dst, copy.nbytes)
        self.replicas_added += len(change.copies)
        for expert, gpus in enumerate(old):
            for g in gpus:
                if g not in change.replicas[expert]:
                    self._event(when, "evict_rebalance", layer, expert, g, -1, 0.0)
                    self.replicas_evicted += 1
        shares = change.shares or [[1.0 / len(g)] * len(g) for g in change.replicas]
        self._set_layer(layer, change.replicas, shares)

    def _set_layer(self, layer: int, replicas: list[list[int]], shares: list[list[float]]) -> None:
        self.replicas[layer] = [list(g) for g in replicas]
        self.shares[layer] = [list(s) for s in shares]
        self.sim.set_layer(layer, self.replicas[layer], self.shares[layer])

    def _event(self, t: float, action: str, layer: int, expert: int, src: int, dst: int,
               nbytes: float) -> None:
        self.events.append({"time_s": float(t), "action": action, "layer": int(layer),
                            "expert": int(expert), "from_gpu": int(src), "to_gpu": int(dst),
                            "bytes": float(nbytes)})
