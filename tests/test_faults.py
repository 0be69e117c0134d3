"""Fault injection: what a sweep survives, and the errors it gives for what it cannot run.

Each test provokes one fault and checks the promise that goes with it (issue 7):

- driver SIGKILL mid-sweep, then the same command again: only the missing cells run, one
  row per cell, every part reads back, no temporary file left;
- a node of a two-node loopback cluster lost mid-sweep: the sweep completes on the other;
- a cell that always raises (``+fault.raise_in_cell=true``): recorded in ``failures``,
  the others complete, exit status 1, the summary names it;
- an unwritable results folder: one config-error line, exit 2, before anything runs;
- two sweeps into one folder at once: each cell run and written once, nothing corrupt;
- damaged or older-format placement-cache files: solved again through the sweep's cache
  actor, never misread;
- malformed trace files: one config-error line, exit 2, nothing written.

A worker SIGKILL (retried, and charged to its running cell only) is covered by
``tests/test_sweep.py``, as are the solver's time limit and fallback by ``test_ilp.py``.

The command-line tests join the session's Ray through ``RAY_ADDRESS`` (a Ray start costs
~10 s here); the node test replaces it by a two-node cluster, so it comes last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

try:
    import duckdb
except ImportError:  # an optional test dependency
    duckdb = None

from helios.cell import cell_id
from helios.results import load, part_files
from helios.storage import claim, claim_path, remove_stale_temporaries
from helios.compose import preflight
from helios.sweep import main

ROOT = Path(__file__).resolve().parent.parent
#: Four fast cells (round_robin and greedy place instantly; ~1 s of simulation each).
FAST = ["--multirun", "+sweep=smoke", "strategy=round_robin,greedy"]
SUMMARY = re.compile(r"helios: (\d+) cells: (\d+) run, (\d+) skipped")


def cli(args: list[str], ray_address: str | None, **kwargs) -> subprocess.Popen:
    """Start ``python -m helios.sweep args`` joined to the Ray at ``ray_address``.

    With ``ray_address`` None the command starts its own embedded Ray.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen([sys.executable, "-m", "helios.sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def counts(stdout: str) -> tuple[int, int, int]:
    """(total, run, skipped) from the end-of-sweep summary."""
    found = SUMMARY.search(stdout)
    assert found, stdout[-2000:]
    return tuple(int(x) for x in found.groups())  # type: ignore[return-value]


def ran_labels(stdout: str) -> list[str]:
    """Labels of the cells a sweep ran, from its per-cell summary lines."""
    return [line.split(": Strategy: ")[0] for line in stdout.splitlines() if ": Strategy: " in line]


def fake_temporary(sweep_dir: Path, table: str, cid: str, data: bytes) -> Path:
    """A temporary part as a writer killed before its rename leaves it."""
    path = sweep_dir / table / f".tmp-part-{cid}-{uuid.uuid4().hex}.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_sound(sweep_dir: Path, expected: set[str]) -> None:
    """One ``cells`` row per expected cell, every part readable, no temporary file."""
    cells = load(sweep_dir)
    assert len(cells) == len(expected) and set(cells["cell_id"]) == expected
    for path in sweep_dir.rglob("*.parquet"):
        assert pq.read_table(path).num_rows > 0, path
    assert not list(sweep_dir.rglob(".tmp-*"))
    assert not [p for p in (sweep_dir / ".claims").glob("*")]  # every claim released
    series = load(sweep_dir, "timeseries")
    assert not series.duplicated(["cell_id", "window"]).any()
    assert set(series["cell_id"]) == expected


# ----------------------------------------------------------------------------- driver
@pytest.mark.parametrize("ray_mode", [
    "cluster",  # joins a running Ray, as on a shared cluster
    pytest.param("embedded", marks=pytest.mark.slow),  # its own Ray, killed with the driver
])
def test_driver_sigkill_then_the_same_command_runs_only_the_missing_cells(
        ray_mode, request, tmp_path):
    args = [*FAST, "seed=0,1", f"output_dir={tmp_path}"]
    expected = {cell_id(c) for c in preflight(args)}
    sweep_dir = tmp_path / "smoke"
    address = None
    if ray_mode == "cluster":
        address = request.getfixturevalue("ray_local").get_runtime_context().gcs_address

    proc = cli(args, address)
    deadline = time.monotonic() + 180
    while not part_files(sweep_dir, "cells"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    survivors = {p.name: p.stat().st_mtime_ns for p in part_files(sweep_dir, "cells")}
    assert 1 <= len(survivors) < len(expected), "the kill did not land mid-sweep"

    # A kill between write and rename leaves hidden temporaries: readers do not see them.
    missing = sorted(expected - {n[5:-8] for n in survivors})
    done = next(iter(survivors))[5:-8]
    half = (sweep_dir / "cells" / next(iter(survivors))).read_bytes()[:100]
    planted = [fake_temporary(sweep_dir, "timeseries", missing[0], half),
               fake_temporary(sweep_dir, "cells", missing[0], half),
               fake_temporary(sweep_dir, "events", done, half)]
    assert len(load(sweep_dir)) == len(survivors)
    assert pq.read_table(sweep_dir / "cells").num_rows == len(survivors)  # pyarrow dataset
    if duckdb is not None:  # its *.parquet glob matches hidden names, not the .tmp suffix
        assert duckdb.sql(f"select count(*) from read_parquet('{sweep_dir}/cells/*.parquet')"
                          ).fetchall()[0][0] == len(survivors)

    code, out, err = finish(cli(args, address))
    assert code == 0, err[-3000:]
    assert counts(out) == (len(expected), len(expected) - len(survivors), len(survivors))
    assert len(ran_labels(out)) == len(expected) - len(survivors)
    after = {p.name: p.stat().st_mtime_ns for p in part_files(sweep_dir, "cells")}
    assert {k: after[k] for k in survivors} == survivors  # finished cells untouched
    assert not any(p.exists() for p in planted)
    assert_sound(sweep_dir, expected)


# ----------------------------------------------------------------------------- cell
def test_a_cell_that_always_raises_is_recorded_named_and_fails_the_command(ray_local, tmp_path):
    args = [*FAST[:2], "strategy=round_robin", "seed=0,1", "+fault.raise_in_cell=false,true",
            f"output_dir={tmp_path}"]
    cells = preflight(args)
    healthy = {cell_id(c) for c in cells if not c.fault.raise_in_cell}
    faulty = {cell_id(c) for c in cells if c.fault.raise_in_cell}
    assert len(healthy) == len(faulty) == 2
    # The test-only section at its default changes no cell id.
    assert healthy == {cell_id(c) for c in preflight([a for a in args if "fault" not in a])}

    code, out, err = finish(cli(args, ray_local.get_runtime_context().gcs_address))
    assert code == 1, err[-3000:]
    assert counts(out) == (4, 2, 0)
    sweep_dir = tmp_path / "smoke"
    assert set(load(sweep_dir)["cell_id"]) == healthy
    failures = load(sweep_dir, "failures")
    assert set(failures["cell_id"]) == faulty and len(failures) == 2
    assert (failures["error_type"] == "FaultInjected").all()
    assert failures["message"].str.contains("injected fault").all()
    assert failures["traceback"].str.contains("Traceback").all()
    assert failures["traceback"].str.contains("in inject_faults").all()
    assert (failures["attempts"] == 1).all()  # an exception is data, not retried
    # The end summary (stdout) and Hydra's failure line (stderr) name each failed cell.
    assert "2 cells FAILED" in out
    for cid in faulty:
        assert re.search(rf"{cid} \[.*\+fault.raise_in_cell=true.*\]: FaultInjected: injected",
                         out, re.IGNORECASE), out[-2000:]  # Hydra writes True
        assert cid in err  # Hydra's line: "helios: 2 of 4 cells failed: <id> [<label>], ..."


# ----------------------------------------------------------------------------- concurrency
def test_two_sweeps_into_one_folder_at_once_run_each_cell_once(ray_local, tmp_path):
    args = [*FAST, "seed=0,1", "ray.num_workers=1", f"output_dir={tmp_path}"]
    expected = {cell_id(c) for c in preflight(args)}
    address = ray_local.get_runtime_context().gcs_address
    first, second = cli(args, address), cli(args, address)
    results = [finish(first), finish(second)]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    ran = [ran_labels(out) for _, out, _ in results]
    assert not set(ran[0]) & set(ran[1]), "a cell ran in both sweeps"
    assert len(ran[0]) + len(ran[1]) == len(set(ran[0]) | set(ran[1])) == len(expected)
    for (_, out, _), mine in zip(results, ran):
        total, run, skipped = counts(out)
        assert total == len(expected) and run == len(mine) and skipped == total - run
    # The sweeps overlapped: cells one planned to run were finished by the other meanwhile
    # (so the claims, not the start-up check of done cells, kept them apart).
    meanwhile = [re.search(r"(\d+) of the skipped cells were finished meanwhile", out)
                 for _, out, _ in results]
    assert sum(int(m[1]) for m in meanwhile if m) >= 1, [out for _, out, _ in results]
    assert_sound(tmp_path / "smoke", expected)


def test_claims_exclude_each_other_and_survive_lock_file_removal(tmp_path):
    first = claim(tmp_path, "c1")
    assert first is not None and claim(tmp_path, "c1") is None  # another open file: refused
    other = claim(tmp_path, "c2")
    assert other is not None  # other cells are independent
    other.release()
    waiter: list = []
    thread = threading.Thread(target=lambda: waiter.append(claim(tmp_path, "c1", wait=True)))
    thread.start()
    time.sleep(0.2)
    assert not waiter  # blocked on the held claim
    first.release()  # removes the lock file, then unlocks: the waiter must lock the new file
    thread.join(10)
    assert waiter and waiter[0].held and claim_path(tmp_path, "c1").exists()
    assert claim(tmp_path, "c1") is None  # the waiter's claim is real
    assert str(os.getpid()) in claim_path(tmp_path, "c1").read_text()
    waiter[0].release()
    assert not claim_path(tmp_path, "c1").exists()


def test_stale_temporaries_are_removed_unless_their_cell_is_claimed(tmp_path):
    busy = fake_temporary(tmp_path, "cells", "busy", b"x")
    stale = [fake_temporary(tmp_path, t, "dead", b"x") for t in ("cells", "timeseries")]
    other = tmp_path / "cells" / ".tmp-unrelated"
    other.write_bytes(b"x")
    with claim(tmp_path, "busy"):  # a live writer holds its cell
        assert remove_stale_temporaries(tmp_path) == 2
    assert busy.exists() and other.exists() and not any(p.exists() for p in stale)
    assert remove_stale_temporaries(tmp_path) == 1 and not busy.exists()


# ----------------------------------------------------------------------------- results folder
def _make_read_only(folder: Path) -> Callable[[], None]:
    """Make ``folder`` refuse new files, for root too; returns the undo. Skips if impossible.

    Mode bits do not stop root, so as root the folder is also marked immutable
    (``chattr +i``), which stops everyone; where that is not allowed the test is skipped.
    """
    folder.chmod(0o555)
    undo = [lambda: folder.chmod(0o755)]
    if os.geteuid() == 0 and shutil.which("chattr"):
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            undo.insert(0, lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    try:
        (folder / ".probe").touch()
    except OSError:
        return lambda: [u() for u in undo] and None
    (folder / ".probe").unlink()
    for u in undo:
        u()
    pytest.skip("cannot make a folder read-only for this user here")


@pytest.mark.parametrize("mode", [[], [*FAST[:2], "strategy=round_robin", "seed=0,1"]],
                         ids=["single", "multirun"])
@pytest.mark.parametrize("fault", ["file_in_the_way", "output_dir_is_a_file", "read_only",
                                   "read_only_table_folder"])
def test_unwritable_results_folder_is_one_line_exit_2_before_anything_runs(
        fault, mode, tmp_path, capsys, monkeypatch):
    import helios.cell
    import helios.runner

    def must_not_run(*_a, **_k):
        raise AssertionError("a cell ran")

    monkeypatch.setattr(helios.runner, "run_sweep", must_not_run)
    monkeypatch.setattr(helios.cell, "run_cell", must_not_run)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    undo = None
    if fault == "file_in_the_way":
        output_dir = blocker / "results"
    elif fault == "output_dir_is_a_file":
        output_dir = blocker
    else:
        output_dir = tmp_path / "results"
        target = output_dir / ("smoke" if mode else "default")
        if fault == "read_only":
            output_dir.mkdir()
            target = output_dir
        else:  # a sweep folder whose existing table folder cannot take new parts
            (target / "cells").mkdir(parents=True)
            target = target / "cells"
        undo = _make_read_only(target)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([*mode, "model=tiny", "topology.k=2", f"output_dir={output_dir}"])
        after = sorted(str(p) for p in tmp_path.rglob("*"))
    finally:
        if undo is not None:
            undo()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"helios: config error: output_dir={output_dir}: a folder this process can write to (")
    assert after == before  # nothing written, not even Hydra's record


@pytest.mark.parametrize("mode", [
    [],
    # the same write path under a sweep; slow (~30 s), so not in the default suite
    pytest.param([*FAST[:2], "strategy=round_robin", "seed=0,1,2"], marks=pytest.mark.slow),
], ids=["single", "multirun"])
def test_a_disk_that_fills_up_is_one_line_exit_1_and_keeps_what_was_written(
        mode, ray_local, tmp_path, capsys, monkeypatch):
    import errno
    import types

    import helios.results

    # A full disk is reported by write() or, on delayed-allocation and network file
    # systems, by fsync(): fail the fsync of every write after the first complete cell.
    cells_written = 1 if mode else 0

    def fsync(fd: int) -> None:
        if len(list(tmp_path.rglob("cells/part-*.parquet"))) >= cells_written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)

    monkeypatch.setattr(helios.results, "os", types.SimpleNamespace(**{**vars(os), "fsync": fsync}))
    with pytest.raises(SystemExit) as exit_info:
        main([*mode, "model=tiny", "topology.k=2", f"output_dir={tmp_path}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "cannot write results" in line]
    assert len(lines) == 1 and lines[0].startswith("helios: error: cannot write results to ")
    assert "No space left on device" in lines[0]
    sweep_dir = tmp_path / ("smoke" if mode else "default")
    assert not list(tmp_path.rglob(".tmp-*"))  # the failed write left no temporary file
    if mode:  # the cell written before the disk filled up is whole, and counts as done
        done = load(sweep_dir)
        assert len(done) == 1
        assert_sound(sweep_dir, set(done["cell_id"]))
    else:
        assert not list(sweep_dir.rglob("*.parquet"))


def test_a_part_is_fsynced_before_its_rename_and_its_folder_after(tmp_path, monkeypatch):
    import stat
    import types

    import helios.results

    calls: list[tuple[str, str]] = []

    def fsync(fd: int) -> None:
        calls.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        os.fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("rename", Path(dst).name))
        os.replace(src, dst)

    fake_os = types.SimpleNamespace(**{**vars(os), "fsync": fsync, "replace": replace})
    monkeypatch.setattr(helios.results, "os", fake_os)
    final = tmp_path / "cells" / "part-abc.parquet"
    helios.results.write_atomic(final, b"data")
    assert calls == [("fsync", "file"), ("rename", "part-abc.parquet"), ("fsync", "folder")]
    assert final.read_bytes() == b"data" and not list(tmp_path.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- bad files
TRACE_HEADER = "window,layer,expert,load\n"


def _trace_rows(windows: int = 2, layers: int = 2, experts: int = 8) -> str:
    return "".join(f"{w},{l},{e},{(e + 1) * 10}\n"
                   for w in range(windows) for l in range(layers) for e in range(experts))


BAD_TRACES = {
    "empty.csv": "",
    "header_only.csv": TRACE_HEADER,
    "wrong_columns.csv": "t,layer,expert,count\n" + _trace_rows(),
    "text_load.csv": TRACE_HEADER + _trace_rows().replace(",10\n", ",lots\n"),
    "negative_load.csv": TRACE_HEADER + _trace_rows().replace(",10\n", ",-10\n"),
    "window_gap.csv": TRACE_HEADER + _trace_rows(3).replace("\n1,", "\n5,"),
    "repeated_rows.csv": TRACE_HEADER + _trace_rows() + _trace_rows(1),
    "truncated_line.csv": TRACE_HEADER + _trace_rows()[:-7],
    "not_parquet.parquet": "PAR1 this is not a parquet file",
    "trace.json": "{}",
}


@pytest.mark.parametrize("name", sorted(BAD_TRACES))
def test_malformed_trace_file_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys):
    trace = tmp_path / name
    trace.write_text(BAD_TRACES[name])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["model=tiny", "topology.k=2", "scenario=trace", f"scenario.trace_path={trace}",
              f"output_dir={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"helios: config error: scenario.trace_path={trace}: "), err
    assert "Traceback" not in err[0] and not out.exists()


# ----------------------------------------------------------------------------- cache
def _older_format(doc: dict) -> str:
    return json.dumps({**doc, "format": doc["format"] - 1})


def _bare_placement(doc: dict) -> str:  # a layout without the format/key/checksum envelope
    return json.dumps(doc["placement"])


def _truncated(doc: dict) -> str:
    return json.dumps(doc)[:-40]


DAMAGES = {"older_format": _older_format, "bare_placement": _bare_placement,
           "truncated": _truncated}


def test_the_sweep_cache_actor_solves_again_over_bad_cache_files(ray_local, tmp_path):
    """What the disk cache's own tests show, through the Ray front a sweep uses."""
    from helios.placement.base import Placement
    from helios.placement.cache import DiskPlacementCache
    from helios.placement.ray_cache import PlacementCacheActor, RayPlacementCache

    disk = DiskPlacementCache(tmp_path)
    good = Placement([[[0], [1]], [[1], [0]]], 2, {"strategy": "test"})
    for key, damage in DAMAGES.items():
        disk.put(key, good)
        path = tmp_path / f"{key}.json"
        path.write_text(damage(json.loads(path.read_text())))
        assert disk.get(key) is None, key
    actor = PlacementCacheActor.remote(str(tmp_path))
    solved = Placement([[[1], [0]], [[0], [1]]], 2, {"strategy": "fresh"})
    for key in DAMAGES:
        placement, hit = RayPlacementCache(actor, owner="w").get_or_solve(key, lambda: solved)
        assert not hit and placement.replicas == solved.replicas, key
        assert disk.get(key).replicas == solved.replicas  # overwritten with a valid file
    assert ray_local.get(actor.stats.remote())["solves"] == len(DAMAGES)


# ----------------------------------------------------------------------------- node
# Last in the file: it replaces the session's local Ray by a two-node cluster. Slow (~1 min):
# the default suite keeps test_sweep.py's worker killed on a two-node cluster.
@pytest.mark.slow
def test_a_lost_node_mid_sweep_leaves_the_sweep_complete_on_the_other(ray_cluster, tmp_path):
    from helios.runner import run_sweep

    # Cells of ~0.3 s could all end before the node is gone: each waits 2 s first, so
    # both nodes are mid-cell when the first one finishes and the node is removed.
    cells = preflight([*FAST, "seed=range(3)", "+fault.delay_s=2", f"output_dir={tmp_path}"])
    other = [n for n in ray_cluster.list_all_nodes() if n is not ray_cluster.head_node]
    assert len(other) == 1
    lost: list[int] = []

    def lose_node(_cell, _status, busy_pids):
        # Both workers hold cells; one CPU per node, so one of them runs on the second node.
        if not lost and len(busy_pids) == 2:
            ray_cluster.remove_node(other[0], allow_graceful=False)  # a crash, not a drain
            lost.append(len(busy_pids))

    report = run_sweep(cells, progress=False, print_summary=False, on_result=lose_node)
    assert lost and report.worker_deaths >= 1 and not report.failed
    assert len(report.done) == len(cells)
    assert_sound(tmp_path / "smoke", {cell_id(c) for c in cells})


def test_a_truncated_cells_part_is_reported_and_its_cell_runs_again(tmp_path):
    """Resume trusts a cell only if its cells part opens and holds its own id: a part cut
    short is named on stderr and the cell re-runs (and a whole one is skipped, unless
    +rerun=true), for a single cell as for a sweep."""
    import subprocess
    import sys

    args = ["+sweep=smoke", "strategy=round_robin", f"output_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "helios.sweep", *args, *extra],  # noqa: E731
                                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr
    (part,) = (tmp_path / "smoke" / "cells").glob("part-*.parquet")
    again = run()
    assert "already done" in again.stderr and again.stdout == first.stdout
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])
    repaired = run()
    assert f"damaged part {part}" in repaired.stderr and repaired.returncode == 0
    from helios.results import part_is_whole

    assert part_is_whole(part, part.stem.removeprefix("part-"))
    forced = run("+rerun=true")
    assert "already done" not in forced.stderr and "written to" in forced.stderr
    part.write_bytes(b"not parquet")  # a sweep's plan sees it too: the cell is to run again
    from helios.runner import plan
    from helios.compose import preflight

    todo, done, _ = plan(preflight(["--multirun", *args, "seed=0"]))
    assert [c.cell_id for c in todo] == [part.stem.removeprefix("part-")] and not done


@pytest.mark.parametrize("signame,status", [
    ("SIGINT", 130),
    pytest.param("SIGTERM", 143, marks=pytest.mark.slow),  # the same handler; ~25 s
])
def test_ctrl_c_and_sigterm_stop_with_one_line_and_leave_no_ray_process(signame, status, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Each cell waits 1 s first, and 12 cells on 2 workers leave ~5 s of cells after the
    # first part appears: the signal meets a running sweep even if this test's polling
    # is starved for seconds (with 4 cells it once came after the last cell, exit 0).
    proc = subprocess.Popen([sys.executable, "-m", "helios.sweep", *FAST, "seed=range(12)",
                             "+fault.delay_s=1", f"output_dir={tmp_path}"], cwd=tmp_path,
                            env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.monotonic()
    while not list((tmp_path / "smoke" / "cells").glob("part-*.parquet")):
        assert time.monotonic() - t0 < 240 and proc.poll() is None, "no cell finished"
        time.sleep(0.2)
    os.kill(proc.pid, getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted: \d+ cells done, \d+ not started; run the same command to "
                        r"resume", last), err[-2000:]
    assert "Traceback" not in err
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):  # raylet, GCS and workers are gone with it
        os.killpg(proc.pid, 0)


def test_a_stop_that_ray_swallows_still_stops_the_sweep(ray_local, tmp_path):
    # Ray can turn the KeyboardInterrupt of a Ctrl-C into a status that its call ignores (a
    # sweep once ran to the end, exit 0). The handler has recorded the signal by then: the
    # pool must stop on the record at its next wait, as if the exception had come through.
    import signal

    from helios.runner import STOP_SIGNAL, Interrupted, run_sweep

    cells = preflight([*FAST, "seed=range(4)", "+fault.delay_s=1", f"output_dir={tmp_path}"])

    def swallowed(*_):
        STOP_SIGNAL["signum"] = signal.SIGINT

    with pytest.raises(Interrupted) as stop:
        run_sweep(cells, progress=False, print_summary=False, on_result=swallowed)
    assert stop.value.exit_code == 130
    assert 1 <= len(part_files(tmp_path / "smoke", "cells")) < len(cells)


def test_asking_for_the_requests_table_reruns_a_cell_that_lacks_it(tmp_path):
    args = ["+sweep=smoke", "strategy=round_robin", f"output_dir={tmp_path}"]
    main(args)
    assert not (tmp_path / "smoke" / "requests").exists()
    main([*args, "record.requests=true"])
    assert list((tmp_path / "smoke" / "requests").glob("part-*.parquet"))
