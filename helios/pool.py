"""The scheduling loop of a sweep: simulation actors, the cells queued on each, and progress.

:class:`WorkerPool` submits cells to :class:`~helios.worker.SimulationWorker` actors, up
to :data:`PIPELINE_DEPTH` per actor, writes each result's Parquet parts as it comes back
(``ray.wait``), defers cells another sweep is running, and replaces an actor whose
process died, charging only the cell it was running. :func:`helios.runner.run_sweep`
plans the cells and starts Ray; the module docstring there says how a sweep runs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from helios.config import CellConfig, to_dict
from helios.errors import StorageError
from helios.placement.cache import cache_root
from helios.placement.ray_cache import start_cache_actor
from helios.signals import STOP_SIGNAL
from helios.worker import SimulationWorker

#: Cells queued on one actor at a time: one running, one ready to start.
PIPELINE_DEPTH = 2

#: Seconds between attempts to claim cells that another sweep is running.
DEFER_POLL_S = 0.5


def write_parts(sweep_dir: Path, cell_id: str, parts: Sequence[tuple[str, bytes]]) -> None:
    """Write encoded parts atomically (hidden temporary name, then rename), in order."""
    from helios.results import part_path, write_atomic

    for table, data in parts:
        write_atomic(part_path(sweep_dir, table, cell_id), data)


@dataclass
class Cell:
    """One cell to run: its config, id, results folder and a label for messages."""

    cfg: CellConfig
    cell_id: str
    sweep_dir: Path
    label: str
    deaths: int = 0
    claim: Any = None  # helios.storage.Claim while this driver holds the cell


@dataclass
class SweepReport:
    """What a sweep did; ``exit_code`` is 1 if any cell finally failed."""

    total: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    by_other_sweep: list[str] = field(default_factory=list)
    duplicates: int = 0
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    sweep_dirs: list[str] = field(default_factory=list)
    workers: int = 0
    worker_deaths: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    ray_start_s: float = 0.0
    pool_s: float = 0.0
    shutdown_s: float = 0.0
    busy_s: float = 0.0
    encode_s: float = 0.0
    placement: dict[str, int] = field(default_factory=dict)
    ray: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        """The end-of-sweep summary, one message per line."""
        ran = len(self.done) + len(self.failed)
        rate = 60.0 * ran / self.wall_s if self.wall_s > 0 else 0.0
        p = self.placement
        saved = p.get("memory_hits", 0) + p.get("disk_hits", 0) + p.get("waited", 0)
        out = [
            f"helios: {self.total} cells: {len(self.done)} run, {len(self.skipped)} skipped "
            f"(already done), {len(self.failed)} failed; {self.workers} workers, "
            f"{self.wall_s:.1f} s wall, {rate:.1f} cells/min",
            f"helios: placements: {p.get('solves', 0)} solved, {saved} saved by the cache "
            f"({p.get('disk_hits', 0) + p.get('memory_hits', 0)} hits, "
            f"{p.get('waited', 0)} waited for a solve in progress)",
            "helios: results in " + ", ".join(self.sweep_dirs),
        ]
        if self.by_other_sweep:
            out.append(f"helios: {len(self.by_other_sweep)} of the skipped cells were finished "
                       "meanwhile by another sweep into the same folder")
        if self.ray:
            out.append(f"helios: ran on {self.ray}")
            out.append(f"helios: time: {self.ray_start_s:.1f} s starting Ray, "
                       f"{self.startup_s:.1f} s until every worker was up, "
                       f"{self.pool_s:.1f} s in the worker pool, "
                       f"{self.shutdown_s:.1f} s shutting Ray down")
        if self.worker_deaths:
            out.append(f"helios: {self.worker_deaths} worker processes died; "
                       "their cells were retried")
        if self.failed:
            out.append(f"helios: {len(self.failed)} cells FAILED (see the failures table):")
            for cid, f in self.failed.items():
                first_line = (f["message"].splitlines() or [""])[0]
                out.append(f"  {cid} [{f['label']}]: {f['error_type']}: {first_line}")
        return out


class LineProgress:
    """Progress for a non-terminal (a log file, CI): one line at every 10% of the cells
    and at least every ``interval_s`` seconds, never a redraw; the tqdm calls the pool
    makes (``update``, ``write``, ``set_postfix_str``, ``close``)."""

    def __init__(self, total: int, interval_s: float = 30.0, file: Any = None) -> None:
        self.total, self.n, self.interval_s = total, 0, interval_s
        self.file = file if file is not None else sys.stderr
        self.t0 = self._last = time.monotonic()
        self._next_tenth, self.postfix = 1, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = 10 * self.n // max(self.total, 1)
        if tenth >= self._next_tenth or now - self._last >= self.interval_s:
            self._next_tenth = tenth + 1
            self._last = now
            print(f"helios sweep: {self.n}/{self.total} cells ({100 * self.n // max(self.total, 1)}%), "
                  f"{now - self.t0:.0f} s; {self.postfix}", file=self.file, flush=True)

    def write(self, text: str, file: Any = None) -> None:
        print(text, file=file or self.file, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        """Nothing to tidy: every line is already whole."""


class _Slot:
    """One worker actor and the cells submitted to it, oldest (the running one) first."""

    def __init__(self, caches: dict[str, Any]) -> None:
        self.actor = SimulationWorker.options(scheduling_strategy="SPREAD").remote(caches)
        self.actor_id: str | None = None
        self.ready_ref = self.actor.info.remote()
        self.ready = False
        self.pid: int | None = None
        self.queue: deque[tuple[Any, Cell]] = deque()


class WorkerPool:
    """The scheduling loop of :func:`helios.runner.run_sweep`."""

    def __init__(self, todo: list[Cell], workers: int, max_retries: int, report: SweepReport,
                 progress: bool, print_summary: bool,
                 on_result: Callable[[str, str, list[int]], None] | None) -> None:
        from tqdm import tqdm

        self.pending = deque(todo)
        self.max_retries = max_retries
        self.report = report
        self.print_summary = print_summary
        self.on_result = on_result
        self.caches = {str(root): start_cache_actor(root)
                       for root in {cache_root(c.cfg) for c in todo}}
        self.t0 = time.perf_counter()
        # Workers start (processes, imports) while the cache actor's process starts too:
        # the first stats call waits for that actor, so it comes after.
        self.slots = [_Slot(self.caches) for _ in range(workers)]
        self.stats0 = self._cache_stats()
        self.starting = workers  # initial workers not yet ready
        self.inflight: dict[Any, tuple[_Slot, Cell]] = {}
        self.deferred: list[Cell] = []  # cells another sweep holds the claim of
        self.deferred_at = 0.0
        if progress and not sys.stderr.isatty():  # a log file: a line per 10% or 30 s
            self.bar: Any = LineProgress(len(todo))
        else:
            self.bar = tqdm(total=len(todo), unit="cell", file=sys.stderr, disable=not progress,
                            dynamic_ncols=True, desc="helios sweep", mininterval=0.5)

    def _cache_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for stats in ray.get([a.stats.remote() for a in self.caches.values()]):
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def run(self) -> None:
        try:
            while self.pending or self.inflight or self.deferred:
                if self.deferred and time.monotonic() - self.deferred_at >= DEFER_POLL_S:
                    self.pending.extend(self.deferred)  # try their claims again
                    self.deferred.clear()
                self._fill()
                starting = {s.ready_ref: s for s in self.slots if not s.ready}
                if not self.inflight and not starting:  # only cells another sweep is running
                    time.sleep(DEFER_POLL_S)
                    continue
                ready, _ = ray.wait([*self.inflight, *starting], num_returns=1, timeout=1.0)
                if STOP_SIGNAL["signum"] is not None:  # a stop that Ray swallowed
                    raise KeyboardInterrupt
                for ref in ready:
                    if ref in starting:
                        self._started(starting[ref])
                    elif ref in self.inflight:
                        self._finished(ref)
                self._refresh()
        finally:
            for cell in [*self.pending, *(c for _, c in self.inflight.values())]:
                self._release(cell)
            self.bar.close()
            after = self._cache_stats()
            self.report.placement = {k: v - self.stats0.get(k, 0) for k, v in after.items()}
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)

    def _fill(self) -> None:
        for slot in self.slots:
            while slot.ready and len(slot.queue) < PIPELINE_DEPTH:
                cell = self._next_cell()
                if cell is None:
                    break
                ref = slot.actor.run.remote(cell.cfg, str(cache_root(cell.cfg)))
                slot.queue.append((ref, cell))
                self.inflight[ref] = (slot, cell)

    def _next_cell(self) -> Cell | None:
        """The next pending cell, claimed by this driver and not done; None if there is none."""
        from helios.results import part_is_whole, part_path
        from helios.storage import claim, holder

        while self.pending:
            cell = self.pending.popleft()
            if cell.claim is not None:  # re-queued after its worker died: still ours
                return cell
            lock = claim(cell.sweep_dir, cell.cell_id)
            if lock is None:
                if not self.deferred_at and self.print_summary:
                    who = holder(cell.sweep_dir, cell.cell_id) or "another process"
                    self.bar.write(f"helios: another sweep ({who}) is running cells of "
                                   f"{cell.sweep_dir}; running the others first", file=sys.stderr)
                self.deferred.append(cell)
                self.deferred_at = time.monotonic()
                continue
            if part_is_whole(part_path(cell.sweep_dir, "cells", cell.cell_id), cell.cell_id) \
                    and not cell.cfg.rerun:
                lock.release()  # another sweep finished it since plan()
                self.report.skipped.append(cell.cell_id)
                self.report.by_other_sweep.append(cell.cell_id)
                self.bar.update(1)
                continue
            cell.claim = lock
            return cell
        return None

    @staticmethod
    def _release(cell: Cell) -> None:
        if cell.claim is not None:
            cell.claim.release()
            cell.claim = None

    def _started(self, slot: _Slot) -> None:
        try:
            info = ray.get(slot.ready_ref)
            slot.pid, slot.actor_id, slot.ready = info["pid"], info["actor_id"], True
            if self.starting > 0:
                self.starting -= 1
                if self.starting == 0:  # the whole initial pool is up
                    self.report.startup_s = time.perf_counter() - self.t0
        except ray.exceptions.RayError:
            self._replace(slot)

    def _finished(self, ref: Any) -> None:
        slot, cell = self.inflight[ref]
        try:
            payload = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            self._worker_died(slot)
            return
        except ray.exceptions.RayError as exc:  # e.g. a result that failed to deserialise
            payload = {"ok": False, "error_type": type(exc).__name__, "message": str(exc),
                       "traceback": "", "host": ""}
        del self.inflight[ref]
        slot.queue.remove((ref, cell))
        self._record(cell, payload)

    def _record(self, cell: Cell, payload: dict[str, Any]) -> None:
        from helios.results import part_path

        self.report.busy_s += payload.get("run_s", 0.0)
        self.report.encode_s += payload.get("encode_s", 0.0)
        if payload["ok"]:
            if payload["cell_id"] != cell.cell_id:  # driver and worker disagree on the code
                payload = {"ok": False, "error_type": "CellIdMismatch",
                           "message": f"worker computed cell id {payload['cell_id']}",
                           "traceback": "", "host": ""}
        if payload["ok"]:
            with self._storage_errors(cell):
                write_parts(cell.sweep_dir, cell.cell_id, payload["parts"])
            part_path(cell.sweep_dir, "failures", cell.cell_id).unlink(missing_ok=True)
            self._release(cell)
            self.report.done.append(cell.cell_id)
            self.report.summaries[cell.cell_id] = payload["summary"]
            if self.print_summary:
                self.bar.write(f"{cell.label}: {payload['summary']}", file=sys.stdout)
            status = "done"
        else:
            self._fail(cell, payload)
            status = "failed"
        self.bar.update(1)
        if self.on_result is not None:
            self.on_result(cell.cell_id, status, [s.pid for s in self.slots if s.queue and s.pid])

    @contextlib.contextmanager
    def _storage_errors(self, cell: Cell) -> Iterator[None]:
        """Turn an OSError of the driver's writes into a one-line :class:`StorageError`.

        Nothing is left half-written: :func:`helios.results.write_atomic` removes its
        temporary file, and a cell counts as done only once its ``cells`` part exists.
        The cell's claim is released, as those of the cells not run are by :meth:`run`.
        """
        try:
            yield
        except OSError as exc:
            self._release(cell)
            raise StorageError(cell.sweep_dir, exc, (
                f" (while writing cell {cell.cell_id}); the cells already written are kept, "
                "and re-running the same command resumes with the rest")) from exc

    def _fail(self, cell: Cell, payload: dict[str, Any]) -> None:
        cfg = cell.cfg
        row = {"sweep": cfg.sweep, "cell_id": cell.cell_id, "topology": cfg.topology.name,
               "model": cfg.model.name, "scenario": cfg.scenario.name,
               "strategy": cfg.strategy.name, "seed": cfg.seed, "label": cell.label,
               "error_type": payload["error_type"], "message": payload["message"],
               "traceback": payload["traceback"], "attempts": cell.deaths + 1,
               "host": payload.get("host", "")}
        from helios.results import write_part

        with self._storage_errors(cell):
            write_part(cell.sweep_dir, "failures", cell.cell_id, [row], to_dict(cfg))
        self._release(cell)
        self.report.failed[cell.cell_id] = row
        if self.print_summary:
            self.bar.write(f"{cell.label}: FAILED {row['error_type']}: {row['message']}",
                           file=sys.stderr)

    def _worker_died(self, slot: _Slot) -> None:
        """Re-queue the dead worker's cells; charge the one it was running."""
        self.report.worker_deaths += 1
        charged = False
        victims = []
        for ref, cell in list(slot.queue):
            del self.inflight[ref]
            try:  # a cell may have finished just before the process died
                payload = ray.get(ref, timeout=0) if ray.wait([ref], timeout=0)[0] else None
            except ray.exceptions.RayError:
                payload = None
            if payload is not None:
                self._record(cell, payload)
                continue
            if not charged:
                cell.deaths, charged = cell.deaths + 1, True
            victims.append(cell)
        slot.queue.clear()
        for cell in reversed(victims):
            if cell.deaths > self.max_retries:
                self._fail(cell, {"error_type": "WorkerDied", "traceback": "", "host": "",
                                  "message": f"worker process died {cell.deaths} times "
                                             f"(ray.max_retries={self.max_retries})"})
                self.bar.update(1)
            else:
                self.pending.appendleft(cell)
        self._replace(slot)

    def _replace(self, slot: _Slot) -> None:
        if slot.actor_id is not None:  # release placements the dead worker was solving
            for cache in self.caches.values():
                cache.abandon_owner.remote(slot.actor_id)
        with contextlib.suppress(Exception):
            ray.kill(slot.actor, no_restart=True)
        self.slots[self.slots.index(slot)] = _Slot(self.caches)

    def _refresh(self) -> None:
        running = sum(1 for s in self.slots if s.queue)
        self.bar.set_postfix_str(
            f"done={len(self.report.done)} skipped={len(self.report.skipped)} "
            f"failed={len(self.report.failed)} running={running}", refresh=False)
