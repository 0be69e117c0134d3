"""Statistics of a sweep across seeds, as DataFrames: :func:`analyse`.

Method (also written into every report):

* **Unit of replication** is the seed. A group is one combination of the group-by keys
  (default ``topology x model x scenario``, plus any ``cfg.*`` column the sweep varies
  beyond them, e.g. ``cfg.scenario.rate``); inside a group each (strategy, seed) must be
  exactly one cell, else the group-by keys given are too coarse and :class:`ConfigError`
  says which ``cfg.*`` columns still vary.
* **Mean and 95% CI** per (group, strategy, metric) over seeds. Default: Student t,
  ``mean +/- t_{0.975, n-1} * s / sqrt(n)`` (``scipy.stats.t.interval``). Option
  ``ci="bootstrap"``: percentile bootstrap of the mean (``scipy.stats.bootstrap``, 9,999
  resamples, generator seeded from ``seed`` and the row's key with ``zlib.crc32``).
  One seed: no CI, and a note says so.
* **Change vs the baseline strategy**, paired by seed: ``d_i = x_i - b_i`` on the seeds
  both strategies ran; change = ``100 * mean(d) / mean(b)`` (%). Its CI (t method) is the
  Student t interval of ``mean(d)`` scaled by the same factor; the baseline mean is treated
  as fixed, so its own uncertainty is not propagated. With ``ci="bootstrap"`` the seeds are
  resampled in pairs and the ratio is recomputed, which does include it.
* **Test** against the baseline across seeds, two-sided: paired t-test
  (``scipy.stats.ttest_rel``, default; with the t CI it agrees exactly: the change CI
  excludes 0 iff p < 0.05 before correction) or Wilcoxon signed-rank
  (``scipy.stats.wilcoxon``, exact for small n; zero differences dropped). Wilcoxon with
  n < 6 non-zero pairs cannot reach p < 0.05 (smallest two-sided p is ``2 / 2**n``), and a
  note says so.
* **Multiple comparisons**: Holm's step-down procedure (Holm 1979, "A simple sequentially
  rejective multiple test procedure", Scand. J. Statist. 6:65-70), applied per metric over
  every (group, strategy) comparison that has a p-value. ``significant`` means Holm-adjusted
  p < ``alpha``; the rest are marked not significant.
* **Infinite values** (P99 of an overloaded cell with unfinished requests) are kept, never
  turned into NaN: the mean is ``inf``, no CI is given, and the t-test is not computed (it
  is undefined); Wilcoxon ranks a one-sided infinite difference as the largest. NaN values
  (a metric a cell could not measure) are left out and counted.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helios.errors import ConfigError
from helios.stats import describe, holm, paired_change, paired_test, seeded_rng

#: Default metrics, in report order; those a sweep has no value of (e.g. the serving=ep
#: figures of a serving=request sweep) are left out.
DEFAULT_METRICS = ("tpot_p99_ms", "ttft_p99_ms", "p99_ms", "p50_ms", "goodput_tok_s",
                   "output_tok_s", "step_ms_mean", "balancedness", "max_link_util",
                   "gpu_load_imbalance", "replication_bytes")
DEFAULT_GROUP_BY = ("topology", "model", "scenario")
DEFAULT_BASELINE = "round_robin"
CI_METHODS = ("t", "bootstrap")
TESTS = ("t", "wilcoxon")
#: Metrics where a larger value is better; every other metric is better when smaller.
HIGHER_IS_BETTER = frozenset({"goodput_tok_s", "throughput_tok_s", "slo_attainment", "input_tok_s",
                              "output_tok_s", "input_tok_s_per_gpu", "output_tok_s_per_gpu",
                              "goodput_req_s", "balancedness"})
#: Columns that are not metrics even when numeric.
_NOT_METRICS = frozenset({"seed", "events", "sim_s", "placement_s", "ilp_gap"})


@dataclass(frozen=True)
class Settings:
    """How a sweep is analysed (validated by :func:`settings_for`)."""

    baseline: str
    metrics: tuple[str, ...] = DEFAULT_METRICS
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    ci: str = "t"
    test: str = "t"
    confidence: float = 0.95
    alpha: float = 0.05
    seed: int = 0
    skipped_metrics: tuple[str, ...] = ()


@dataclass
class Analysis:
    """Tables of one sweep: per-strategy ``summary`` and paired ``comparison`` vs the baseline."""

    settings: Settings
    summary: pd.DataFrame
    comparison: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    regret: pd.DataFrame | None = None
    """Paired change of every strategy against a bound (``regret_of``), or None."""
    regret_of: str | None = None


# ----------------------------------------------------------------------------- loading

def load_cells(sweep_dir: Path | str) -> pd.DataFrame:
    """The ``cells`` table of a sweep folder, one row per cell id.

    Raises
    ------
    ConfigError
        If the folder is missing or empty, has no ``cells`` table, or a part is unreadable.
    """
    from helios.results import load

    path = Path(sweep_dir)
    if not path.is_dir():
        raise ConfigError("sweep_dir", str(path), "an existing results folder <output_dir>/<sweep>")
    if not any(path.iterdir()):
        raise ConfigError("sweep_dir", str(path), "a results folder with a cells table (this one is empty)")
    try:
        cells = load(path, "cells")
    except Exception as exc:  # pyarrow raises several types for a damaged part
        raise ConfigError("sweep_dir", str(path), f"readable Parquet parts ({type(exc).__name__}: {exc})") from exc
    if cells.empty:
        raise ConfigError("sweep_dir", str(path), "a results folder with cells/part-*.parquet (no cells table)")
    missing = [c for c in ("strategy", "seed") if c not in cells.columns]
    if missing:
        raise ConfigError("sweep_dir", str(path), f"a cells table with columns strategy and seed (missing {missing})")
    if "cell_id" in cells.columns:
        cells = cells.drop_duplicates("cell_id", keep="last").reset_index(drop=True)
    return cells


# ----------------------------------------------------------------------------- settings

def key_text(value: object) -> str:
    """A group key's value as text: ``2500`` rather than ``2500.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def metric_columns(cells: pd.DataFrame) -> list[str]:
    """Numeric columns of ``cells`` that can be analysed as metrics."""
    return [c for c in cells.columns
            if not c.startswith("cfg.") and c not in _NOT_METRICS and pd.api.types.is_numeric_dtype(cells[c])
            and not pd.api.types.is_bool_dtype(cells[c])]


