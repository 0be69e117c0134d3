"""Tests of the content-addressed placement cache (helios.placement.cache)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helios.cell import build_cluster, prepare, run_cell
from helios.placement import STRATEGIES, Placement, Strategy, ilp
from helios.placement.cache import (CACHE_FORMAT, DiskPlacementCache, cluster_fingerprint,
                                    obtain_placement, placement_key)
from tests._configs import config

STATIC = ("strategy=helios_static", "strategy.ilp.time_limit_s=0.5", "sim.duration_s=0.08",
          "sim.warmup_s=0.02")


def ctx_of(*overrides):
    return prepare(config(*STATIC, *overrides))[3]


def a_placement(num_gpus=8, layers=2, experts=16) -> Placement:
    return Placement([[[e % num_gpus] for e in range(experts)] for _ in range(layers)], num_gpus,
                     {"strategy": "test", "ilp_gap": float("nan")})


# ---------------------------------------------------------------------------- key
def test_key_is_stable_and_hex():
    key = placement_key(ctx_of())
    assert key == placement_key(ctx_of()) and len(key) == 64 and int(key, 16) >= 0


def test_key_follows_what_the_placement_depends_on():
    base = ctx_of()
    key = placement_key(base)
    ilp_cfg = base.strategy.ilp
    changed = [
        dataclasses.replace(base, strategy=dataclasses.replace(
            base.strategy, ilp=dataclasses.replace(ilp_cfg, network_weight=2.0))),
        dataclasses.replace(base, strategy=dataclasses.replace(
            base.strategy, ilp=dataclasses.replace(ilp_cfg, time_limit_s=9.0))),
        dataclasses.replace(base, strategy=dataclasses.replace(base.strategy, name="helios_hops")),
        dataclasses.replace(base, expected_load=base.expected_load * 1.001),
        dataclasses.replace(base, slots_per_gpu=base.slots_per_gpu - 1),
        dataclasses.replace(base, tokens_per_request=base.tokens_per_request + 1),
        dataclasses.replace(base, source_share=np.r_[base.source_share[:-1] * 0, 1.0]),
        dataclasses.replace(base, spec=dataclasses.replace(base.spec, combine_token_bytes=1.0)),
        ctx_of("topology.fabric_gbit_s=100"),
        ctx_of("scenario.zipf_s=1.3"),
    ]
    keys = [placement_key(c) for c in changed]
    assert key not in keys and len(set(keys)) == len(keys)


def test_key_ignores_what_the_placement_does_not_read():
    base = ctx_of()
    key = placement_key(base)
    same = [
        ctx_of("seed=7"),  # the cell seed (popularity_seed fixes the hot experts)
        ctx_of("strategy.routing=round_robin"),
        dataclasses.replace(base, strategy=dataclasses.replace(
            base.strategy, eplb=dataclasses.replace(base.strategy.eplb, num_redundant=3))),
        dataclasses.replace(base, expected_load=base.expected_load * (1 + 1e-13)),
    ]
    assert all(placement_key(c) == key for c in same)


def test_key_names_the_placement_function_not_the_strategy(monkeypatch):
    """A strategy that reuses helios_static's placement (as helios_dynamic will) shares keys."""
    monkeypatch.setitem(STRATEGIES, "alias", Strategy(ilp.helios_static, params=("ilp",)))
    base = ctx_of()
    alias = dataclasses.replace(base, strategy=dataclasses.replace(base.strategy, name="alias"))
    assert placement_key(alias) == placement_key(base)


def test_cluster_fingerprint_sees_bandwidth_and_routes():
    cfg = config()
    a = build_cluster(cfg.topology)
    b = build_cluster(config("topology.nic_gbit_s=100").topology)
    assert cluster_fingerprint(a) == cluster_fingerprint(a)
    assert cluster_fingerprint(a) != cluster_fingerprint(b)


# ---------------------------------------------------------------------------- disk store
def test_round_trip_and_atomic_files(tmp_path):
    cache = DiskPlacementCache(tmp_path / "c")
    placement = a_placement()
    cache.put("k1", placement)
    got = cache.get("k1")
    assert got.replicas == placement.replicas and got.num_gpus == 8
    assert np.isnan(got.info["ilp_gap"])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["k1.json"]  # no temporary left
    assert cache.get("other") is None


def _solver_counting(placement):
    calls = []

    def solve():
        calls.append(1)
        return placement
    return solve, calls


