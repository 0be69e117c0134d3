"""The Parquet dataset of a sweep: ``<output_dir>/<sweep>/<table>/part-<cell_id>.parquet``.

Every cell writes one part file per non-empty table. A part is written under a
hidden temporary name in the same folder and then renamed (``os.replace``), so a
reader, or a crash, never sees a half-written part. Readers skip hidden files.
The file metadata carries the cell's composed config (JSON) and package versions.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("cells", "timeseries", "events", "requests", "failures")
_PACKAGES = ("helios-moe", "numpy", "simpy", "networkx", "pulp", "pandas", "pyarrow", "ray", "hydra-core")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def part_path(sweep_dir: Path | str, table: str, cell_id: str) -> Path:
    """Where ``table``'s part file of cell ``cell_id`` lives."""
    return Path(sweep_dir) / table / f"part-{cell_id}.parquet"


def write_part(sweep_dir: Path | str, table: str, cell_id: str, rows: list[Mapping[str, Any]],
               config: Mapping[str, Any] | None = None) -> Path | None:
    """Atomically write one cell's rows of ``table``; returns the path, or None if no rows."""
    if not rows:
        return None
    final = part_path(sweep_dir, table, cell_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    arrow = pa.Table.from_pandas(pd.DataFrame(list(rows)), preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"helios.config"] = json.dumps(config or {}, sort_keys=True, default=str).encode()
    meta[b"helios.versions"] = json.dumps(package_versions(), sort_keys=True).encode()
    arrow = arrow.replace_schema_metadata(meta)
    tmp = final.parent / f".tmp-{final.stem}-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(arrow, tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def write_cell(sweep_dir: Path | str, cell_id: str, tables: Mapping[str, list[Mapping[str, Any]]],
               config: Mapping[str, Any] | None = None) -> list[Path]:
    """Write every table of one cell; the ``cells`` part last, since it marks the cell done."""
    order = sorted(tables, key=lambda t: t == "cells")
    written = [write_part(sweep_dir, t, cell_id, tables[t], config) for t in order]
    return [p for p in written if p is not None]


def part_files(sweep_dir: Path | str, table: str) -> list[Path]:
    """Visible part files of ``table``, sorted by name."""
    folder = Path(sweep_dir) / table
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet"))


def done_cell_ids(sweep_dir: Path | str) -> set[str]:
    """Ids of cells that already have a ``cells`` part (finished cells)."""
    return {p.stem.removeprefix("part-") for p in part_files(sweep_dir, "cells")}


def load(sweep_dir: Path | str, table: str = "cells") -> pd.DataFrame:
    """All rows of ``table`` in a sweep folder as one DataFrame (empty if there are none).

    Parameters
    ----------
    sweep_dir : path
        ``<output_dir>/<sweep>``.
    table : str
        One of :data:`TABLES`.
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r}: one of {', '.join(TABLES)}")
    frames = [pq.read_table(p).to_pandas() for p in part_files(sweep_dir, table)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def read_config(part: Path | str) -> dict[str, Any]:
    """The composed config stored in a part file's metadata."""
    meta = pq.read_schema(part).metadata or {}
    return json.loads(meta.get(b"helios.config", b"{}"))