def choose_baseline(strategies: Sequence[str], requested: str | None = None) -> str:
    """``requested`` if present, else ``round_robin`` if present, else the first alphabetically."""
    names = sorted(set(strategies))
    if requested is not None:
        if requested not in names:
            raise ConfigError("baseline", requested, "one of the sweep's strategies: " + ", ".join(names))
        return requested
    return DEFAULT_BASELINE if DEFAULT_BASELINE in names else names[0]


def settings_for(cells: pd.DataFrame, baseline: str | None = None, metrics: Sequence[str] | None = None,
                 group_by: Sequence[str] | None = None, ci: str = "t", test: str = "t",
                 confidence: float = 0.95, alpha: float = 0.05, seed: int = 0) -> Settings:
    """Validate the options against the ``cells`` table; raises :class:`ConfigError`."""
    allowed = metric_columns(cells)
    skipped: tuple[str, ...] = ()
    if metrics is None:
        chosen = tuple(m for m in DEFAULT_METRICS if m in allowed and cells[m].notna().any())
        skipped = tuple(m for m in DEFAULT_METRICS if m not in allowed)
        if not chosen:
            raise ConfigError("metrics", ",".join(DEFAULT_METRICS), "columns of the cells table; none present")
    else:
        chosen = tuple(dict.fromkeys(metrics))
        for m in chosen:
            if m not in allowed:
                raise ConfigError("metrics", m, "numeric columns of the cells table: " + ", ".join(allowed))
        if not chosen:
            raise ConfigError("metrics", "", "at least one metric")
    keys = tuple(dict.fromkeys(DEFAULT_GROUP_BY if group_by is None else group_by))
    for key in keys:
        if key in ("strategy", "seed") or key not in cells.columns:
            options = [c for c in ("topology", "model", "scenario") if c in cells.columns]
            raise ConfigError("group-by", key, "columns of the cells table other than strategy and seed: "
                              + ", ".join(options) + ", or cfg.<dotted.key>")
    if ci not in CI_METHODS:
        raise ConfigError("ci", ci, "one of " + ", ".join(CI_METHODS))
    if test not in TESTS:
        raise ConfigError("test", test, "one of " + ", ".join(TESTS))
    if not 0 < confidence < 1:
        raise ConfigError("confidence", confidence, "a number in (0, 1)")
    if not 0 < alpha < 1:
        raise ConfigError("alpha", alpha, "a number in (0, 1)")
    base = choose_baseline(cells["strategy"].astype(str).tolist(), baseline)
    if group_by is None:  # the default groups also split by the config keys the sweep varies
        keys = _with_varying_keys(cells, keys)
    _check_one_cell_per_seed(cells, keys)
    return Settings(baseline=base, metrics=chosen, group_by=keys, ci=ci, test=test, confidence=confidence,
                    alpha=alpha, seed=seed, skipped_metrics=skipped)


