"""Distributed sweeps: Hydra multirun on Ray, resume, retries, failures, placement cache.

The command-line tests run ``python -m helios.sweep`` in a subprocess (the first on
its own embedded Ray, the resume ones joining the session's Ray through
``RAY_ADDRESS``); the others call :func:`helios.runner.run_sweep` on the session's
Ray or on a two-node loopback cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helios.cell import cell_id
from helios.config import CellConfig
from helios.errors import ConfigError
from helios.placement.base import Placement
from helios.results import load, part_files
from helios.compose import preflight

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--multirun", "+sweep=smoke"]


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 240,
            inherit: bool = True) -> subprocess.CompletedProcess:
    full_env = {**(os.environ if inherit else {}), **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helios.sweep", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def smoke_cells(out: Path, *extra: str) -> list[CellConfig]:
    return preflight([*SMOKE, f"output_dir={out}", *extra])


def mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in part_files(sweep_dir, "cells")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke sweep run once through the CLI, on its own embedded Ray.

    The Ray variables the tests set are removed, so this checks that the CLI's own
    defaults keep the embedded Ray on loopback.
    """
    out = tmp_path_factory.mktemp("smoke")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = run_cli([*SMOKE, f"output_dir={out}"], env=env, inherit=False)
    return out, proc


# ----------------------------------------------------------------------------- command line
def test_smoke_multirun_writes_one_row_per_cell(smoke_run):
    out, proc = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {cell_id(c) for c in smoke_cells(out)}
    df = load(out / "smoke")
    assert len(expected) == 6
    assert len(df) == len(expected) and set(df["cell_id"]) == expected
    assert len(part_files(out / "smoke", "cells")) == len(expected)
    assert set(zip(df["strategy"], df["seed"])) == {
        (s, k) for s in ("round_robin", "greedy", "helios_static") for k in (0, 1)}
    assert (df["sweep"] == "smoke").all()
    # The placement key ignores the seed: one solve per strategy, the other seed hits.
    assert sorted(df["placement_cache"]) == ["hit"] * 3 + ["miss"] * 3
    assert "6 run, 0 skipped" in proc.stdout
    assert "3 solved, 3 saved" in proc.stdout
    assert "ran on embedded Ray at 127.0.0.1:" in proc.stdout
    # where the sweep's time went: the pool holds the workers' start-up, the wall holds all
    stages = re.search(r"helios: time: ([\d.]+) s starting Ray, ([\d.]+) s until every worker "
                       r"was up, ([\d.]+) s in the worker pool, ([\d.]+) s shutting Ray down",
                       proc.stdout)
    wall = float(re.search(r"([\d.]+) s wall", proc.stdout).group(1))
    ray_s, up_s, pool_s, down_s = map(float, stages.groups())
    assert 0 < up_s <= pool_s and ray_s > 0 and down_s > 0
    assert ray_s + pool_s + down_s <= wall + 0.2


