"""A cell's identity: the content hash that names its results (:func:`cell_id`).

Kept apart from :mod:`helios.cell` so that a sweep's driver, which names and plans
cells but never simulates them, does not import the simulator (numba, scipy, the
placement solvers: about 0.6 s of a sweep's start).
"""

from __future__ import annotations

import hashlib
import json

from helios.config import CellConfig, to_dict

#: Bumped whenever a change to the simulator can change any result; part of every cell id.
SIM_MODEL_VERSION = "helios-sim-8"

#: Config sections that do not change a cell's results (excluded from its id).
NON_SEMANTIC = ("ray", "output_dir", "sweep", "record", "rerun")
#: Keys of ``sim`` that only bound what may run (the preflight's limits).
NON_SEMANTIC_SIM = ("max_events", "max_memory_gib")


def cell_id(cfg: CellConfig) -> str:
    """Content hash of the result-relevant config, the seed and :data:`SIM_MODEL_VERSION`."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in NON_SEMANTIC}
    data["sim"] = {k: v for k, v in data["sim"].items() if k not in NON_SEMANTIC_SIM}
    blob = json.dumps({"cfg": data, "model_version": SIM_MODEL_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
