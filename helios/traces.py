"""Expert-load traces as deployments record them: SGLang's recorder and vLLM's routed experts.

:func:`load_trace` reads, by file suffix:

* ``.csv`` / ``.parquet``: rows ``window, layer, expert, load`` (Helios's own format);
* ``.npz``: **SGLang's expert distribution recorder** (``--expert-distribution-recorder-mode``,
  ``python/sglang/srt/eplb/expert_distribution.py``). SGLang writes ``torch.save``
  pickles (``expert_distribution_recorder_<time>.pt``), which Helios does not unpickle
  (no pickle of files on disk); the same arrays saved with ``numpy.savez`` are read:

  - ``stat`` mode: key ``logical_count``, int, shape ``(steps, num_layers, num_logical_experts)``
    (the dump's ``logical_count``: per recorded forward pass, the tokens routed to each
    logical expert, summed over ranks);
  - ``per_pass`` mode: keys ``global_physical_count``, shape ``(records, num_layers,
    num_physical_experts)`` (the ``records``' counts stacked), ``last_physical_to_logical_map``,
    shape ``(num_layers, num_physical_experts)``, and optionally ``forward_pass_id``,
    shape ``(records,)``: records of one pass (one per rank) are summed, passes in id order.

  ``num_layers`` is the model's hidden layers (SGLang's ``ExpertLocationMetadata``
  counts dense layers too, with zero counts); layers without a single count (the
  dense ones) are dropped, so the rest must be the model's MoE layers. One recorded pass is one trace window. Convert a dump where
  torch is installed::

      d = torch.load(path, weights_only=True)
      np.savez(out, logical_count=d["logical_count"].numpy())                  # stat
      np.savez(out, global_physical_count=np.stack([r["global_physical_count"].numpy()
               for r in d["records"]]), forward_pass_id=[r["forward_pass_id"] for r in
               d["records"]], last_physical_to_logical_map=d["last_physical_to_logical_map"].numpy())

* ``.npy``: **vLLM's routed experts** (``--enable-return-routed-experts``: per request an
  int array ``[tokens, moe_layers, top_k]`` of expert ids), one request or several
  concatenated in time order; every ``trace_tokens_per_window`` tokens make a window.

Every reader checks integers >= 0 and the ids before building a dense array.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from helios.errors import ConfigError

#: Repository root: relative trace paths not found from the working directory are
#: looked up here, so ``conf/traces/example_trace.csv`` works from any directory.
REPO_ROOT = Path(__file__).resolve().parent.parent

TRACE_COLUMNS = ("window", "layer", "expert", "load")
#: Largest ids and dense size a trace may have (checked before the dense array exists).
KEY = "scenario.trace_path"
#: Largest expert id accepted before a dense array is built (no model has more experts).
MAX_EXPERTS = 1 << 16
MAX_TRACE_IDS = {"window": 1 << 24, "layer": 1024, "expert": MAX_EXPERTS}
MAX_TRACE_CELLS = 1 << 28


def _counts(array: np.ndarray, path: str, what: str) -> np.ndarray:
    """``array`` as int64, if it holds only integers >= 0."""
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer)
                                     or np.issubdtype(array.dtype, np.floating)):
        raise ConfigError(KEY, path, f"a trace whose {what} holds integers >= 0")
    values = np.asarray(array)
    if np.issubdtype(values.dtype, np.floating):
        if not (np.isfinite(values).all() and (values == np.floor(values)).all()):
            raise ConfigError(KEY, path, f"a trace whose {what} holds integers >= 0")
    if values.size and values.min() < 0:
        raise ConfigError(KEY, path, f"a trace whose {what} holds integers >= 0 (it has "
                          f"{values.min()})")
    return values.astype(np.int64)


def _load_npy(path: str, resolved: str, keys: bool) -> dict[str, np.ndarray] | np.ndarray:
    try:
        data = np.load(resolved, allow_pickle=False)
        return {k: data[k] for k in data.files} if keys else data
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(KEY, path, f"a readable NumPy trace ({first})") from None


def read_sglang(path: str, resolved: str) -> np.ndarray:
    """SGLang recorder arrays (module doc) as loads, shape (passes, num_layers, experts)."""
    data = _load_npy(path, resolved, keys=True)
    if "logical_count" in data:
        loads = _counts(data["logical_count"], path, "logical_count")
        if loads.ndim != 3:
            raise ConfigError(KEY, path, "an SGLang stat dump whose logical_count is "
                              f"(steps, layers, experts); it has shape {loads.shape}")
        return _moe_rows(loads)
    if "global_physical_count" not in data or "last_physical_to_logical_map" not in data:
        raise ConfigError(KEY, path, "an SGLang recorder dump with logical_count (stat) or "
                          "global_physical_count and last_physical_to_logical_map (per_pass)")
    physical = _counts(data["global_physical_count"], path, "global_physical_count")
    mapping = _counts(data["last_physical_to_logical_map"], path, "last_physical_to_logical_map")
    if physical.ndim != 3 or mapping.shape != physical.shape[1:]:
        raise ConfigError(KEY, path, "a per_pass dump with global_physical_count (records, layers, "
                          "slots) and last_physical_to_logical_map (layers, slots); shapes "
                          f"{physical.shape} and {mapping.shape}")
    if mapping.size and mapping.max() >= MAX_EXPERTS:
        raise ConfigError(KEY, path, f"logical expert ids < {MAX_EXPERTS}; it has {mapping.max()}")
    experts = int(mapping.max()) + 1 if mapping.size else 0
    layers = physical.shape[1]
    logical = np.zeros((physical.shape[0], layers, experts), dtype=np.int64)
    for layer in range(layers):
        np.add.at(logical[:, layer], (slice(None), mapping[layer]), physical[:, layer])
    if "forward_pass_id" in data:
        ids = _counts(data["forward_pass_id"], path, "forward_pass_id")
        if ids.shape != (physical.shape[0],):
            raise ConfigError(KEY, path, "a forward_pass_id per record")
        passes, index = np.unique(ids, return_inverse=True)
        summed = np.zeros((passes.size, layers, experts), dtype=np.int64)
        np.add.at(summed, index, logical)
        logical = summed
    return _moe_rows(logical)


def _moe_rows(loads: np.ndarray) -> np.ndarray:
    """Drop the layers without a single count: SGLang's rows of the dense layers."""
    return loads[:, loads.sum(axis=(0, 2)) > 0]