@pytest.mark.parametrize("damage", ["truncate", "edit", "format", "key", "garbage", "empty"])
def test_damaged_file_is_ignored_resolved_and_overwritten(tmp_path, damage):
    cache = DiskPlacementCache(tmp_path)
    cache.put("k", a_placement())
    path = tmp_path / "k.json"
    text = path.read_text()
    doc = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit":  # valid JSON, placement changed, checksum not
        doc["placement"]["replicas"][0][0] = [7]
        path.write_text(json.dumps(doc))
    elif damage == "format":
        doc["format"] = CACHE_FORMAT + 1
        path.write_text(json.dumps(doc))
    elif damage == "key":
        doc["key"] = "another"
        path.write_text(json.dumps(doc))
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    else:
        path.write_text("")
    assert cache.get("k") is None
    fresh = a_placement(experts=16)
    fresh.replicas[0][0] = [3]
    solve, calls = _solver_counting(fresh)
    placement, hit = cache.get_or_solve("k", solve)
    assert not hit and calls == [1] and placement.replicas[0][0] == [3]
    again, hit = cache.get_or_solve("k", solve)
    assert hit and calls == [1] and again.replicas[0][0] == [3]


def test_bad_keys_are_refused(tmp_path):
    cache = DiskPlacementCache(tmp_path)
    for key in ("../x", "a/b", "", "x" * 200):
        with pytest.raises(ValueError):
            cache.put(key, a_placement())


# ---------------------------------------------------------------------------- obtain / run_cell
def test_obtain_without_cache_solves_each_time(tmp_path):
    ctx = ctx_of()
    _, hit = obtain_placement(ctx, None)
    assert not hit


def test_a_hit_that_does_not_fit_the_context_is_solved_again(tmp_path):
    ctx = ctx_of()
    cache = DiskPlacementCache(tmp_path)
    cache.put(placement_key(ctx), a_placement(num_gpus=4))  # wrong GPU count under the right key
    placement, hit = obtain_placement(ctx, cache)
    assert not hit and placement.num_gpus == ctx.num_gpus
    assert obtain_placement(ctx, cache)[1]  # overwritten with the good one


def test_second_run_of_a_cell_reads_the_cache_and_does_not_solve(tmp_path, monkeypatch):
    cfg = config(*STATIC, f"output_dir={tmp_path}")
    first = run_cell(cfg).tables["cells"][0]
    assert first["placement_cache"] == "miss"
    assert first["ilp_status"] in ("optimal", "feasible")
    assert list((tmp_path / "placement_cache").glob("*.json"))

    def no_solver(*args, **kwargs):
        raise AssertionError("the ILP ran on a cache hit")
    monkeypatch.setattr(ilp, "solve_placement", no_solver)
    second = run_cell(cfg).tables["cells"][0]
    assert second["placement_cache"] == "hit"
    assert second["ilp_status"] == first["ilp_status"]
    assert second["ilp_gap"] == pytest.approx(first["ilp_gap"], nan_ok=True)
    assert second["p99_ms"] == first["p99_ms"]  # same placement, same cell
    # another seed of the same cell shares the placement
    assert run_cell(config(*STATIC, f"output_dir={tmp_path}", "seed=1")).tables["cells"][0][
        "placement_cache"] == "hit"


def test_corrupt_cache_file_is_solved_again_by_run_cell(tmp_path):
    cfg = config(*STATIC, f"output_dir={tmp_path}")
    run_cell(cfg)
    (path,) = (tmp_path / "placement_cache").glob("*.json")
    path.write_text(path.read_text()[:100])
    assert run_cell(cfg).tables["cells"][0]["placement_cache"] == "miss"
    assert run_cell(cfg).tables["cells"][0]["placement_cache"] == "hit"


@pytest.mark.parametrize("blocker", ["directory_at_the_file", "file_at_the_folder"])
def test_a_cache_that_cannot_be_written_is_one_line_and_the_cell_still_runs(blocker, tmp_path,
                                                                            capsys):
    """A directory where the cache file should be (or a file where its folder should be):
    the cell runs on its solved placement, says once why it is not cached, and leaves the
    blocker as it was."""
    cfg = config(*STATIC, f"output_dir={tmp_path}")
    key = placement_key(prepare(cfg)[3])
    root = tmp_path / "placement_cache"
    if blocker == "directory_at_the_file":
        (root / f"{key}.json" / "keep").mkdir(parents=True)
    else:
        root.write_text("not a folder")
    for _ in range(2):
        row = run_cell(cfg).tables["cells"][0]
        assert row["placement_cache"] == "miss" and row["ilp_status"] in ("optimal", "feasible")
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("helios: placement cache: cannot store")
    assert (root / f"{key}.json" / "keep").is_dir() if blocker == "directory_at_the_file" \
        else root.read_text() == "not a folder"
    assert not list(tmp_path.rglob("*.tmp"))