def _varying_columns(cells: pd.DataFrame, keys: tuple[str, ...]) -> list[str]:
    """``cfg.*`` columns (other than the strategy's) that differ among cells sharing
    (``keys``, strategy, seed): the config the sweep varies beyond ``keys``."""
    cols = [*keys, "strategy", "seed"]
    dup = cells.duplicated(cols, keep=False)
    if not dup.any():
        return []
    clash = cells[dup]
    return [c for c in cells.columns if c.startswith("cfg.") and not c.startswith("cfg.strategy.")
            and c not in ("cfg.seed", "cfg.sweep", "cfg.output_dir")
            and clash.groupby(cols, dropna=False)[c].nunique(dropna=False).max() > 1]


def _with_varying_keys(cells: pd.DataFrame, keys: tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` plus, one at a time, the varying config columns until each (group,
    strategy, seed) holds one cell, e.g. ``cfg.scenario.rate`` for a sweep over loads."""
    for column in _varying_columns(cells, keys):
        if not cells.duplicated([*keys, "strategy", "seed"]).any():
            break
        keys = (*keys, column)
    return keys


def _check_one_cell_per_seed(cells: pd.DataFrame, keys: tuple[str, ...]) -> None:
    """Seeds are the replicates: averaging cells that differ in config would mix conditions."""
    if not cells.duplicated([*keys, "strategy", "seed"]).any():
        return
    varying = _varying_columns(cells, keys)
    raise ConfigError("group-by", ",".join(keys) or "(none)",
                      "keys that leave one cell per (group, strategy, seed); add the varying "
                      "columns: " + (", ".join(varying[:8]) or "(none found: duplicate cells)"))


# ----------------------------------------------------------------------------- statistics

def _groups(cells: pd.DataFrame, keys: tuple[str, ...]):
    """(key-dict, sub-frame) per group, in sorted order; a single group when there are no keys."""
    if not keys:
        yield {}, cells
        return
    for values, sub in cells.groupby(list(keys), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(keys, values)), sub


def _by_seed(sub: pd.DataFrame, strategy: str, metric: str) -> pd.Series:
    rows = sub[sub["strategy"] == strategy]
    return pd.Series(rows[metric].to_numpy(dtype=float), index=rows["seed"].to_numpy()).sort_index()


def summarize(cells: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per (group, strategy, metric): n, n_inf, mean, sd, ci_low, ci_high, ci_method, note."""
    rows = []
    for key, sub in _groups(cells, settings.group_by):
        for strategy in sorted(sub["strategy"].astype(str).unique()):
            for metric in settings.metrics:
                values = _by_seed(sub, strategy, metric)
                rng = seeded_rng(settings.seed, *key.values(), strategy, metric)
                stat = describe(values.to_numpy(), settings.confidence, settings.ci, rng)
                rows.append({**key, "strategy": strategy, "metric": metric, **stat,
                             "ci_method": settings.ci if np.isfinite(stat["ci_low"]) else ""})
    return pd.DataFrame(rows)


def compare(cells: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per (group, non-baseline strategy, metric): paired change, test, Holm, verdict."""
    rows = []
    for key, sub in _groups(cells, settings.group_by):
        strategies = sorted(sub["strategy"].astype(str).unique())
        for strategy in strategies:
            if strategy == settings.baseline:
                continue
            for metric in settings.metrics:
                row = {**key, "strategy": strategy, "baseline": settings.baseline, "metric": metric}
                rows.append(row | _compare_one(sub, strategy, metric, key, settings))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    for metric in settings.metrics:
        mask = table["metric"] == metric
        table.loc[mask, "p_holm"] = holm(table.loc[mask, "p_value"].to_numpy(dtype=float))
    tested = table["p_holm"].notna()
    table["significant"] = pd.array([bool(p < settings.alpha) if t else pd.NA
                                     for p, t in zip(table["p_holm"], tested)], dtype="boolean")
    table["verdict"] = [_verdict(r.metric, r.mean_diff, r.significant) for r in table.itertuples()]
    return table


def _compare_one(sub: pd.DataFrame, strategy: str, metric: str, key: dict, settings: Settings) -> dict:
    nan = float("nan")
    empty = {"n_pairs": 0, "mean_diff": nan, "change_pct": nan, "change_ci_low": nan, "change_ci_high": nan,
             "test": settings.test, "statistic": nan, "p_value": nan}
    base = _by_seed(sub, settings.baseline, metric)
    if base.empty:
        return empty | {"note": f"baseline {settings.baseline} not run in this group"}
    own = _by_seed(sub, strategy, metric)
    both = own.dropna().index.intersection(base.dropna().index)
    notes = []
    if len(both) < max(len(own), len(base)):
        notes.append(f"paired on {len(both)} common seed(s) of {len(own)} and {len(base)}")
    if len(both) == 0:
        return empty | {"note": "; ".join(notes + ["no common seeds with the baseline"])}
    x, b = own[both].to_numpy(), base[both].to_numpy()
    rng = seeded_rng(settings.seed, *key.values(), strategy, metric, "change")
    change, low, high, change_notes = paired_change(x, b, settings.confidence, settings.ci, rng)
    stat, p, test_notes = paired_test(x, b, settings.test, settings.alpha)
    with np.errstate(invalid="ignore"):
        diff = float(np.mean(x) - np.mean(b))
    notes += [n for n in change_notes + test_notes if n not in notes]
    if len(both) == 1:
        notes = [n for n in notes if n not in ("one paired seed: no CI", "one paired seed: no test")]
        notes.append("one paired seed: no CI, no test")
    return {"n_pairs": len(both), "mean_diff": diff, "change_pct": change, "change_ci_low": low,
            "change_ci_high": high, "test": settings.test, "statistic": stat, "p_value": p,
            "note": "; ".join(notes)}


def _verdict(metric: str, diff: float, significant: object) -> str:
    """``better`` / ``worse`` (significant after Holm), ``n.s.``, or ``untested``."""
    if significant is pd.NA or significant is None:
        return "untested"
    if not significant or not diff or np.isnan(diff):
        return "n.s."
    higher = metric in HIGHER_IS_BETTER
    return "better" if (diff > 0) == higher else "worse"


def analyse(cells: pd.DataFrame | Path | str, baseline: str | None = None, metrics: Sequence[str] | None = None,
            group_by: Sequence[str] | None = None, ci: str = "t", test: str = "t", confidence: float = 0.95,
            alpha: float = 0.05, seed: int = 0, regret: str | None = None) -> Analysis:
    """Summary and comparison tables of a sweep (a ``cells`` DataFrame or a sweep folder).

    Parameters
    ----------
    cells : DataFrame or path
        The ``cells`` table, or ``<output_dir>/<sweep>`` to load it from.
    baseline : str, optional
        Strategy to compare against; default ``round_robin`` if present, else the first name.
    metrics, group_by : sequence of str, optional
        Default :data:`DEFAULT_METRICS` and :data:`DEFAULT_GROUP_BY`.
    ci : {"t", "bootstrap"}
        Student t interval, or a percentile bootstrap (seeded with ``seed``).
    test : {"t", "wilcoxon"}
        Paired t-test or Wilcoxon signed-rank test vs the baseline, two-sided.
    confidence, alpha : float
        CI level and family-wise error rate for Holm's procedure (per metric).
    regret : str, optional
        A bound (e.g. ``oracle_static_window``): every strategy's paired change against it
        as well (its own Holm family per metric).

    Raises
    ------
    ConfigError
        For a missing or empty folder, no cells, an unknown metric, group-by key or baseline.
    """
    if not isinstance(cells, pd.DataFrame):
        cells = load_cells(cells)
    cells = cells.assign(strategy=cells["strategy"].astype(str))
    settings = settings_for(cells, baseline, metrics, group_by, ci, test, confidence, alpha, seed)
    # Only the columns the statistics read: per-row filtering of a wide table is slow.
    narrow = cells[list(dict.fromkeys([*settings.group_by, "strategy", "seed", *settings.metrics]))]
    summary = summarize(narrow, settings)
    comparison = compare(narrow, settings)
    regret_table = None
    if regret is not None:
        bound = choose_baseline(cells["strategy"].tolist(), regret)
        regret_table = compare(narrow, dataclasses.replace(settings, baseline=bound))
    return Analysis(settings=settings, summary=summary, comparison=comparison,
                    notes=_notes(summary, comparison, settings), regret=regret_table,
                    regret_of=regret)


def _notes(summary: pd.DataFrame, comparison: pd.DataFrame, settings: Settings) -> list[str]:
    """Plain-language notes the report prints once each (one-seed groups, skipped metrics...)."""
    notes = []
    keys = [*settings.group_by, "strategy"]
    ones = summary[summary["n"] == 1].drop_duplicates(keys)
    for row in ones.to_dict("records"):  # dicts: cfg.* keys are not attribute names
        label = " / ".join(f"{k.rsplit('.', 1)[-1]}={key_text(row.get(k))}" if k.startswith("cfg.")
                           else key_text(row.get(k)) for k in settings.group_by) or "all cells"
        notes.append(f"{label}, {row['strategy']}: one seed only: no confidence interval and no test")
    if (summary["n"] == 2).any():
        notes.append("groups with n=2 seeds have wide CIs that rest on two seeds (flagged per row); "
                     "run at least 3")
    if settings.skipped_metrics:
        notes.append("metrics absent from the cells table, skipped: " + ", ".join(settings.skipped_metrics))
    if settings.test == "wilcoxon" and comparison.get("note", pd.Series(dtype=str)).str.contains(
            "cannot reach").any():
        notes.append("Wilcoxon signed-rank with fewer than 6 non-zero paired differences cannot be "
                     f"significant at {settings.alpha:g} two-sided; run more seeds or use the paired "
                     "t-test (--test t)")
    if settings.test == "wilcoxon" and not comparison.empty:
        for metric, rows in comparison.groupby("metric"):
            m, n = len(rows), int(rows["n_pairs"].max())
            if n and 2.0 / 2**n >= settings.alpha / m:
                notes.append(f"{metric}: no comparison can be significant with {n} seeds and {m} "
                             f"tests (Holm needs p < {settings.alpha / m:.3g}; Wilcoxon's smallest "
                             f"two-sided p with {n} pairs is {2.0 / 2**n:.3g})")
    return notes


def joined(analysis: Analysis, metric: str) -> pd.DataFrame:
    """Summary and comparison of one metric side by side (the baseline's change columns are empty)."""
    s = analysis.summary[analysis.summary["metric"] == metric]
    c = analysis.comparison
    if c.empty:
        return s.reset_index(drop=True)
    c = c[c["metric"] == metric].drop(columns=["metric"])
    on = [*analysis.settings.group_by, "strategy"]
    c = c.rename(columns={"note": "compare_note"})
    out = s.merge(c, on=on, how="left")
    if analysis.regret is not None and not analysis.regret.empty:
        r = analysis.regret[analysis.regret["metric"] == metric]
        r = r[[*on, "change_pct", "change_ci_low", "change_ci_high", "p_holm"]].rename(columns={
            "change_pct": "regret_pct", "change_ci_low": "regret_ci_low",
            "change_ci_high": "regret_ci_high", "p_holm": "regret_p_holm"})
        out = out.merge(r, on=on, how="left")
    return out.reset_index(drop=True)