def test_rerun_skips_done_cells_and_more_seeds_run_only_new_cells(smoke_run, ray_local, tmp_path):
    src, _ = smoke_run
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    before = mtimes(tmp_path / "smoke")
    again = run_cli([*SMOKE, f"output_dir={tmp_path}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 run, 6 skipped" in again.stdout
    assert mtimes(tmp_path / "smoke") == before

    # Join the session's Ray rather than start another one (the cluster path of the CLI).
    address = ray_local.get_runtime_context().gcs_address
    more = run_cli([*SMOKE, f"output_dir={tmp_path}", "seed=range(3)"],
                   env={"RAY_ADDRESS": address})
    assert more.returncode == 0, more.stderr[-3000:]
    assert "3 run, 6 skipped" in more.stdout
    assert f"ran on cluster Ray at {address}" in more.stdout
    after = mtimes(tmp_path / "smoke")
    assert {k: v for k, v in after.items() if k in before} == before  # old parts untouched
    df = load(tmp_path / "smoke")
    assert set(df["cell_id"]) == {cell_id(c) for c in smoke_cells(tmp_path, "seed=range(3)")}
    assert len(df) == 9 and sorted(df.loc[~df["cell_id"].isin(
        [n[5:-8] for n in before]), "seed"]) == [2, 2, 2]


def test_multirun_config_errors_exit_2_before_running(tmp_path):
    bad = run_cli([*SMOKE, f"output_dir={tmp_path}", "topology.k=2,3"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "helios: config error: topology.k=3: an even integer >= 2"]
    unknown = run_cli(["--multirun", "+sweep=nope", f"output_dir={tmp_path}"])
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("helios: config error: sweep=nope: a named sweep, one of ")
    assert "smoke" in unknown.stderr
    assert not any(tmp_path.iterdir())


def test_launcher_exits_1_naming_failed_cells(monkeypatch, tmp_path, capsys):
    """The launcher turns failed cells into FAILED jobs: Hydra exits 1 with their names."""
    from hydra.core.global_hydra import GlobalHydra

    import helios.runner as runner
    from helios.sweep import main

    def fake_run_sweep(cells, labels, **_):
        ids = [cell_id(c) for c in cells]
        report = runner.SweepReport(total=len(ids), done=ids[1:],
                                    summaries={i: "fine" for i in ids[1:]})
        report.failed[ids[0]] = {"label": labels[0], "error_type": "RuntimeError",
                                 "message": "boom"}
        return report

    monkeypatch.setattr(runner, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(sys, "argv", ["helios.sweep"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([*SMOKE, f"output_dir={tmp_path}"])
    finally:
        GlobalHydra.instance().clear()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "1 of 6 cells failed" in err and "strategy=round_robin seed=0" in err


# ----------------------------------------------------------------------------- preflight
def test_preflight_expands_named_and_adhoc_sweeps(tmp_path):
    cells = smoke_cells(tmp_path)
    assert len(cells) == 6
    assert {(c.sweep, c.model.name, c.topology.k) for c in cells} == {("smoke", "tiny", 2)}
    assert len(smoke_cells(tmp_path, "seed=range(3)")) == 9
    assert {c.strategy.name for c in smoke_cells(tmp_path, "strategy=greedy")} == {"greedy"}
    adhoc = preflight(["--multirun", "model=tiny", "seed=0,1", "sweep=mine",
                       f"output_dir={tmp_path}"])
    assert [(c.sweep, c.seed, c.model.name) for c in adhoc] == [("mine", 0, "tiny"),
                                                                ("mine", 1, "tiny")]
    # sweep=<name> only names the results folder; it does not load sweeps/<name>.yaml.
    renamed = preflight(["--multirun", "model=tiny", "seed=0", "sweep=smoke", "topology.k=4",
                         "sim.max_events=1e12",
                         f"output_dir={tmp_path}"])
    assert [(c.sweep, c.topology.k, c.sim.duration_s) for c in renamed] == [("smoke", 4, 3.0)]
    # The fast multirun composer agrees with a full Hydra composition of each job.
    for strategy, seed in (("greedy", 1), ("round_robin", 0)):
        single = preflight(["+sweep=smoke", f"strategy={strategy}", f"seed={seed}",
                            f"output_dir={tmp_path}"])
        assert single[0] in cells
    with pytest.raises(ConfigError, match="strategy=nope"):
        smoke_cells(tmp_path, "strategy=greedy,nope")


# ----------------------------------------------------------------------------- runner
def _strip(df: pd.DataFrame) -> pd.DataFrame:
    from helios.runner import VOLATILE_COLUMNS

    drop = [c for c in (*VOLATILE_COLUMNS, "cfg.output_dir") if c in df]
    return df.drop(columns=drop).sort_values(list(df.columns.intersection(
        ["cell_id", "window"]))).reset_index(drop=True)


@pytest.mark.parametrize("extra", [
    ["strategy=round_robin,helios_static"],
    pytest.param(["seed=range(3)"], marks=pytest.mark.slow),
])
def test_results_identical_with_one_and_two_workers(ray_local, tmp_path, extra):
    from helios.runner import run_sweep

    for workers in (1, 2):
        cells = smoke_cells(tmp_path / f"w{workers}", *extra)
        report = run_sweep(cells, num_workers=workers, progress=False, print_summary=False)
        assert len(report.done) == len(cells) and report.workers == workers
    for table in ("cells", "timeseries"):
        one, two = (load(tmp_path / f"w{w}" / "smoke", table) for w in (1, 2))
        assert len(one) > 0
        pd.testing.assert_frame_equal(_strip(one), _strip(two))


def test_raising_cell_is_recorded_and_sweep_goes_on(ray_local, tmp_path):
    import dataclasses

    from helios.runner import run_sweep

    good = smoke_cells(tmp_path)[0]
    # Bypasses validation on purpose: no expert fits, so the placement raises in the worker.
    bad = dataclasses.replace(good, seed=7, gpu=dataclasses.replace(
        good.gpu, expert_memory_fraction=1e-9))
    report = run_sweep([bad, good], progress=False, print_summary=False)
    assert report.exit_code == 1
    assert report.done == [cell_id(good)] and list(report.failed) == [cell_id(bad)]
    failures = load(tmp_path / "smoke", "failures")
    assert list(failures["cell_id"]) == [cell_id(bad)]
    assert failures["error_type"][0] and "Traceback" in failures["traceback"][0]
    assert list(load(tmp_path / "smoke")["cell_id"]) == [cell_id(good)]
    assert any("FAILED" in line for line in report.lines())


def _kill_first_busy(killed: list[int]):
    def on_result(_cell, _status, busy_pids):
        if not killed and busy_pids:
            os.kill(busy_pids[0], signal.SIGKILL)
            killed.append(busy_pids[0])
    return on_result


def test_killed_worker_without_retries_fails_only_its_running_cell(ray_local, tmp_path):
    from helios.runner import run_sweep

    cells = smoke_cells(tmp_path, "strategy=round_robin,greedy")
    killed: list[int] = []
    report = run_sweep(cells, max_retries=0, progress=False, print_summary=False,
                       on_result=_kill_first_busy(killed))
    assert killed and report.worker_deaths == 1
    assert len(report.failed) == 1
    assert next(iter(report.failed.values()))["error_type"] == "WorkerDied"
    assert len(report.done) == len(cells) - 1  # the cell queued behind it was not charged


# ----------------------------------------------------------------------------- single flight
def _threads(n: int, target) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_single_flight_one_solve_for_concurrent_askers(ray_local, tmp_path):
    from helios.placement.cache import DiskPlacementCache
    from helios.placement.ray_cache import PlacementCacheActor, RayPlacementCache

    actor = PlacementCacheActor.remote(str(tmp_path))
    calls: list[int] = []

    def solve() -> Placement:
        calls.append(1)
        time.sleep(1.0)
        return Placement(replicas=[[[0], [1]]], num_gpus=2)

    results = _threads(6, lambda i: RayPlacementCache(actor, owner=f"w{i}").get_or_solve(
        "k1", solve))
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 5
    assert len({p.to_json() for p, _ in results}) == 1
    stats = ray_local.get(actor.stats.remote())
    assert stats["solves"] == 1 and stats["waited"] == 5
    assert DiskPlacementCache(tmp_path).get("k1") is not None
    # A new front on the same folder (a later sweep) loads it from disk without solving.
    again = PlacementCacheActor.remote(str(tmp_path))
    assert ray_local.get(again.claim.remote("k1", "x"))[0] == "hit"


def test_single_flight_waiter_takes_over_a_failed_or_dead_solver(ray_local):
    from helios.placement.ray_cache import PlacementCacheActor, RayPlacementCache

    actor = PlacementCacheActor.remote(None)
    calls: list[int] = []

    def flaky() -> Placement:
        calls.append(1)
        time.sleep(0.5)
        if len(calls) == 1:
            raise RuntimeError("solver crashed")
        return Placement(replicas=[[[0]]], num_gpus=1)

    results = _threads(4, lambda i: RayPlacementCache(actor, owner=f"w{i}").get_or_solve(
        "k2", flaky))
    assert len(calls) == 2
    assert sum(isinstance(r, RuntimeError) for r in results) == 1
    assert sorted(r[1] for r in results if isinstance(r, tuple)) == [False, True, True]

    # A solver whose process died never publishes: the driver releases its claims.
    assert ray_local.get(actor.claim.remote("k3", "dead-worker")) == ("solve", None)
    waiter = _threads_async(lambda: RayPlacementCache(actor, owner="w").get_or_solve(
        "k3", lambda: Placement(replicas=[[[0]]], num_gpus=1)))
    time.sleep(0.5)
    assert waiter.result is None  # still waiting
    assert ray_local.get(actor.abandon_owner.remote("dead-worker")) == 1
    waiter.join(30)
    assert waiter.result is not None and waiter.result[1] is False


class _threads_async(threading.Thread):
    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.result = fn, None
        self.start()

    def run(self) -> None:
        self.result = self.fn()


def test_the_autoscaler_monitor_goes_first_and_ray_keeps_working(ray_local):
    # The embedded Ray's shutdown stops its autoscaler monitor first, by SIGKILL: Ray's own
    # order (the GCS first) leaves the monitor hanging for its full one-second grace.
    from ray._private import ray_constants
    from ray._private.worker import _global_node

    from helios.worker import stop_autoscaler_monitor

    pid = _global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process.pid
    assert stop_autoscaler_monitor()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert ray_local.get(ray_local.remote(lambda: 7).remote()) == 7  # nothing else noticed
    assert not stop_autoscaler_monitor()  # once


# ----------------------------------------------------------------------------- cluster
# Last in the file: it replaces the session's local Ray by a two-node cluster.
@pytest.mark.parametrize("extra", [
    ["strategy=round_robin,greedy"],
    pytest.param(["seed=range(4)"], marks=pytest.mark.slow),
])
def test_two_node_cluster_survives_sigkill_of_a_worker(ray_cluster, tmp_path, extra):
    from helios.runner import run_sweep

    cells = smoke_cells(tmp_path, *extra)
    killed: list[int] = []
    report = run_sweep(cells, progress=False, print_summary=False,
                       on_result=_kill_first_busy(killed))
    assert killed and report.worker_deaths >= 1 and not report.failed
    df = load(tmp_path / "smoke")
    assert len(df) == len(cells) == df["cell_id"].nunique()
    assert set(df["cell_id"]) == {cell_id(c) for c in cells}
    assert not (tmp_path / "smoke" / "failures").exists()


def test_progress_on_a_non_terminal_is_a_line_per_tenth_not_a_redraw():
    import io

    from helios.pool import LineProgress

    out = io.StringIO()
    bar = LineProgress(16, interval_s=1e9, file=out)
    for _ in range(16):
        bar.set_postfix_str("done=1")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 11 and lines[-1].startswith("helios sweep: 16/16 cells (100%)")
    assert all("\r" not in line for line in lines)


def test_every_reader_sees_every_column_of_a_mixed_sweep(tmp_path):
    """Parts of cells with different options (scenario fields, serving models) share one
    schema, so pandas, pyarrow.dataset and DuckDB read every column with no options; the
    other tables carry the choice columns too."""
    import pandas as pd
    import pyarrow.dataset as ds

    from helios.cell import run_cell
    from helios.results import write_cell
    from tests._configs import TINY, TINY_EP, config

    cfgs = [config("scenario=stationary", base=TINY_EP), config("scenario=bursty", base=TINY_EP),
            config("scenario=gradual_drift", "strategy=helios_dynamic", base=TINY)]
    for cfg in cfgs:
        result = run_cell(cfg, cache=False)
        write_cell(tmp_path, result.cell_id, result.tables, result.config)
    cells = tmp_path / "cells"
    frame = pd.read_parquet(cells)
    assert len(frame) == 3
    for key in ("cfg.scenario.burst_rate", "cfg.scenario.period_s", "cfg.serving.dispatch",
                "cfg.serving.slo_ms" if "cfg.serving.slo_ms" in frame else "cfg.sim.slo_ms",
                "finished_at", "tpot_p99_ms"):
        assert key in frame.columns, key
    assert frame["cfg.scenario.burst_rate"].notna().sum() == 1
    assert set(ds.dataset(cells).schema.names) == set(frame.columns)
    schemas = {tuple((f.name, str(f.type)) for f in ds.dataset(p).schema) for p in cells.glob("*.parquet")}
    assert len(schemas) == 1, [dict(x) for x in schemas]
    for table in ("timeseries", "events"):
        if not (tmp_path / table).exists():
            continue
        rows = pd.read_parquet(tmp_path / table)
        assert {"topology", "model", "scenario", "strategy", "seed"} <= set(rows.columns)
    try:
        import duckdb
    except ImportError:
        return
    got = duckdb.sql(f"SELECT * FROM read_parquet('{cells}/*.parquet')").df()
    assert set(got.columns) == set(frame.columns)


def test_fast_job_composition_equals_hydras_own():
    """JobComposer applies plain overrides with Hydra's private second step
    (``ConfigLoaderImpl._apply_overrides_to_config``, hydra-core pinned in pyproject): on
    the kinds of override a sweep varies it must give what a full Hydra composition gives,
    so a Hydra upgrade that changes that step fails here, not in a user's sweep."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from helios.compose import (CONF_DIR, CONFIG_NAME, JobComposer, cell_mapping, register_sweeps,
                              rewrite_sweep_overrides)

    jobs = [["seed=3"], ["scenario.rate=5", "strategy=greedy"],
            ["+sweep=smoke", "sim.layers=null", "strategy=helios_static", "strategy.ilp.time_limit_s=3"],
            ["scenario=gradual_drift", "scenario.period_s=0.2", "sim.duration_s=0.5"],
            ["topology=dragonfly", "topology.g=3", "++sim.layers=3", "seed=1"],
            ["scenario.popularity=zipf", "scenario.zipf_s=0.6", "model=qwen3_30b_a3b"],
            ["serving=request", "topology.thin_servers=1", "topology.thin_nics=1",
             "topology.nic_per_gpu=false", "topology.nics_per_server=2"]]
    register_sweeps()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            def load(job):
                return hydra_compose(config_name=CONFIG_NAME, overrides=job,
                                     return_hydra_config=True)
            composer = JobComposer(
                load, GlobalHydra.instance().config_loader().repository.group_exists)
            for job in map(rewrite_sweep_overrides, jobs):  # +sweep=NAME as the CLI reads it
                assert cell_mapping(composer.compose(job)) == cell_mapping(load(job)), job
    finally:
        GlobalHydra.instance().clear()
