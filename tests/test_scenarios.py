"""Drift scenarios (helios.scenarios): popularity over time, burst rates, trace replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _configs import config
from helios.config import SCENARIOS, cell_config
from helios.errors import ConfigError
from helios.traces import REPO_ROOT, load_trace
from helios.compose import compose
from helios.popularity import zipf_popularity
from helios.workload import SCENARIO_CLASSES, Workload

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from make_example_trace import make_trace  # noqa: E402

NAMES = ("stationary", "gradual_drift", "sudden_shift", "bursty", "trace", "domain_shift",
         "periodic")


def workload(cfg, seed=0):
    return Workload(cfg.scenario, cfg.model.num_experts, cfg.model.top_k, 8, cfg.sim.layers,
                    cfg.sim.duration_s, seed, routing_gini=cfg.model.routing_gini)


def test_every_scenario_is_registered_and_composes():
    assert set(NAMES) <= set(SCENARIOS) and set(NAMES) <= set(SCENARIO_CLASSES)
    for name in NAMES:
        cfg = cell_config(compose([f"scenario={name}", "sim.layers=4"]))
        assert cfg.scenario.name == name and isinstance(cfg.scenario, SCENARIOS[name])
        # the drift scenarios inherit rate and request size from scenario/stationary.yaml
        assert cfg.scenario.rate == cell_config(compose([])).scenario.rate


@pytest.mark.parametrize("first", ["helios.config", "helios.workload", "helios.scenarios", "helios.cell"])
def test_registration_has_no_import_cycle(first):
    code = (f"import {first}; from helios.config import SCENARIOS; "
            "from helios.workload import SCENARIO_CLASSES; "
            "assert {'gradual_drift','sudden_shift','bursty','trace','domain_shift','periodic'} "
            "<= set(SCENARIOS) & set(SCENARIO_CLASSES)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_gradual_drift_rotates_ranks_every_period():
    cfg = config("scenario=gradual_drift", "scenario.period_s=0.05", "scenario.shift=3")
    scen = workload(cfg).scenario
    E = cfg.model.num_experts
    for k in range(7):
        for t in (k * 0.05 + 1e-9, (k + 1) * 0.05 - 1e-9):
            pop = scen.popularity(t)
            assert pop.shape == (cfg.sim.layers, E)
            np.testing.assert_allclose(pop.sum(axis=1), 1.0)
            for layer, perm in enumerate(scen.permutations):
                # the expert of rank r in period k is perm[(r - 3k) mod E]
                expected = zipf_popularity(E, cfg.scenario.zipf_s, np.roll(perm, 3 * k))
                np.testing.assert_allclose(pop[layer], expected)
                assert np.argmax(pop[layer]) == perm[(-3 * k) % E]
    assert not np.allclose(scen.popularity(0.0), scen.popularity(0.05))


def test_sudden_shift_repermutes_once_and_is_seeded():
    cfg = config("scenario=sudden_shift", "scenario.t_shift_s=0.1")
    a, b = workload(cfg).scenario, workload(cfg, seed=7).scenario
    before, after = a.popularity(0.0999), a.popularity(0.1)
    np.testing.assert_array_equal(before, a.popularity(0.0))
    np.testing.assert_array_equal(after, a.popularity(5.0))
    assert not np.array_equal(np.argmax(before, axis=1), np.argmax(after, axis=1))
    np.testing.assert_allclose(np.sort(before, axis=1), np.sort(after, axis=1))  # same Zipf values
    # popularity_seed fixes both permutations whatever the cell seed; another seed moves them
    np.testing.assert_array_equal(after, b.popularity(0.2))
    other = workload(config("scenario=sudden_shift", "scenario.popularity_seed=5")).scenario
    assert not np.array_equal(other.popularity(0.2), after)


def test_sudden_shift_moves_the_drawn_experts():
    cfg = config("scenario=sudden_shift", "scenario.t_shift_s=0.1", "scenario.zipf_s=1.5")
    wl = workload(cfg)
    hot_before = np.argmax(wl.scenario.popularity(0.0)[0])
    hot_after = np.argmax(wl.scenario.popularity(0.2)[0])
    picks = {False: np.zeros(16), True: np.zeros(16)}
    for req in wl.requests():
        picks[req.arrival >= 0.1] += np.bincount(req.experts[0].ravel(), minlength=16)
    assert np.argmax(picks[False]) == hot_before and np.argmax(picks[True]) == hot_after


def test_bursty_rate_and_arrivals():
    cfg = config("scenario=bursty", "scenario.rate=500", "scenario.burst_rate=2000",
                 "scenario.period_s=0.1", "scenario.duty=0.25", "sim.duration_s=20", "sim.window_s=0.1")
    scen = workload(cfg).scenario
    assert scen.max_rate == 2000
    assert scen.rate(0.0) == 500 and scen.rate(0.074) == 500
    assert scen.rate(0.076) == 2000 and scen.rate(0.099) == 2000 and scen.rate(0.101) == 500
    times = np.fromiter(workload(cfg, seed=3).arrival_times(), dtype=float)
    in_burst = (times % 0.1) >= 0.075
    # expected: 20 s x (0.75 x 500 + 0.25 x 2000) = 7500 base + 10000 burst arrivals
    assert in_burst.sum() == pytest.approx(10_000, rel=0.05)
    assert (~in_burst).sum() == pytest.approx(7_500, rel=0.05)


# --------------------------------------------------------------------------- trace
def write_trace(tmp_path: Path, frame: pd.DataFrame, name="trace.csv") -> str:
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def tiny_trace(windows=3, layers=2, experts=16, seed=1) -> pd.DataFrame:
    return make_trace(windows, layers, experts, pairs=5000, zipf_s=1.0, drift=0.5, seed=seed)


def test_trace_replays_normalised_loads_csv_and_parquet(tmp_path):
    frame = tiny_trace()
    for name in ("t.csv", "t.parquet"):
        path = write_trace(tmp_path, frame, name)
        cfg = config("scenario=trace", f"scenario.trace_path={path}", "scenario.trace_window_s=0.02")
        scen = workload(cfg).scenario
        for w in range(3):
            rows = frame[frame.window == w]
            for layer in range(2):
                load = rows[rows.layer == layer].sort_values("expert").load.to_numpy(float)
                np.testing.assert_allclose(scen.popularity(w * 0.02 + 0.001)[layer], load / load.sum())
        np.testing.assert_array_equal(scen.popularity(0.061), scen.popularity(0.001))  # loops


def test_trace_can_hold_its_last_window(tmp_path):
    path = write_trace(tmp_path, tiny_trace())
    cfg = config("scenario=trace", f"scenario.trace_path={path}", "scenario.trace_window_s=0.02",
                 "scenario.loop=false")
    scen = workload(cfg).scenario
    np.testing.assert_array_equal(scen.popularity(10.0), scen.popularity(0.05))


def test_example_trace_is_valid_and_reproducible():
    cfg = cell_config(compose(["scenario=trace", "sim.layers=4"]))  # default model: 256 experts
    loads = load_trace(cfg.scenario.trace_path)
    assert loads.shape[1:] == (4, cfg.model.num_experts)
    shipped = pd.read_csv(REPO_ROOT / "conf" / "traces" / "example_trace.csv")
    pd.testing.assert_frame_equal(shipped, make_trace(12, 4, 256, 122_880, 1.0, 0.3, 0))


def _bad(tmp_path, frame, name="bad.csv", *extra):
    path = write_trace(tmp_path, frame, name) if frame is not None else str(tmp_path / name)
    with pytest.raises(ConfigError) as info:
        config("scenario=trace", f"scenario.trace_path={path}", *extra)
    assert info.value.key == "scenario.trace_path" and info.value.value == path
    return info.value.allowed


def test_malformed_traces_fail_at_config_time(tmp_path):
    good = tiny_trace()
    assert "existing" in _bad(tmp_path, None, "missing.csv")
    assert "missing load" in _bad(tmp_path, good.drop(columns="load"))
    neg = good.copy()
    neg.loc[3, "load"] = -1
    assert "load" in _bad(tmp_path, neg)
    frac = good.astype({"expert": float})
    frac.loc[0, "expert"] = 0.5
    assert "'expert'" in _bad(tmp_path, frac)
    assert "window 1 is missing" in _bad(tmp_path, good[good.window != 1])
    assert "repeat" in _bad(tmp_path, pd.concat([good, good.iloc[:1]]))
    assert "at least model.top_k" in _bad(tmp_path, good.assign(load=np.where(good.expert == 0, 5, 0)))
    assert "model.num_experts" in _bad(tmp_path, tiny_trace(experts=20))
    assert "sim.layers" in _bad(tmp_path, tiny_trace(layers=1))
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"scenario.trace_path=.*\.csv, \.parquet, \.pq, \.npz"):
        config("scenario=trace", f"scenario.trace_path={tmp_path / 't.json'}")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="readable"):
        config("scenario=trace", f"scenario.trace_path={tmp_path / 'garbage.parquet'}")


def test_domain_shift_hands_dominance_on_every_period_and_blends():
    cfg = cell_config(compose(["scenario=domain_shift", "sim.layers=2", "scenario.period_s=0.5",
                               "scenario.transition_s=0.1", "scenario.dominant_weight=0.7"]))
    scen = workload(cfg).scenario
    profiles = scen.profile_popularity  # (3, layers, E)
    assert profiles.shape[0] == 3 and not np.allclose(profiles[0], profiles[1])
    for t, dominant in ((0.2, 0), (0.7, 1), (1.2, 2), (1.7, 0)):
        w = scen.weights(t)
        assert w.argmax() == dominant and w.max() == pytest.approx(0.7) and w.sum() == pytest.approx(1)
        np.testing.assert_allclose(scen.popularity(t), np.tensordot(w, profiles, axes=1), atol=1e-12)
    np.testing.assert_allclose(scen.weights(0.55), 0.5 * (scen.weights(0.4) + scen.weights(0.7)))
    again = workload(cfg).scenario
    np.testing.assert_array_equal(again.profile_popularity, profiles)


def test_periodic_weights_oscillate_with_the_period():
    cfg = cell_config(compose(["scenario=periodic", "sim.layers=2", "scenario.period_s=1.0"]))
    scen = workload(cfg).scenario
    np.testing.assert_allclose(scen.weights(0.0), [1, 0])
    np.testing.assert_allclose(scen.weights(0.5), [0, 1], atol=1e-12)
    np.testing.assert_allclose(scen.weights(0.25), [0.5, 0.5])
    np.testing.assert_allclose(scen.popularity(1.0), scen.popularity(0.0))
    assert scen.popularity(0.3).sum(axis=1) == pytest.approx(np.ones(2))


ENGINE_TRACES = {
    "sglang_stat": "conf/traces/example_sglang_stat.npz",
    "sglang_per_pass": "conf/traces/example_sglang_per_pass.npz",
    "vllm": "conf/traces/example_vllm_routed_experts.npy",
}


def test_engine_trace_examples_read_to_the_loads_they_were_made_from():
    """The shipped examples hold one synthetic trace in three formats: SGLang's stat and
    per_pass dumps (dense layer rows dropped, per-rank records summed, physical slots
    folded onto logical experts) must give the same loads; vLLM's routed experts count
    256 tokens x top-2 per window and layer."""
    stat = load_trace(ENGINE_TRACES["sglang_stat"])
    per_pass = load_trace(ENGINE_TRACES["sglang_per_pass"])
    vllm = load_trace(ENGINE_TRACES["vllm"], tokens_per_window=256)
    assert stat.shape == per_pass.shape == vllm.shape == (6, 4, 16)
    np.testing.assert_array_equal(stat, per_pass)
    np.testing.assert_array_equal(vllm.sum(axis=2), np.full((6, 4), 512))
    raw = np.load(REPO_ROOT / ENGINE_TRACES["vllm"])
    np.testing.assert_array_equal(vllm[0, 2], np.bincount(raw[:256, 2].ravel(), minlength=16))


@pytest.mark.parametrize("name", sorted(ENGINE_TRACES))
def test_an_engine_trace_drives_a_cell(name, tmp_path):
    from helios.cell import run_cell

    from tests._configs import TINY_EP, config

    cfg = config("scenario=trace", f"scenario.trace_path={ENGINE_TRACES[name]}",
                 "scenario.trace_tokens_per_window=256", "sim.duration_s=0.2", "sim.warmup_s=0.05",
                 f"output_dir={tmp_path}", base=TINY_EP)
    row = run_cell(cfg, cache=False).tables["cells"][0]
    assert row["output_tok_s"] > 0


def _bad_trace(tmp_path, name, **arrays):
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        np.save(path, arrays["ids"])
    return str(path)


@pytest.mark.parametrize("make,why", [
    (lambda p: _bad_trace(p, "neg.npz", logical_count=-np.ones((2, 4, 16), dtype=np.int32)), "integers >= 0"),
    (lambda p: _bad_trace(p, "half.npz", logical_count=np.full((2, 4, 16), 0.5)), "integers >= 0"),
    (lambda p: _bad_trace(p, "layers.npz", logical_count=np.ones((2, 3, 16), dtype=np.int32)),
     "model.num_moe_layers (4)"),
    (lambda p: _bad_trace(p, "experts.npz", logical_count=np.ones((2, 4, 12), dtype=np.int32)),
     "model.num_experts (16)"),
    (lambda p: _bad_trace(p, "topk.npy", ids=np.zeros((8, 4, 3), dtype=np.int16) + np.arange(3)),
     "model.top_k (2)"),
    (lambda p: _bad_trace(p, "vlayers.npy", ids=np.zeros((8, 5, 2), dtype=np.int16) + np.arange(2)),
     "model.num_moe_layers (4)"),
    (lambda p: _bad_trace(p, "huge.npy", ids=np.full((1, 4, 2), 2**31 - 1, dtype=np.int32)), "expert ids <"),
    (lambda p: _bad_trace(p, "keys.npz", other=np.ones(3)), "logical_count (stat)"),
    (lambda p: str(p), "a regular file"),
    (lambda p: (p / "dump.pt").write_bytes(b"PK\x03\x04") and str(p / "dump.pt"), "does not unpickle"),
])
def test_bad_engine_traces_are_one_line_errors(make, why, tmp_path):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        cell_config(compose(["model=tiny", "scenario=trace", f"scenario.trace_path={path}"]))
    assert err.value.key == "scenario.trace_path" and why in err.value.one_line()


def test_huge_trace_ids_are_refused_before_a_dense_array_is_built(tmp_path):
    path = tmp_path / "huge.csv"
    pd.DataFrame({"window": [0], "layer": [0], "expert": [2**40], "load": [1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="'expert' ids are below 65536"):
        load_trace(str(path))
    path = tmp_path / "wide.csv"
    pd.DataFrame({"window": [2**23], "layer": [1000], "expert": [60000], "load": [1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="cells; it spans"):
        load_trace(str(path))