def read_vllm(path: str, resolved: str, tokens_per_window: int) -> np.ndarray:
    """vLLM routed experts ``[tokens, moe_layers, top_k]`` as loads (windows, layers, experts)."""
    ids = _counts(_load_npy(path, resolved, keys=False), path, "routed expert ids")
    if ids.ndim != 3 or ids.shape[0] == 0:
        raise ConfigError(KEY, path, "vLLM routed experts of shape [tokens, moe_layers, top_k]; "
                          f"it has shape {ids.shape}")
    if ids.max() >= MAX_EXPERTS:
        raise ConfigError(KEY, path, f"expert ids < {MAX_EXPERTS}; it has {ids.max()}")
    tokens, layers, _ = ids.shape
    experts = int(ids.max()) + 1
    windows = -(-tokens // tokens_per_window)
    window = np.arange(tokens) // tokens_per_window
    flat = (window[:, None, None] * layers + np.arange(layers)[None, :, None]) * experts + ids
    loads = np.bincount(flat.ravel(), minlength=windows * layers * experts)
    return loads.reshape(windows, layers, experts)


def trace_format(path: str | Path) -> str:
    """``table`` (CSV/Parquet), ``sglang`` (.npz) or ``vllm`` (.npy), by suffix."""
    suffix = Path(path).suffix.lower()
    return {".csv": "table", ".parquet": "table", ".pq": "table", ".npz": "sglang",
            ".npy": "vllm"}.get(suffix, "unknown")


# --------------------------------------------------------------------------- trace files
def vllm_top_k(path: str) -> int:
    """Experts per token of a vLLM routed-experts array (its last dimension)."""
    return int(np.load(resolve_trace_path(path), mmap_mode="r", allow_pickle=False).shape[-1])


def resolve_trace_path(path: str) -> Path:
    """The file a ``trace_path`` names: absolute, else from the working directory, else
    from the repository root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def load_trace(path: str, tokens_per_window: int = 4096) -> np.ndarray:
    """Read a trace file into a dense array of shape (windows, layers, experts).

    ``.npz`` (SGLang's recorder) and ``.npy`` (vLLM's routed experts, windows of
    ``tokens_per_window`` tokens) are read by :func:`read_sglang` and :func:`read_vllm`. Otherwise the file
    is CSV (``.csv``) or Parquet (``.parquet``, ``.pq``) with integer columns
    ``window``, ``layer``, ``expert`` (all >= 0) and a finite, non-negative ``load``;
    other columns are ignored. Windows must be numbered ``0..W-1`` without gaps;
    missing (window, layer, expert) rows mean zero load; a repeated triple is an error.
    The dims are ``max id + 1`` of each column. Results are cached per file content
    (path, size and modification time) and returned read-only.

    Raises
    ------
    ConfigError
        Naming ``scenario.trace_path`` and what is wrong with the file.
    """
    resolved = resolve_trace_path(path)
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise ConfigError(KEY, path, f"an existing trace file ({exc.strerror or exc})") from None
    if not resolved.is_file():
        raise ConfigError(KEY, path, "a regular file")
    return _load_trace_cached(str(resolved), path, stat.st_size, stat.st_mtime_ns,
                              tokens_per_window)


@functools.lru_cache(maxsize=8)
def _load_trace_cached(resolved: str, path: str, size: int, mtime_ns: int,
                       tokens_per_window: int) -> np.ndarray:
    import pandas as pd

    suffix = Path(resolved).suffix.lower()
    fmt = trace_format(resolved)
    if fmt in ("sglang", "vllm"):
        loads = (read_sglang(path, resolved) if fmt == "sglang"
                 else read_vllm(path, resolved, tokens_per_window))
        if loads.size == 0 or loads.shape[1] == 0:
            raise ConfigError(KEY, path, "a trace with at least one window and layer of counts")
        loads = loads.astype(float)
        loads.setflags(write=False)
        return loads
    if suffix == ".pt":
        raise ConfigError(KEY, path, "a NumPy copy of SGLang's torch.save dump (.npz, see "
                          "helios.traces: Helios does not unpickle files)")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(resolved)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(resolved)
        else:
            raise ConfigError(KEY, path, "a file ending in .csv, .parquet, .pq, .npz (SGLang) "
                              "or .npy (vLLM)")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(KEY, path, f"a readable CSV or Parquet trace ({first})") from None
    missing = [c for c in TRACE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(KEY, path, "a trace with columns " + ", ".join(TRACE_COLUMNS)
                          + "; missing " + ", ".join(missing))
    if frame.empty:
        raise ConfigError(KEY, path, "a trace with at least one row")
    ids = {}
    for col in TRACE_COLUMNS[:3]:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        if not (np.isfinite(values).all() and (values == np.floor(values)).all() and (values >= 0).all()):
            raise ConfigError(KEY, path, f"a trace whose '{col}' column holds integers >= 0")
        ids[col] = values.astype(np.int64)
    load = pd.to_numeric(frame["load"], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(load).all() and (load >= 0).all()):
        raise ConfigError(KEY, path, "a trace whose 'load' column holds finite numbers >= 0")
    shape = tuple(int(ids[c].max()) + 1 for c in TRACE_COLUMNS[:3])
    for col, size in zip(TRACE_COLUMNS[:3], shape):  # before a dense array is built
        if size > MAX_TRACE_IDS[col]:
            raise ConfigError(KEY, path, f"a trace whose '{col}' ids are below {MAX_TRACE_IDS[col]}; "
                              f"it has {size - 1}")
    if math.prod(shape) > MAX_TRACE_CELLS:
        raise ConfigError(KEY, path, f"a trace of at most {MAX_TRACE_CELLS:.3g} (window, layer, "
                          f"expert) cells; it spans {math.prod(shape):.3g}")
    present = np.unique(ids["window"])
    if len(present) != shape[0]:
        gap = int(np.setdiff1d(np.arange(shape[0]), present)[0])
        raise ConfigError(KEY, path, f"a trace with windows numbered 0..{shape[0] - 1}; window {gap} is missing")
    flat = np.ravel_multi_index((ids["window"], ids["layer"], ids["expert"]), shape)
    if len(np.unique(flat)) != len(flat):
        raise ConfigError(KEY, path, "a trace with one row per (window, layer, expert); some repeat")
    dense = np.zeros(int(np.prod(shape)))
    dense[flat] = load
    dense = dense.reshape(shape)
    dense.setflags(write=False)
    return dense
