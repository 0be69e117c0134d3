"""Ray fan-out of a sweep: :func:`run_sweep` runs cells on a pool of simulation actors.

How a sweep runs
----------------
- Cells whose ``cells`` part already exists, whole, under ``<output_dir>/<sweep>/`` are
  skipped (resume): a cell's id is the content hash of its config, so re-running a
  sweep, or the same sweep with more seeds, runs only the cells not yet done.
- One :class:`~helios.worker.SimulationWorker` actor per CPU of the Ray cluster (or
  ``ray.num_workers``) runs cells one after another. An actor is a long-lived
  process, so the clusters and route tables that ``run_cell`` memoises are built
  once per worker and topology. Each actor holds up to :data:`helios.pool.PIPELINE_DEPTH` cells,
  so that it starts its next cell as soon as one ends instead of waiting for a round
  trip to the driver.
- Results stream back as they finish (``ray.wait``). A worker encodes its cell's
  Parquet parts in memory (:func:`helios.results.encode_part`) and returns their bytes; the driver writes them into the results folder
  (temporary name, then rename; the ``cells`` part last). So workers need no shared
  file system, and the encoding, the costly part of writing, runs in parallel on
  the workers instead of serially on the driver.
- Sweeps may share a results folder, at the same time too: before it submits a
  cell, the driver takes the cell's claim (:mod:`helios.storage`, a ``flock``) and
  looks again whether the cell is done. A cell another sweep is running is deferred
  and tried again later, and skipped once the other sweep has written it; so no cell
  is run or written twice. Temporary files of killed writers are removed when a
  sweep starts and when it ends.
- A cell that raises is recorded in the ``failures`` table, and the sweep goes on.
  A cell whose worker process dies (OOM kill, SIGKILL, lost node) is run again on a
  fresh actor, up to ``max_retries`` times; only the cell that was running is
  charged, the cells queued behind it are re-queued for free.
- Placements go through one :class:`~helios.placement.ray_cache.PlacementCacheActor`
  per results root: the solver runs once per placement key, however many cells
  ask for it at the same time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ray

from helios.config import CellConfig
from helios.pool import Cell, SweepReport, WorkerPool
from helios.signals import STOP_SIGNAL, raise_on_stop_signals, stopped_by_sigterm
from helios.worker import ray_session

__all__ = ["Interrupted", "STOP_SIGNAL", "SweepReport", "VOLATILE_COLUMNS", "default_num_workers",
           "missing_requests", "plan", "run_sweep"]

#: Columns of the ``cells`` table that depend on timing, caching order or the machine.
VOLATILE_COLUMNS = ("sim_s", "placement_s", "placement_cache", "host", "git_sha", "finished_at")


class Interrupted(Exception):
    """A sweep stopped by Ctrl-C or SIGTERM; :meth:`line` says what is left."""

    def __init__(self, report: "SweepReport", todo: int, terminated: bool) -> None:
        super().__init__("interrupted")
        self.report, self.todo, self.terminated = report, todo, terminated

    @property
    def exit_code(self) -> int:
        return 143 if self.terminated else 130

    def line(self) -> str:
        done = len(self.report.done) + len(self.report.skipped)
        left = self.report.total - done - len(self.report.failed)
        return (f"interrupted: {done} cells done, {left} not started; run the same command "
                "to resume")


def missing_requests(cfg: CellConfig, sweep_dir: Path, cell_id: str) -> bool:
    """Whether ``record.requests`` asks for a requests table a finished cell lacks."""
    from helios.results import part_path

    return bool(cfg.record.requests) and not part_path(sweep_dir, "requests", cell_id).exists()


def default_num_workers() -> int:
    """One worker per CPU of the Ray cluster this process is connected to."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def plan(cells: Sequence[CellConfig], labels: Sequence[str] | None = None
         ) -> tuple[list[Cell], list[Cell], int]:
    """Split ``cells`` into (to run, already done, duplicate count) by cell id and folder."""
    from helios.identity import cell_id as compute_cell_id
    from helios.results import scan_done

    labels = list(labels) if labels is not None else [""] * len(cells)
    done_by_dir: dict[Path, set[str]] = {}
    seen: set[tuple[Path, str]] = set()
    todo, done, dupes = [], [], 0
    for cfg, label in zip(cells, labels):
        cell = Cell(cfg, compute_cell_id(cfg), Path(cfg.output_dir) / cfg.sweep, label)
        cell.label = cell.label or f"{cfg.strategy.name} seed={cfg.seed} ({cell.cell_id})"
        if (cell.sweep_dir, cell.cell_id) in seen:
            dupes += 1
            continue
        seen.add((cell.sweep_dir, cell.cell_id))
        if cell.sweep_dir not in done_by_dir:
            finished, damaged = scan_done(cell.sweep_dir)
            done_by_dir[cell.sweep_dir] = finished
            for path in damaged:
                print(f"helios: damaged part {path}: its cell runs again", file=sys.stderr)
        finished = cell.cell_id in done_by_dir[cell.sweep_dir] and not cfg.rerun
        if finished and missing_requests(cfg, cell.sweep_dir, cell.cell_id):
            finished = False  # record.requests=true on a cell run without it: run it to record
        (done if finished else todo).append(cell)
    return todo, done, dupes


