"""Command line: ``python -m helios.sweep [--multirun] [overrides...]``.

Without ``--multirun`` it runs one cell with the composed config, prints the one-line
summary and writes the cell's Parquet parts under ``<output_dir>/<sweep>/``.

With ``--multirun`` Hydra expands the sweep (``a=1,2``, ``range()``, ``glob()``,
``hydra.sweeper.params`` of config files) and the ``helios_ray`` launcher
(``hydra_plugins/helios_ray_launcher``, the default of ``conf/config.yaml``) runs the
cells on Ray; see :mod:`helios.runner`. Composing and checking the cells is
:mod:`helios.compose`.

Named sweeps: ``python -m helios.sweep --multirun +sweep=<name>`` runs
``sweeps/<name>.yaml``. The files of ``sweeps/`` are registered in Hydra's
ConfigStore as options of the config group ``sweeps`` (package ``_global_``), so
this works from any working directory, and ``+sweep=<name>`` is rewritten to
``+sweeps=<name>`` (either form works). The group is not called ``sweep`` because
that is the config key naming the results folder: ``sweep=<name>`` (no ``+``) only
names the folder, it does not load a file.

Every cell the command line describes is composed and validated *before* Hydra
starts any job, and every results folder it names is checked to be writable (by
creating and removing a hidden file): a bad value or an unwritable ``output_dir``
prints ``helios: config error: <key>=<value>: <allowed>`` and exits with status 2,
with no traceback and nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from helios.compose import (CONF_DIR, CONFIG_NAME, preflight, register_sweeps, resolved,
                            rewrite_sweep_overrides, split_argv)
from helios.config import CellConfig, cell_config
from helios.errors import ConfigError, StorageError

DRY_RUN_FLAGS = ("+dry_run=true", "dry_run=true", "++dry_run=true")


def dry_run(argv: Sequence[str]) -> None:
    """Print every cell of a command line with its status and estimated cost; run nothing,
    write nothing."""
    from helios.identity import cell_id
    from helios.preflight import estimate
    from helios.results import part_is_whole, part_path

    cells = preflight(argv, check_dirs=False)
    print("cell_id           status   events    memory  strategy  seed  folder")
    todo = 0
    for cfg in cells:
        cid = cell_id(cfg)
        path = part_path(Path(cfg.output_dir) / cfg.sweep, "cells", cid)
        status = ("done" if part_is_whole(path, cid) else "damaged") if path.exists() else "to run"
        status = "to run" if cfg.rerun and status == "done" else status
        todo += status != "done"
        events, memory = estimate(cfg)
        print(f"{cid}  {status:7s}  {events:8.2g}  {memory / 2**30:6.2f}G  {cfg.strategy.name}  "
              f"{cfg.seed}  {Path(cfg.output_dir) / cfg.sweep}")
    print(f"helios: dry run: {len(cells)} cells, {todo} to run, {len(cells) - todo} done; "
          "events and memory are the preflight's upper estimates")


def run_one(cfg: CellConfig) -> str:
    """Run a cell, write its parts, and return the summary line."""
    from helios.cell import run_cell
    from helios.faults import inject_faults
    from helios.results import write_cell
    from helios.storage import claim

    sweep_dir = Path(cfg.output_dir) / cfg.sweep
    done = _finished_summary(cfg, sweep_dir)
    if done is not None:
        return done
    inject_faults(cfg)  # test-only faults (helios.faults); none by default
    result = run_cell(cfg)
    # Hold the cell's claim while writing, so that a sweep into the same folder neither
    # writes this cell at the same time nor takes our temporary files for stale ones.
    try:
        with claim(sweep_dir, result.cell_id, wait=True):  # type: ignore[union-attr]
            write_cell(sweep_dir, result.cell_id, result.tables, result.config)
    except OSError as exc:  # a full disk, a folder that became read-only: not a bug
        print(f"helios: error: {StorageError(sweep_dir, exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"helios: cell {result.cell_id} written to {sweep_dir}", file=sys.stderr)
    return result.summary


def _finished_summary(cfg: CellConfig, sweep_dir: Path) -> str | None:
    """The summary of a cell already written whole there (resume, as sweeps do), or None."""
    import pyarrow.parquet as pq

    from helios.cell import summary_line
    from helios.identity import cell_id
    from helios.results import part_is_whole, part_path

    cid = cell_id(cfg)
    path = part_path(sweep_dir, "cells", cid)
    if cfg.rerun or not path.exists():
        return None
    from helios.runner import missing_requests  # imports Ray (~0.5 s): only for a resume

    if missing_requests(cfg, sweep_dir, cid):
        return None
    if not part_is_whole(path, cid):
        print(f"helios: damaged part {path}: its cell runs again", file=sys.stderr)
        return None
    row = pq.read_table(path).to_pylist()[0]
    p99 = row["tpot_p99_ms"] if cfg.serving.name == "ep" else row["p99_ms"]
    print(f"helios: cell {cid} already done in {sweep_dir} (+rerun=true runs it again)",
          file=sys.stderr)
    return summary_line(cfg.strategy.name, p99, row["goodput_tok_s"], row["max_link_util"])


@hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")
def _app(cfg: DictConfig) -> None:
    data = resolved(cfg)
    print(run_one(cell_config(data)), flush=True)  # type: ignore[arg-type]


def _comma_list_without_multirun(argv: Sequence[str]) -> None:
    """A ``key=a,b`` override outside ``--multirun`` sweeps nothing: say so."""
    overrides, multirun = split_argv(argv)
    if multirun:
        return
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        depth = 0
        for ch in value:
            depth += ch in "[({" and 1 or (-1 if ch in "])}" else 0)
            if ch == "," and depth == 0 and not value.startswith(("'", '"')):
                raise ConfigError(key, value, "one value; a comma list sweeps every value: add "
                                  "--multirun (or -m)")


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the whole command line, then hand it to Hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    register_sweeps()
    argv = rewrite_sweep_overrides(argv)
    if any(a.lower() in DRY_RUN_FLAGS for a in argv):
        try:
            dry_run([a for a in argv if a.lower() not in DRY_RUN_FLAGS])
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            raise SystemExit(2) from None
        return
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") for a in argv):
        try:
            _comma_list_without_multirun(argv)
            preflight(argv)
        except ConfigError as err:
            print(err.one_line(), file=sys.stderr)
            raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *argv]
    from helios.signals import raise_on_stop_signals, stopped_by_sigterm

    raise_on_stop_signals()
    try:
        _app()
    except KeyboardInterrupt:  # a stop outside a sweep's pool (a single cell): one line
        print("interrupted: nothing left running; run the same command to resume",
              file=sys.stderr, flush=True)
        raise SystemExit(143 if stopped_by_sigterm() else 130) from None


if __name__ == "__main__":
    main()
