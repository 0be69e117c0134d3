"""Statistics, figures and command line of ``helios.report`` / ``helios.analysis``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helios import analysis
from helios.analysis import analyse, holm
from helios.errors import ConfigError
from helios.report import build, main, markdown_table
from helios.results import write_cell

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BASE_P99 = np.array([10.0, 11.0, 12.5, 13.0, 14.2])
# greedy: clearly faster on every seed; helios: noise around the baseline.
VALUES = {
    "round_robin": BASE_P99,
    "greedy": BASE_P99 - np.array([2.0, 2.1, 1.9, 2.05, 1.95]),
    "helios": BASE_P99 + np.array([0.1, -0.2, 0.15, -0.05, 0.02]),
}


def _row(topology: str, scenario: str, strategy: str, seed: int, p99: float, **extra: float) -> dict:
    return {"sweep": "syn", "cell_id": f"{topology}-{scenario}-{strategy}-{seed}", "topology": topology,
            "model": "tiny", "scenario": scenario, "strategy": strategy, "seed": seed, "p99_ms": p99,
            "p50_ms": p99 / 2, "goodput_tok_s": 1000.0 - p99, "max_link_util": 0.5, "gpu_load_imbalance": 1.2,
            "replication_bytes": 0.0, "cfg.sim.warmup_s": 0.05, "cfg.sim.duration_s": 0.3, **extra}


def write_rows(sweep_dir: Path, rows: list[dict]) -> None:
    for row in rows:
        write_cell(sweep_dir, row["cell_id"], {"cells": [row]})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two topologies x three strategies x five seeds, plus a one-seed group and an overloaded one."""
    rows = []
    for shift, topology in ((0.0, "fat_tree"), (5.0, "dragonfly")):
        for strategy, values in VALUES.items():
            rows += [_row(topology, "stationary", strategy, s, v + shift) for s, v in enumerate(values)]
    rows += [_row("fat_tree", "bursty", s, 0, 20.0 + i) for i, s in enumerate(VALUES)]
    over = {"round_robin": [30.0, 31.0, 32.0], "greedy": [40.0, np.inf, 41.0], "helios": [np.inf] * 3}
    rows += [_row("fat_tree", "sudden_shift", s, i, v) for s, vs in over.items() for i, v in enumerate(vs)]
    sweep = tmp_path_factory.mktemp("synthetic") / "syn"
    write_rows(sweep, rows)
    # Windows and adaptation events of the drift group, for the time-series figure.
    for row in rows:
        if row["scenario"] != "sudden_shift":
            continue
        key = {"sweep": "syn", "cell_id": row["cell_id"]}
        windows = [key | {"window": w, "window_start_s": 0.05 * w, "p99_ms": 10.0 + w + row["seed"],
                          "requests_finished": 5, "throughput_tok_s": 1e4, "max_link_util": 0.1 * w,
                          "replicas": 32, "replication_bytes_in_flight": 0.0} for w in range(6)]
        events = [key | {"time_s": 0.12 + 0.03 * i, "action": action, "layer": 0, "expert": i, "from_gpu": 0,
                         "to_gpu": 1, "bytes": 1e6} for i, action in enumerate(["replicate", "replicate", "evict"])]
        write_cell(sweep, row["cell_id"], {"timeseries": windows, "events": events})
    return sweep


@pytest.fixture(scope="module")
def cells(synthetic: Path) -> pd.DataFrame:
    return analysis.load_cells(synthetic)