def run_sweep(cells: Sequence[CellConfig], *, labels: Sequence[str] | None = None,
              num_workers: int | None = None, max_retries: int = 2, address: str | None = None,
              connect_timeout_s: float = 30.0,
              progress: bool = True, print_summary: bool = True,
              on_result: Callable[[str, str, list[int]], None] | None = None) -> SweepReport:
    """Run every cell not yet done, write its Parquet parts, and report.

    Parameters
    ----------
    cells : sequence of CellConfig
        The sweep (duplicates by cell id are run once).
    labels : sequence of str, optional
        How to name each cell in messages (the launcher passes its overrides).
    num_workers : int, optional
        Simulation actors; default one per CPU of the Ray cluster.
    max_retries : int
        Reruns of a cell whose worker process died.
    address : str, optional
        Ray cluster to join when Ray is not yet initialised (see :func:`ray_session`).
    progress, print_summary : bool
        Show the progress bar (stderr); print per-cell and end summaries (stdout).
    on_result : callable, optional
        Called after each finished cell with ``(cell_id, "done" | "failed", pids)``,
        ``pids`` being the process ids of the workers busy at that moment.
    """
    from helios.storage import remove_stale_temporaries

    t0 = time.perf_counter()
    todo, skipped, dupes = plan(cells, labels)
    report = SweepReport(total=len(todo) + len(skipped), skipped=[c.cell_id for c in skipped],
                         duplicates=dupes,
                         sweep_dirs=sorted({str(c.sweep_dir) for c in [*todo, *skipped]}))
    # Temporary parts of killed writers: those of an earlier run now, those of a sweep
    # into the same folder that dies while this one runs at the end (one scan each).
    for sweep_dir in report.sweep_dirs:
        remove_stale_temporaries(sweep_dir)
    if todo:
        STOP_SIGNAL["signum"] = None  # a stop of an earlier sweep in this process is over
        try:
            t_ray = time.perf_counter()
            with ray_session(address, connect_timeout_s=connect_timeout_s) as mode:
                raise_on_stop_signals()
                report.ray_start_s = time.perf_counter() - t_ray
                workers = min(num_workers or default_num_workers(), len(todo))
                report.workers = workers
                report.ray = f"{mode} Ray at {ray.get_runtime_context().gcs_address}"
                t_pool = time.perf_counter()
                WorkerPool(todo, workers, max_retries, report, progress, print_summary, on_result).run()
                t_down = time.perf_counter()
                report.pool_s = t_down - t_pool
            report.shutdown_s = time.perf_counter() - t_down
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM; Ray is shut down by now
            raise Interrupted(report, len(todo), stopped_by_sigterm()) from None
        for sweep_dir in report.sweep_dirs:
            remove_stale_temporaries(sweep_dir)
    report.wall_s = time.perf_counter() - t0
    if print_summary:
        print("\n".join(report.lines()), flush=True)
    return report
