"""Placements exported in SGLang's and EPLB's formats, and read back (strategy=from_file)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helios.errors import ConfigError
from helios.placement import place
from helios.placement.base import Placement
from helios.placement.cache import DiskPlacementCache
from helios.placement.deploy import placement_from_document, slot_table, to_document, write_document
from tests._configs import config


def small_placement() -> Placement:
    """2 layers, 4 experts, 2 GPUs; expert 0 replicated unevenly in layer 0."""
    replicas = [[[0, 1], [0], [1], [1]], [[1], [0], [0], [1]]]
    shares = [[[0.7, 0.3], [1.0], [1.0], [1.0]], [[1.0], [1.0], [1.0], [1.0]]]
    return Placement(replicas, 2, {}, shares=shares)


def test_slots_are_uniform_per_gpu_and_padded_with_the_gpus_smallest_share():
    table = slot_table(small_placement())
    # layer 0: GPU 0 holds {0, 1}, GPU 1 holds {0, 2, 3}: 3 slots each; GPU 0 pads with its
    # expert of smallest share, expert 0 (0.7); in layer 1 shares tie and expert 1 pads
    assert table.shape == (2, 6)
    assert table[0].tolist() == [0, 1, 0, 0, 2, 3]
    assert table[1].tolist() == [1, 2, 1, 0, 3, 0]


@pytest.mark.parametrize("fmt", ["sglang", "eplb"])
def test_round_trip_keeps_every_copy_and_splits_tokens_per_slot(fmt):
    placement = small_placement()
    doc = to_document(placement, fmt, num_experts=4, num_dense_layers=1)
    if fmt == "sglang":
        rows = doc["physical_to_logical_map"]
        assert len(rows) == 3 and rows[0] == [0, 1, 2, 3, 0, 1]  # the dense layer: trivial map
    else:
        assert np.array(doc["logcnt"]).sum(axis=1).tolist() == [6, 6]
        log2phy = np.array(doc["log2phy"])
        assert log2phy.shape == (2, 4, int(np.array(doc["logcnt"]).max()))
    back = placement_from_document(json.loads(json.dumps(doc)), 4, 2, 1, 2, "x")
    assert [sorted(g) for layer in back.replicas for g in layer] == \
        [sorted(g) for layer in placement.replicas for g in layer]
    # expert 0 of layer 0 has 3 slots: 2 on GPU 0 (the pad) and 1 on GPU 1
    assert back.replicas[0][0] == [0, 1] and back.shares[0][0] == pytest.approx([2 / 3, 1 / 3])


@pytest.mark.parametrize("change, message", [
    (lambda d: d["physical_to_logical_map"].pop(), "layer rows"),
    (lambda d: d["physical_to_logical_map"][1].__setitem__(0, 9), "expert ids"),
    (lambda d: [row.pop() for row in d["physical_to_logical_map"]], "multiple of the 2 GPUs"),
])
def test_a_file_that_does_not_match_the_model_is_a_config_error(change, message):
    doc = to_document(small_placement(), "sglang", 4, 1)
    change(doc)
    with pytest.raises(ConfigError) as err:
        placement_from_document(doc, 4, 2, 1, 2, "x")
    assert err.value.key == "strategy.file.path" and message in str(err.value)


def test_writing_to_an_unwritable_place_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        write_document({}, tmp_path / "missing" / "x.json")
    assert err.value.key == "--out"
    assert not (tmp_path / "missing").exists()


def test_export_cli_then_from_file_simulates_the_deployed_placement(tmp_path):
    """A solved tiny-model placement exported by the CLI, and run as strategy=from_file."""
    cfg = config("strategy=eplb", "sim.layers=null", f"output_dir={tmp_path}")
    from helios.cell import prepare

    ctx = prepare(cfg)[3]
    placement = place(ctx)
    cache = DiskPlacementCache(tmp_path / "placement_cache")
    cache.put("a" * 64, placement)
    out = tmp_path / "sglang.json"
    run = subprocess.run([sys.executable, "-m", "helios.placement", "export", str(tmp_path),
                          "--format", "sglang", "--out", str(out), "--model", "tiny"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    back = config("strategy=from_file", f"strategy.file.path={out}", "sim.layers=null")
    ctx_back = prepare(back)[3]
    got = place(ctx_back)
    assert [sorted(g) for layer in got.replicas for g in layer] == \
        [sorted(g) for layer in placement.replicas for g in layer]
    bad = subprocess.run([sys.executable, "-m", "helios.placement", "export", str(tmp_path),
                          "--format", "sglang", "--out", str(out), "--model", "deepseek_v3"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--model" in bad.stderr


def test_from_file_without_a_path_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        config("strategy=from_file")
    assert err.value.key == "strategy.file.path"