def _select(frame: pd.DataFrame, **where: object) -> pd.Series:
    mask = np.ones(len(frame), dtype=bool)
    for key, value in where.items():
        mask &= (frame[key] == value).to_numpy()
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def test_holm_matches_hand_computed_example() -> None:
    # m = 4, sorted 0.005 0.01 0.03 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is not a hypothesis: m = 2 here.
    np.testing.assert_allclose(holm([np.nan, 0.01, 0.04]), [np.nan, 0.02, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).size == 0


def test_means_cis_changes_and_pvalues_match_scipy(synthetic: Path) -> None:
    result = analyse(synthetic)
    assert result.settings.baseline == "round_robin"
    frame = analysis.load_cells(synthetic)
    # default metrics with a value in the sweep (serving=ep figures are absent here)
    present = {m for m in analysis.DEFAULT_METRICS if m in frame and frame[m].notna().any()}
    assert set(result.settings.metrics) == present
    assert {"p99_ms", "goodput_tok_s"} <= present and "tpot_p99_ms" not in present
    for shift, topology in ((0.0, "fat_tree"), (5.0, "dragonfly")):
        base = BASE_P99 + shift
        for strategy, values in VALUES.items():
            x = values + shift
            row = _select(result.summary, topology=topology, scenario="stationary", strategy=strategy,
                          metric="p99_ms")
            assert row["n"] == 5
            assert row["mean"] == pytest.approx(x.mean())
            low, high = stats.t.interval(0.95, 4, loc=x.mean(), scale=stats.sem(x))
            assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
            if strategy == "round_robin":
                continue
            comp = _select(result.comparison, topology=topology, scenario="stationary", strategy=strategy,
                           metric="p99_ms")
            assert comp["p_value"] == pytest.approx(stats.ttest_rel(x, base).pvalue)
            assert comp["change_pct"] == pytest.approx(100 * (x.mean() - base.mean()) / base.mean())
            d_low, d_high = stats.t.interval(0.95, 4, loc=(x - base).mean(), scale=stats.sem(x - base))
            assert comp["change_ci_low"] == pytest.approx(100 * d_low / base.mean())
            assert comp["change_ci_high"] == pytest.approx(100 * d_high / base.mean())
    p99 = result.comparison[result.comparison["metric"] == "p99_ms"]
    np.testing.assert_allclose(p99["p_holm"], holm(p99["p_value"].to_numpy()), equal_nan=True)
    fast = _select(result.comparison, topology="fat_tree", scenario="stationary", strategy="greedy", metric="p99_ms")
    noise = _select(result.comparison, topology="fat_tree", scenario="stationary", strategy="helios",
                    metric="p99_ms")
    assert fast["verdict"] == "better" and bool(fast["significant"])
    assert noise["verdict"] == "n.s." and not bool(noise["significant"])
    # goodput = 1000 - p99: greedy's goodput rises, and for goodput higher is better.
    greedy_goodput = _select(result.comparison, topology="fat_tree", scenario="stationary", strategy="greedy",
                             metric="goodput_tok_s")
    assert greedy_goodput["change_pct"] > 0 and greedy_goodput["verdict"] == "better"
    assert "**n.s.**" in markdown_table(result, "p99_ms")


def test_wilcoxon_pvalues_match_scipy_and_small_n_is_flagged(cells: pd.DataFrame) -> None:
    result = analyse(cells, test="wilcoxon", metrics=["p99_ms"])
    x, b = VALUES["greedy"], BASE_P99
    comp = _select(result.comparison, topology="fat_tree", scenario="stationary", strategy="greedy", metric="p99_ms")
    assert comp["p_value"] == pytest.approx(stats.wilcoxon(x, b).pvalue)
    # n = 5: the exact two-sided minimum is 2/32 = 0.0625, so it can never be significant.
    assert comp["p_value"] == pytest.approx(0.0625)
    assert "cannot reach" in comp["note"] and comp["verdict"] == "n.s."
    assert any("fewer than 6 non-zero paired differences" in n for n in result.notes)
    # with 5 seeds and this many tests, Holm makes every comparison impossible: said once
    assert any(n.startswith("p99_ms: no comparison can be significant with 5 seeds") for n in result.notes)


def test_latency_cis_never_go_below_zero_and_two_seeds_are_flagged() -> None:
    from helios.stats import describe

    row = describe([0.5, 9.5])  # the t interval of these two is [-53, 63]
    assert 0 < row["ci_low"] < row["mean"] < row["ci_high"]
    assert "log scale" in row["note"] and "n=2" in row["note"]
    row = describe([-1.0, 3.0])  # not a positive quantity: the plain t interval stays
    assert row["ci_low"] < 0


def test_each_strategy_keeps_its_colour_whatever_else_is_plotted() -> None:
    from helios import plots

    one = plots.colours(["eplb", "round_robin"])
    two = plots.colours(["greedy", "helios_static", "round_robin", "eplb", "my_new_strategy"])
    assert one["eplb"] == two["eplb"] and one["round_robin"] == two["round_robin"]
    assert len({two[s] for s in ("greedy", "helios_static", "round_robin", "eplb")}) == 4
    assert plots.colours(["my_new_strategy"]) == {"my_new_strategy": two["my_new_strategy"]}


def test_one_seed_group_has_no_ci_and_an_explicit_note(synthetic: Path, cells: pd.DataFrame, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    result = analyse(cells)
    row = _select(result.summary, scenario="bursty", strategy="greedy", metric="p99_ms")
    assert row["n"] == 1 and row["mean"] == pytest.approx(21.0)
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"]) and "one seed" in row["note"]
    comp = _select(result.comparison, scenario="bursty", strategy="greedy", metric="p99_ms")
    assert np.isnan(comp["p_value"]) and comp["verdict"] == "untested"
    assert any("bursty" in n and "one seed" in n for n in result.notes)
    assert main([str(synthetic), "--out", str(tmp_path), "--metrics", "p99_ms", "max_link_util"]) == 0
    out = capsys.readouterr().out
    bursty = [line for line in out.splitlines() if "| bursty |" in line and "| greedy |" in line]
    assert len(bursty) == 2 and all("one seed" in line and "nan" not in line.lower() for line in bursty)
    # The figures cope with one-seed and overloaded (inf) groups too; only the drift group has windows.
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == ["latency_cdf.png", "link_util.png", "p99_bars.png", "timeseries_fat_tree_tiny_sudden_shift.png"]
    for name in names:
        assert (tmp_path / "figures" / name).read_bytes().startswith(PNG_SIGNATURE)
        assert f"figures/{name}" in (tmp_path / "report.md").read_text()


def test_infinite_p99_is_reported_not_nan(cells: pd.DataFrame) -> None:
    result = analyse(cells, metrics=["p99_ms"])
    greedy = _select(result.summary, scenario="sudden_shift", strategy="greedy", metric="p99_ms")
    assert greedy["mean"] == np.inf and greedy["n_inf"] == 1 and "infinite" in greedy["note"]
    assert np.isnan(greedy["ci_low"])
    comp = _select(result.comparison, scenario="sudden_shift", strategy="greedy", metric="p99_ms")
    assert comp["change_pct"] == np.inf and np.isnan(comp["p_value"]) and "t-test undefined" in comp["note"]
    table = markdown_table(result, "p99_ms")
    assert "| inf |" in table
    wil = analyse(cells, metrics=["p99_ms"], test="wilcoxon")
    comp = _select(wil.comparison, scenario="sudden_shift", strategy="greedy", metric="p99_ms")
    x, b = np.array([40.0, np.inf, 41.0]), np.array([30.0, 31.0, 32.0])
    assert comp["p_value"] == pytest.approx(stats.wilcoxon(x, b).pvalue)
    both = _select(wil.comparison, scenario="sudden_shift", strategy="helios", metric="p99_ms")
    assert both["n_pairs"] == 3 and not np.isnan(both["p_value"])  # helios inf vs finite baseline: rankable


def test_bootstrap_ci_is_seeded_and_brackets_the_mean(cells: pd.DataFrame) -> None:
    one = analyse(cells, metrics=["p99_ms"], ci="bootstrap")
    two = analyse(cells, metrics=["p99_ms"], ci="bootstrap")
    pd.testing.assert_frame_equal(one.summary, two.summary)
    row = _select(one.summary, topology="fat_tree", scenario="stationary", strategy="greedy", metric="p99_ms")
    x = VALUES["greedy"]
    assert x.min() <= row["ci_low"] < x.mean() < row["ci_high"] <= x.max()
    assert row["ci_method"] == "bootstrap"


def test_baseline_choice_and_option_errors(cells: pd.DataFrame, tmp_path: Path) -> None:
    assert analysis.choose_baseline(["greedy", "helios", "round_robin"]) == "round_robin"
    assert analysis.choose_baseline(["helios", "greedy"]) == "greedy"
    assert analyse(cells, baseline="helios").settings.baseline == "helios"
    for kwargs, key in (({"baseline": "nope"}, "baseline"), ({"metrics": ["nope"]}, "metrics"),
                        ({"group_by": ["nope"]}, "group-by"), ({"group_by": ["strategy"]}, "group-by"),
                        ({"ci": "nope"}, "ci"), ({"test": "nope"}, "test")):
        with pytest.raises(ConfigError) as err:
            analyse(cells, **kwargs)
        assert err.value.key == key
    # A config the sweep varies beyond the default groups becomes a group key of its own;
    # an explicit grouping too coarse for it is refused, naming the varying column.
    rows = [_row("fat_tree", "stationary", "round_robin", 0, 1.0, **{"cfg.topology.k": k}) | {"cell_id": f"k{k}"}
            for k in (4, 8)]
    write_rows(tmp_path / "dup", rows)
    assert analyse(tmp_path / "dup").settings.group_by == ("topology", "model", "scenario", "cfg.topology.k")
    with pytest.raises(ConfigError, match="cfg.topology.k"):
        analyse(tmp_path / "dup", group_by=["topology", "scenario"])
    # Two cells of the same config and seed (copied parts): nothing can tell them apart.
    write_rows(tmp_path / "same", [_row("fat_tree", "stationary", "round_robin", 0, 1.0) | {"cell_id": c}
                                   for c in ("a", "b")])
    with pytest.raises(ConfigError, match="duplicate cells"):
        analyse(tmp_path / "same")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helios.report", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def _assert_one_line_error(proc: subprocess.CompletedProcess | tuple[int, str], key: str) -> None:
    code, err = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"helios: config error: {key}="), err
    assert "Traceback" not in err


def test_bad_folders_exit_2_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_cells = tmp_path / "no_cells"
    write_cell(no_cells, "abc", {"timeseries": [{"sweep": "x", "cell_id": "abc", "window": 0}]})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for folder in (tmp_path / "missing", empty, no_cells):
        _assert_one_line_error(_cli(str(folder)), "sweep_dir")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_bad_options_exit_2_and_write_nothing(synthetic: Path, capsys: pytest.CaptureFixture) -> None:
    before = sorted(synthetic.rglob("*"))
    for args, key in (([ "--metrics", "p99_ms,bogus"], "metrics"), (["--group-by", "bogus"], "group-by"),
                      (["--baseline", "bogus"], "baseline"), (["--bogus-flag"], "arguments")):
        code = main([str(synthetic), *args])
        _assert_one_line_error((code, capsys.readouterr().err), key)
    assert sorted(synthetic.rglob("*")) == before


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real results folder: model=tiny, 2 strategies x 3 seeds, short runs, requests recorded."""
    from helios.cell import run_cell
    from helios.config import cell_config
    from helios.compose import compose

    out = tmp_path_factory.mktemp("tiny")
    common = ["model=tiny", "sim.duration_s=0.12", "sim.warmup_s=0.05", "scenario.rate=300",
              "record.requests=true", f"output_dir={out}", "sweep=smoke"]
    for strategy in ("round_robin", "greedy"):
        composed = compose([*common, f"strategy={strategy}"])
        for seed in range(3):
            result = run_cell(cell_config(composed | {"seed": seed}))
            write_cell(out / "smoke", result.cell_id, result.tables, result.config)
    return out / "smoke"


def test_report_on_real_sweep_writes_every_listed_figure(tiny_sweep: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = tmp_path / "report"
    assert main([str(tiny_sweep), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    listed = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    names = {Path(p).name for p in listed}
    assert {"p99_bars.png", "latency_cdf.png", "link_util.png"} <= names
    assert any(n.startswith("timeseries_") for n in names)
    for rel in listed:
        path = out / rel
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, rel
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert float(image[..., :3].std()) > 0.01  # not a blank canvas
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(names)  # no stray temporary files
    assert "| fat_tree | tiny | stationary | greedy | 3 |" in text


def test_default_output_goes_next_to_the_data(tiny_sweep: Path) -> None:
    report = build(tiny_sweep, figures=False)
    assert report.report_path == tiny_sweep / "report.md" and report.report_path.exists()
    assert set(report.analysis.summary["strategy"]) == {"greedy", "round_robin"}


@pytest.mark.parametrize("slow_p99, log", [(30.0, False), (300.0, True)])
def test_p99_bars_switch_to_a_log_axis_only_when_one_mean_is_10x_another(
        slow_p99, log, tmp_path, monkeypatch):
    from helios import plots

    summary = pd.DataFrame({
        "metric": "p99_ms", "topology": "fat_tree", "strategy": ["fast", "mid", "slow"],
        "n": 5, "mean": [10.0, 12.0, slow_p99], "ci_low": [9.0, 11.0, slow_p99 * 0.9],
        "ci_high": [11.0, 13.0, slow_p99 * 1.1]})
    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: figures.append(fig) or Path(path))
    plots.p99_bars(summary, ("topology",), tmp_path / "p99.png")
    ax = figures[0].axes[0]
    assert (ax.get_yscale() == "log") is log
    assert ax.get_ylabel().endswith("log scale") is log
    tops = sorted(bar.get_y() + bar.get_height() for bar in ax.patches)
    assert tops == pytest.approx([10.0, 12.0, slow_p99])  # bars end at the means on either axis
    assert ax.get_ylim()[0] < 10.0 and ax.get_ylim()[1] > slow_p99 * 1.1
    assert ax.get_title() == "fat_tree"


def test_group_labels_name_config_keys_and_drop_float_noise():
    from helios.plots import group_label

    assert group_label({"topology": "dragonfly", "cfg.scenario.rate": 2500.0}) == "dragonfly / rate=2500"
    assert group_label({"cfg.scenario.zipf_s": 1.2}) == "zipf_s=1.2"
    assert group_label({}) == "all cells"


def test_a_second_report_removes_the_figures_of_the_first_it_does_not_draw_again(
        tiny_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(tiny_sweep), "--out", str(out)]) == 0
    first = {p.name for p in (out / "figures").iterdir()}
    assert "timeseries_fat_tree_tiny_stationary.png" in first
    (out / "figures" / "notes.txt").write_text("the user's own file")
    assert main([str(tiny_sweep), "--out", str(out), "--group-by", "topology"]) == 0
    second = {p.name for p in (out / "figures").iterdir()}
    listed = {Path(line.split("](", 1)[1].rstrip(")")).name
              for line in (out / "report.md").read_text().splitlines() if line.startswith("![")}
    assert second == listed | {"notes.txt"}  # the old group's time series is gone, the rest kept
    assert "timeseries_fat_tree.png" in second and "timeseries_fat_tree_tiny_stationary.png" not in second


def test_regret_is_the_paired_change_against_the_bound_next_to_the_baselines(synthetic: Path) -> None:
    result = analyse(synthetic, metrics=["p99_ms"], regret="greedy")
    assert result.regret_of == "greedy"
    for topology, shift in (("fat_tree", 0.0), ("dragonfly", 5.0)):
        bound = VALUES["greedy"] + shift
        x = VALUES["helios"] + shift
        row = _select(result.regret, topology=topology, scenario="stationary", strategy="helios",
                      metric="p99_ms")
        assert row["baseline"] == "greedy"
        assert row["change_pct"] == pytest.approx(100 * (x.mean() - bound.mean()) / bound.mean())
        assert row["p_value"] == pytest.approx(stats.ttest_rel(x, bound).pvalue)
    table = markdown_table(result, "p99_ms")
    assert "regret vs greedy" in table.splitlines()[0] and "| bound |" in table
    with pytest.raises(ConfigError):
        analyse(synthetic, regret="nope")


def test_a_group_without_request_rows_still_gets_its_percentile_curve(tmp_path: Path) -> None:
    """No empty CDF panel: a group whose cells wrote no requests table shows its per-cell
    percentiles, next to a group drawn from its requests."""
    import matplotlib

    matplotlib.use("Agg")
    from helios import plots

    cells = pd.DataFrame([_row(t, "stationary", "round_robin", 0, 5.0, requests_measured=3)
                          for t in ("fat_tree", "dragonfly")])
    requests = pd.DataFrame({"cell_id": [cells.cell_id[0]] * 3, "latency_ms": [1.0, 2.0, 3.0],
                             "arrival_s": [0.1, 0.1, 0.1]})
    drawn = {}
    original = plots.save_png

    def keep(fig, path):
        drawn["lines"] = [sum(len(line.get_xdata()) > 0 for line in ax.get_lines())
                          for ax in fig.axes if ax.get_visible() and ax.has_data()]
        return original(fig, path)

    plots.save_png = keep
    try:
        plots.latency_cdf(cells, requests, ("topology",), tmp_path / "cdf.png")
    finally:
        plots.save_png = original
    assert drawn["lines"] == [1, 1]
