"""Placements in the forms serving engines read, and back (``strategy=from_file``).

Two formats, both JSON:

* ``sglang``: SGLang's ``--init-expert-location`` file, ``{"physical_to_logical_map":
  [[...]]}`` of shape ``(num_hidden_layers, num_physical_experts)``
  (``ExpertLocationMetadata.init_by_mapping`` in ``sglang/srt/eplb/expert_location.py``).
  Rows are *all* hidden layers (``ModelConfigForExpertLocation.num_layers`` is the
  model's ``num_hidden_layers``); dense layers get SGLang's trivial map
  ``arange(num_physical) % E``. Physical expert ``p`` lives on EP rank ``p //
  (num_physical / ep_size)``.
* ``eplb``: DeepSeek EPLB's outputs, ``{"phy2log": (moe_layers, num_physical),
  "log2phy": (moe_layers, E, max count), "logcnt": (moe_layers, E)}``, the arrays
  ``rebalance_experts`` returns, as lists.

Both give every GPU the same number ``S`` of physical slots (the largest copy count of
any GPU in any layer), slot ``g S + i`` being GPU ``g``'s ``i``-th. A GPU holding fewer
than ``S`` copies in a layer pads its slots with second slots of its own expert with
the smallest share (the engines require every slot filled; a second slot on the same GPU
only raises that GPU's share of the expert). Engines split an expert's tokens evenly over
its physical slots, so a placement's solved shares are not carried; reading a file back
gives each GPU ``slots of e on g / slots of e``, which is what an engine would run
(simulate it with ``strategy=from_file``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from helios.errors import ConfigError
from helios.placement.base import Placement, PlacementContext

__all__ = ["FORMATS", "slot_table", "to_document", "write_document", "read_document",
           "placement_from_document", "from_file"]

FORMATS = ("sglang", "eplb")


def slot_table(placement: Placement) -> np.ndarray:
    """Logical expert of every physical slot: shape (layers, num_gpus * S)."""
    G = placement.num_gpus
    shares = placement.share_table()
    held: list[list[list[tuple[float, int]]]] = []
    for layer_r, layer_s in zip(placement.replicas, shares):
        per_gpu: list[list[tuple[float, int]]] = [[] for _ in range(G)]
        for expert, (gpus, share) in enumerate(zip(layer_r, layer_s)):
            for g, s in zip(gpus, share):
                per_gpu[g].append((s, expert))
        held.append(per_gpu)
    width = max(1, max(len(g) for layer in held for g in layer))
    table = np.zeros((placement.layers, G * width), dtype=np.int64)
    for l, per_gpu in enumerate(held):
        coldest_in_layer = min((item for g in per_gpu for item in g), default=(0.0, 0))[1]
        for g, items in enumerate(per_gpu):
            experts = sorted(e for _, e in items)
            pad = min(items)[1] if items else coldest_in_layer
            experts += [pad] * (width - len(experts))
            table[l, g * width:(g + 1) * width] = experts
    return table


def to_document(placement: Placement, fmt: str, num_experts: int,
                num_dense_layers: int = 0) -> dict[str, Any]:
    """The JSON document of ``placement`` in format ``fmt`` (module doc)."""
    phy2log = slot_table(placement)
    if fmt == "sglang":
        trivial = np.arange(phy2log.shape[1]) % num_experts
        rows = [trivial.tolist()] * num_dense_layers + phy2log.tolist()
        return {"physical_to_logical_map": rows}
    if fmt == "eplb":
        logcnt = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])
        width = int(logcnt.max())
        log2phy = np.full((phy2log.shape[0], num_experts, width), -1, dtype=np.int64)
        for l, row in enumerate(phy2log):
            seen = np.zeros(num_experts, dtype=np.int64)
            for slot, expert in enumerate(row.tolist()):
                log2phy[l, expert, seen[expert]] = slot
                seen[expert] += 1
        return {"phy2log": phy2log.tolist(), "log2phy": log2phy.tolist(), "logcnt": logcnt.tolist()}
    raise ConfigError("--format", fmt, " or ".join(FORMATS))


def write_document(doc: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` atomically to ``path``; ``ConfigError`` (nothing written) if it cannot."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK) or path.is_dir():
        raise ConfigError("--out", str(path), "a file path in an existing, writable folder")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_document(path: str | os.PathLike[str], key: str = "strategy.file.path") -> dict[str, Any]:
    """A placement document (either format); ``ConfigError`` naming ``key`` if unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(key, str(path), f"a readable JSON placement file ({type(err).__name__})") from None
    if not isinstance(doc, dict) or not ({"physical_to_logical_map", "phy2log"} & set(doc)):
        raise ConfigError(key, str(path), "a JSON object with physical_to_logical_map (SGLang) "
                                          "or phy2log (EPLB)")
    return doc


def placement_from_document(doc: dict[str, Any], num_experts: int, num_moe_layers: int,
                            num_dense_layers: int, num_gpus: int, source: str = "",
                            key: str = "strategy.file.path") -> Placement:
    """The placement a document describes, checked against the model and the cluster."""
    sglang = "physical_to_logical_map" in doc
    rows = doc["physical_to_logical_map"] if sglang else doc["phy2log"]
    want = num_dense_layers + num_moe_layers if sglang else num_moe_layers
    try:
        table = np.array(rows, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(key, source, "a rectangular array of integer expert ids") from None
    if table.ndim != 2 or table.shape[0] != want:
        raise ConfigError(key, source, f"{want} layer rows for this model (got shape "
                                       f"{list(table.shape)})")
    if table.shape[1] % num_gpus or table.shape[1] < num_experts:
        raise ConfigError(key, source, f"a multiple of the {num_gpus} GPUs, at least {num_experts} "
                                       f"physical slots per layer (got {table.shape[1]})")
    if table.min() < 0 or table.max() >= num_experts:
        raise ConfigError(key, source, f"expert ids in [0, {num_experts}) (the model's experts)")
    table = table[num_dense_layers:] if sglang else table
    per_gpu = table.shape[1] // num_gpus
    replicas, shares = [], []
    for l, row in enumerate(table):
        counts = np.zeros((num_experts, num_gpus), dtype=np.int64)
        np.add.at(counts, (row, np.arange(row.size) // per_gpu), 1)
        if (counts.sum(axis=1) == 0).any():
            missing = int(np.flatnonzero(counts.sum(axis=1) == 0)[0])
            raise ConfigError(key, source, f"every expert in every layer (layer {l} lacks {missing})")
        layer_r, layer_s = [], []
        for e in range(num_experts):
            gpus = np.flatnonzero(counts[e])
            layer_r.append([int(g) for g in gpus])
            layer_s.append([float(counts[e, g] / counts[e].sum()) for g in gpus])
        replicas.append(layer_r)
        shares.append(layer_s)
    return Placement(replicas, num_gpus, {"strategy": "from_file", "file_slots_per_gpu": per_gpu},
                     shares=shares)


def from_file(ctx: PlacementContext) -> Placement:
    """Strategy ``from_file``: a deployed placement (``strategy.file.path``), simulated layers only."""
    path = ctx.strategy.file.path
    doc = read_document(path)
    placement = placement_from_document(doc, ctx.num_experts, ctx.num_moe_layers,
                                        ctx.num_dense_layers, ctx.num_gpus, path)
    placement.replicas, placement.shares = (placement.replicas[:ctx.layers],
                                            placement.shares[:ctx.layers])
    return placement
