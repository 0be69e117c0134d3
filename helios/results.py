"""The Parquet dataset of a sweep: ``<output_dir>/<sweep>/<table>/part-<cell_id>.parquet``.

Every cell writes one part file per non-empty table. A part is written under a
hidden temporary name in the same folder and then renamed (``os.replace``), so a
reader, or a crash, never sees a half-written part. Readers skip hidden files.
The file metadata carries the cell's composed config (JSON) and package versions.
"""

from __future__ import annotations

import functools
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
_PACKAGES = ("helios-moe", "numpy", "scipy", "simpy", "networkx", "highspy", "numba", "pandas", "pyarrow",
             "ray", "hydra-core")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on (looked up once per process)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _uniform(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the same keys in the same order (missing values as None)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in keys} for row in rows]


def _arrow_type(tp: Any) -> pa.DataType:
    """Arrow type of a config field's annotation (``Optional[X]`` is a nullable ``X``)."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(
        base, pa.string())


@functools.lru_cache(maxsize=1)
def config_schema() -> dict[str, pa.DataType]:
    """Every ``cfg.<dotted.key>`` column any cell can have, with its type, in a stable order:
    the union over all options of the topology, scenario and serving groups."""
    import dataclasses
    import typing

    from helios import config as c

    def walk(cls: type, prefix: str, out: dict[str, pa.DataType]) -> None:
        hints = typing.get_type_hints(cls)
        for fld in dataclasses.fields(cls):
            if prefix == "" and fld.name in c.HIDDEN_AT_DEFAULT:
                continue
            key, tp = f"{prefix}{fld.name}", hints[fld.name]
            registry = c.GROUP_REGISTRIES.get(key)
            if registry is not None:
                for option in registry.values():
                    walk(option, key + ".", out)
            elif dataclasses.is_dataclass(tp):
                walk(tp, key + ".", out)
            else:
                out.setdefault(f"cfg.{key}", _arrow_type(tp))

    out: dict[str, pa.DataType] = {}
    walk(c.CellConfig, "", out)
    return dict(sorted(out.items()))


def cells_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """The ``cells`` rows with every config column of :func:`config_schema` (typed nulls
    where a cell's options lack the key), results first in row order, then ``cfg.*``
    sorted: every part of every sweep has the same columns in the same order."""
    rows = _uniform(rows)
    schema = config_schema()
    own = [k for k in rows[0] if not k.startswith("cfg.")]
    arrays = [pa.array([row[k] for row in rows]) for k in own]
    arrays += [_typed_column([row.get(k) for row in rows], tp) for k, tp in schema.items()]
    return pa.Table.from_arrays(arrays, names=[*own, *schema])


def _typed_column(values: list[Any], tp: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of type ``tp``: typed nulls if all are None, else
    inferred and cast; JSON text where the cast refuses (e.g. a list-valued key)."""
    if all(v is None for v in values):
        return pa.nulls(len(values), tp)  # most keys of a cell's unchosen options
    column = pa.array(values)
    if column.type == tp:
        return column
    try:
        return column.cast(tp)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def part_path(sweep_dir: Path | str, table: str, cell_id: str) -> Path:
    """Where ``table``'s part file of cell ``cell_id`` lives."""
    return Path(sweep_dir) / table / f"part-{cell_id}.parquet"


def encode_part(rows: list[Mapping[str, Any]], config: Mapping[str, Any] | None = None,
                table: str = "") -> bytes:
    """Parquet bytes of ``rows``, with the composed config and package versions as metadata
    (``cells`` rows get the full, typed column set of :func:`cells_table`)."""
    arrow = cells_table(rows) if table == "cells" else pa.Table.from_pylist(_uniform(rows))
    meta = dict(arrow.schema.metadata or {})
    meta[b"helios.config"] = json.dumps(config or {}, sort_keys=True, default=str).encode()
    meta[b"helios.versions"] = json.dumps(package_versions(), sort_keys=True).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(arrow.replace_schema_metadata(meta), sink)
    return sink.getvalue().to_pybytes()


def write_atomic(final: Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file next to ``final``, then rename it over ``final``.

    The temporary name (``.tmp-<stem>-<uuid>.tmp``) is hidden, which pyarrow and pandas
    dataset reads skip, and does not end in ``.parquet``, which ``*.parquet`` globs (DuckDB
    matches hidden files) skip. A writer killed before the rename leaves it behind;
    :func:`helios.storage.remove_stale_temporaries` deletes it on the next sweep.

    The data is fsynced before the rename, so that after a power loss or kernel crash a
    part that exists is whole (the rename is atomic; without the fsync a file system may
    persist the rename before the data), and the folder after it, so that the rename
    itself is on disk before the next part (the ``cells`` part, last, marks a cell done).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.stem}-{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_folder(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(sweep_dir: Path | str, table: str, cell_id: str, rows: list[Mapping[str, Any]],
               config: Mapping[str, Any] | None = None) -> Path | None:
    """Atomically write one cell's rows of ``table``; returns the path, or None if no rows."""
    if not rows:
        return None
    return write_atomic(part_path(sweep_dir, table, cell_id), encode_part(rows, config, table))


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


def part_is_whole(path: Path | str, cell_id: str) -> bool:
    """Whether the ``cells`` part at ``path`` opens and holds exactly its cell's one row."""
    try:
        ids = pq.read_table(path, columns=["cell_id"]).column("cell_id").to_pylist()
    except Exception:  # noqa: BLE001 - truncated, not Parquet, no cell_id column: damaged
        return False
    return ids == [cell_id]


def scan_done(sweep_dir: Path | str) -> tuple[set[str], list[Path]]:
    """(ids of finished cells, damaged ``cells`` parts): a cell is finished only if its
    ``cells`` part opens and holds its own id (:func:`part_is_whole`)."""
    done, damaged = set(), []
    for path in part_files(sweep_dir, "cells"):
        cid = path.stem.removeprefix("part-")
        (done.add(cid) if part_is_whole(path, cid) else damaged.append(path))
    return done, damaged


def done_cell_ids(sweep_dir: Path | str) -> set[str]:
    """Ids of cells whose ``cells`` part is whole (finished cells)."""
    return scan_done(sweep_dir)[0]


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

