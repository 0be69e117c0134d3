"""The one-cell command line and its handling of bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._configs import REQUEST_MODEL

from helios.sweep import main

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^Strategy: (\w+), P99 Latency: [\d.]+ ms, Goodput: [\d.]+ tokens/sec, "
                     r"Max Link Congestion: [\d.]+%$")
FAST = [*REQUEST_MODEL, "model=tiny", "topology.k=2", "sim.duration_s=0.1", "sim.warmup_s=0.02",
        "sim.window_s=0.02", "scenario.tokens_per_request=32"]

BAD_INPUTS = [
    (["topology.k=3"], "topology.k=3"),
    (["topology.k=0"], "topology.k=0"),
    (["model.top_k=20", "model=tiny"], "model.top_k=20"),
    (["scenario.rate=-5"], "scenario.rate=-5"),
    (["scenario.popularity=pareto"], "scenario.popularity=pareto"),
    (["topology.thin_servers=5"], "topology.thin_servers=5"),
    (["topology.thin_servers=1", "topology.thin_nics=8"], "topology.thin_nics=8"),
    (["model=mixtral_8x7b", "scenario.gini=0.8"], "scenario.gini=0.8"),
    (["model.routing_gini=0.99"], "model.routing_gini=0.99"),
    (["topology.nic_gbit_s=-400"], "topology.nic_gbit_s=-400"),
    (["topology.fabric_gbit_s=0"], "topology.fabric_gbit_s=0"),
    (["sim.duration_s=-1"], "sim.duration_s=-1"),
    (["sim.warmup_s=0.5", "sim.duration_s=0.3"], "sim.warmup_s=0.5"),
    (["model=mixtral_8x7b", "gpu.expert_memory_fraction=0.01"], "gpu.expert_memory_fraction=0.01"),
    (["topology=torus"], "topology=torus"),
    (["model=gpt5"], "model=gpt5"),
    (["strategy=magic"], "strategy=magic"),
    (["strategy.routing=telepathy"], "strategy.routing=telepathy"),
    (["sim.layers=abc"], "sim.layers=abc"),
    (["sim.bogus=1"], "sim.bogus=1"),
    (["+sim.bogus=1"], "sim.bogus=1"),
    (["seed=-1"], "seed=-1"),
    (["topology=dragonfly", "topology.g=100"], "topology.g=100"),
    (["topology=dragonfly", "topology.routing=ugal"], "topology.routing=ugal"),
    (["scenario.token_distribution=zipf"], "scenario.token_distribution=zipf"),
    (["sim.layers=100"], "sim.layers=100"),
    (["record.requests=maybe"], "record.requests=maybe"),
    (["strategy=eplb", "strategy.eplb.num_redundant=100000"], "strategy.eplb.num_redundant=100000"),
    # appended with the fault-injection suite (tests/test_faults.py has bad trace files and
    # unwritable results folders)
    (["gpu.efficiency=1.5"], "gpu.efficiency=1.5"),
    (["ray.num_workers=0"], "ray.num_workers=0"),
    (["ray.address=5"], "ray.address=5"),
    (["scenario=tsunami"], "scenario=tsunami"),
    (["seed=1.5"], "seed=1.5"),
    (["seed="], "seed="),
    (["model.num_experts=[1,2]"], "model.num_experts=[1, 2]"),
    (["scenario=trace", "scenario.trace_path=README.md"], "scenario.trace_path=README.md"),
    (["scenario=trace", "scenario.trace_path=no/such/trace.csv"],
     "scenario.trace_path=no/such/trace.csv"),
    (["--multirun", "seed=range(0)"], "seed=range(0)"),
    (["--multirun", "model=tiny", "strategy=glob(zzz*)"], "strategy=glob(zzz*)"),
    (["--multirun", "+sweep=nope"], "sweep=nope"),
    (["--multirun", "model=tiny", "strategy=round_robin,nope"], "strategy=nope"),
    # serving=ep (the default serving model)
    (["serving.max_batch_tokens=0"], "serving.max_batch_tokens=0"),
    (["serving.prompt_tokens=-5"], "serving.prompt_tokens=-5"),
    (["serving.output_cv=-1"], "serving.output_cv=-1"),
    (["serving.kv_memory_fraction=0.0001"], "serving.kv_memory_fraction=0.0001"),
    (["gpu=h900"], "gpu=h900"),
    (["gpu.name=h900"], "gpu.name=h900"),
    (["serving=foo"], "serving=foo"),
    (["model=tiny", "topology.gpus_per_server=1", "serving.dispatch=per_node"],
     "serving.dispatch=per_node"),
    # names are names: nothing outside output_dir
    (["sweep=../../x"], "sweep=../../x"),
    (["sweep=/abs"], "sweep=/abs"),
    (["sweep=a/b"], "sweep=a/b"),
    (["sweep=.hidden"], "sweep=.hidden"),
    (["sweep=" + "x" * 101], "sweep=" + "x" * 101),
    (["sweep=${oc.env:HOME}"], "sweep=" + os.environ.get("HOME", "")),
    (["--multirun", "model=tiny", "sweep=../up", "seed=0,1"], "sweep=../up"),
    # cells too large to run: one line naming the key that drives the cost
    (["scenario.rate=1e12"], "scenario.rate=1000000000000.0"),
    (["sim.duration_s=1e9"], "sim.duration_s=1000000000.0"),
    (["sim.window_s=1e-9"], "sim.window_s=1e-09"),
    (["sim.chunk_kib=1e-6"], "sim.chunk_kib=1e-06"),
    (["topology.k=64"], "topology.k=64"),
    (["topology.gpus_per_server=100000"], "topology.gpus_per_server=100000"),
    (["*REQUEST", "model=tiny", "scenario.tokens_per_request=1000000000"],
     "scenario.tokens_per_request=1000000000"),
    (["--multirun", "model=tiny", "scenario.rate=100,1e13"], "scenario.rate=10000000000000.0"),
    # interpolations that do not resolve
    (["ray.address=${oc.env:HELIOS_NO_SUCH_VAR}"], "ray.address=${oc.env:HELIOS_NO_SUCH_VAR}"),
    (["--multirun", "model=tiny", "seed=0,1", "ray.address=${oc.env:HELIOS_NO_SUCH_VAR}"],
     "ray.address=${oc.env:HELIOS_NO_SUCH_VAR}"),
    # a comma list outside --multirun
    (["strategy=round_robin,greedy"], "strategy=round_robin,greedy"),
    (["scenario.rate=100,200"], "scenario.rate=100,200"),
    # integer ranges
    (["seed=9223372036854775808"], "seed=9223372036854775808"),
    (["scenario.popularity_seed=9223372036854775808"], "scenario.popularity_seed=9223372036854775808"),
    # runtime adaptation (serving=ep)
    (["telemetry.delay_s=-1"], "telemetry.delay_s=-1"),
    (["strategy=helios_dynamic", "strategy.adaptation.interval_steps=0"],
     "strategy.adaptation.interval_steps=0"),
    (["strategy=eplb_dynamic", "strategy.adaptation.window_steps=0"],
     "strategy.adaptation.window_steps=0"),
    (["strategy=helios_dynamic", "strategy.adaptation.migration_gbyte_s=0"],
     "strategy.adaptation.migration_gbyte_s=0"),
    (["strategy=helios_dynamic", "strategy.adaptation.migration_gbyte_s=-3"],
     "strategy.adaptation.migration_gbyte_s=-3"),
    (["strategy=eplb_dynamic", "strategy.adaptation.migration_gbyte_s=5"],
     "strategy.adaptation.migration_gbyte_s=5.0"),
    (["*REQUEST", "model=tiny", "strategy=eplb_dynamic_sglang"], "strategy=eplb_dynamic_sglang"),
    (["strategy.routing=least_loaded"], "strategy.routing=least_loaded"),
    # experts that do not fit in one cell of a sweep: refused before any cell runs
    (["--multirun", "+sweep=smoke", "strategy=round_robin",
      "gpu.expert_memory_fraction=0.5,0.000001"], "gpu.expert_memory_fraction=1e-06"),
]


@pytest.mark.parametrize("argv,named", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, named, tmp_path, capsys):
    argv = [a for arg in argv for a in (REQUEST_MODEL if arg == "*REQUEST" else [arg])]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"helios: config error: {named}: ")
    assert not any(tmp_path.iterdir())


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helios.sweep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_runs_one_cell_prints_the_summary_and_writes_parquet(tmp_path):
    from helios.results import load

    proc = _run([*FAST, "strategy=greedy", "seed=3", f"output_dir={tmp_path}/res"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("Strategy:")]
    assert len(lines) == 1 and SUMMARY.match(lines[0]), proc.stdout
    cells = load(tmp_path / "res" / "default", "cells")
    assert len(cells) == 1
    assert cells.loc[0, "strategy"] == "greedy" and cells.loc[0, "seed"] == 3
    assert f"{cells.loc[0, 'p99_ms']:.1f} ms" in lines[0]


def test_cli_config_error_has_no_traceback(tmp_path):
    proc = _run(["topology.k=5", f"output_dir={tmp_path}/res"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "helios: config error: topology.k=5: an even integer >= 2"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "res").exists()


def test_the_write_probe_touches_only_output_dir(tmp_path):
    """A missing output_dir is created and probed; nothing is written beside it."""
    from types import SimpleNamespace

    from helios.storage import check_output_dirs

    out = tmp_path / "a" / "b"
    check_output_dirs([SimpleNamespace(output_dir=str(out), sweep="s")])
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]
    assert not any(out.iterdir())


@pytest.mark.parametrize("how", ["ray.address", "RAY_ADDRESS"])
def test_an_unreachable_ray_cluster_is_one_line_exit_2_within_the_timeout(how, tmp_path):
    import time

    address = "127.0.0.1:9"  # the discard port: nothing listens there
    args = ["--multirun", *FAST, "seed=0,1", f"output_dir={tmp_path}", "ray.connect_timeout_s=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if how == "ray.address":
        args.append(f"ray.address={address}")
    else:
        env["RAY_ADDRESS"] = address
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "helios.sweep", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("helios:")]
    assert lines == [f"helios: error: cannot reach Ray at {address} within 2 s"], proc.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "default" / "cells").exists()


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["-c", "job"], ["--cfg", "all", "--resolve"]])
def test_hydras_cfg_flags_print_the_config_and_run_nothing(flags, tmp_path, capsys):
    main([*flags, "model=tiny", f"output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "name: tiny" in out and "topology:" in out
    assert not any(tmp_path.iterdir())


def test_bench_help_is_usage_not_an_error(capsys):
    from helios.bench.__main__ import main as bench_main

    assert bench_main(["--help"]) == 0
    assert "usage: python -m helios.bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv,key", [(["sweep", "--fixed-cells", "-3"], "--fixed-cells"),
                                      (["sweep", "--cells", "x"], "--cells"),
                                      (["engine", "--repeat", "0"], "--repeat"),
                                      (["rank", "--random", "0"], "--random"),
                                      (["rank", "--serving", "grpc"], "--serving"),
                                      (["rank", "--seeds", "0"], "--seeds"),
                                      (["deepep", "--bogus"], "--bogus")])
def test_a_bad_bench_option_is_one_line_exit_2(argv, key, capsys):
    from helios.bench.__main__ import main as bench_main

    with pytest.raises(SystemExit) as stop:
        bench_main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("helios: config error:") and key in err[0]


def test_a_dry_run_lists_every_cell_with_its_status_and_writes_nothing(tmp_path, capsys):
    main(["--multirun", *FAST, "seed=0,1", "strategy=round_robin,greedy", f"output_dir={tmp_path}",
          "+dry_run=true"])
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line[:16].isalnum() and len(line.split()) >= 6]
    assert len(rows) == 4 and all(" to run " in row for row in rows)
    assert out[-1].startswith("helios: dry run: 4 cells, 4 to run, 0 done")
    assert not any(tmp_path.iterdir())


def test_help_is_helios_text_and_its_key_lines_match_the_config_help(tmp_path):
    import dataclasses

    from helios import config as c

    proc = _run(["--help"], tmp_path)
    assert proc.returncode == 0 and "helios: which expert placement" in proc.stdout
    assert "+sweep=<name>" in proc.stdout and "strategy: " in proc.stdout
    keys = [line.strip() for line in proc.stdout.split("== Key settings ==")[1].split("\n\n")[0].splitlines()
            if line.strip() and not line.strip().startswith("+")]
    assert len(keys) >= 10
    for line in keys:
        key, _, text = line.partition(": ")
        obj = c.CellConfig()
        *parents, name = key.split(".")
        for part in parents:
            obj = getattr(obj, part)
        field = {f.name: f for f in dataclasses.fields(obj)}[name]
        assert field.metadata["help"] == text, key
    assert not any(tmp_path.iterdir())
