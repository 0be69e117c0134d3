"""Figures of a sweep report (matplotlib, Agg backend, PNG written atomically).

Every figure has one panel per group (the report's group-by keys), a title that says
what is shown and how it was aggregated, and the same colour per strategy in every
figure, so it can be read without the report text.

* :func:`p99_bars` - mean P99 per strategy with its CI as error bars; an infinite mean
  (overloaded seeds) is drawn as a hatched bar to the top of the panel, labelled ``inf``.
* :func:`latency_cdf` - empirical CDF of request latency per strategy, pooled over seeds
  (requests that arrived after warm-up and before the end of arrivals). The denominator
  is every measured request, so unfinished requests keep the curve below 1. Without a
  ``requests`` table: the per-cell P50/P90/P99, median over seeds.
* :func:`timeseries` - windowed P99 and max link utilisation over time for one seed per
  strategy (the smallest seed every strategy ran), warm-up shaded, adaptation events
  drawn as markers on their own row.
* :func:`link_util_distribution` - box plot per strategy of the per-window max link
  utilisation after warm-up (all seeds), or of the per-cell value without a timeseries.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, deterministic output; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from helios.analysis import key_text  # noqa: E402

_ACTION_MARKERS = {"replicate": "^", "evict": "v", "migrate": "s", "route": "o"}


def save_png(fig: plt.Figure, path: Path | str, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG under a temporary name, then rename it into place; closes it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.stem}-{uuid.uuid4().hex}.png"
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, final)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return final


def colours(strategies: list[str]) -> dict[str, tuple]:
    """One colour per strategy name, the same in every figure and every report: the
    registered strategies have fixed places in the tab20 cycle, other names a place
    from a stable hash of the name."""
    import zlib

    from helios.placement import STRATEGIES

    cmap = plt.get_cmap("tab20")
    known = list(STRATEGIES)
    place = {s: (known.index(s) if s in known else zlib.crc32(s.encode())) % 20 for s in strategies}
    return {s: cmap(i) for s, i in place.items()}


def group_label(key: dict) -> str:
    """``fat_tree / tiny / stationary`` for a group's key values; ``rate=2500`` for a ``cfg.*`` key."""
    return " / ".join(f"{k.rsplit('.', 1)[-1]}={key_text(v)}" if k.startswith("cfg.") else key_text(v)
                      for k, v in key.items()) or "all cells"


def slug(text: str) -> str:
    """File-name-safe form of a group label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "all"


def _grid(n: int, width: float = 4.6, height: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _groups(frame: pd.DataFrame, keys: tuple[str, ...]):
    if not keys:
        yield {}, frame
        return
    for values, sub in frame.groupby(list(keys), dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        yield dict(zip(keys, values)), sub


#: A panel of :func:`p99_bars` uses a log axis when its largest mean exceeds its smallest by this.
LOG_SCALE_RATIO = 10.0


def p99_bars(summary: pd.DataFrame, group_by: tuple[str, ...], path: Path | str, metric: str = "p99_ms",
             ci_label: str = "95% CI, Student t") -> Path:
    """Bar per strategy of the mean ``metric`` with CI error bars, one panel per group."""
    data = summary[summary["metric"] == metric]
    groups = list(_groups(data, group_by))
    colour = colours(data["strategy"].unique().tolist())
    fig, axes = _grid(len(groups))
    for ax, (key, sub) in zip(axes, groups):
        sub = sub.sort_values("strategy")
        names = sub["strategy"].tolist()
        means = sub["mean"].to_numpy(dtype=float)
        finite = np.isfinite(means)
        tops = np.where(np.isfinite(sub["ci_high"]), sub["ci_high"], means)[finite]
        ceiling = 1.15 * float(np.nanmax(tops)) if finite.any() and np.nanmax(tops) > 0 else 1.0
        positive = means[finite & (means > 0)]
        # A strategy 10x off the others would flatten their bars and error bars to nothing.
        log = positive.size >= 2 and positive.max() > LOG_SCALE_RATIO * positive.min()
        floor = 0.5 * float(positive.min()) if log else 0.0
        if log:
            ceiling *= 2.0  # room for the labels above the bars on a log axis
        x = np.arange(len(names))
        for i, row in enumerate(sub.itertuples(index=False)):
            c = colour[row.strategy]
            if np.isposinf(row.mean):
                ax.bar(i, ceiling - floor, bottom=floor, color="white", edgecolor=c, hatch="//")
                middle = np.sqrt(floor * ceiling) if log else ceiling * 0.5
                ax.text(i, middle, "inf\n(overloaded)", ha="center", va="center", fontsize=8)
                continue
            if np.isnan(row.mean):
                ax.text(i, floor, "no data", ha="center", va="bottom", fontsize=8)
                continue
            err = None
            if np.isfinite(row.ci_low):
                err = [[row.mean - max(row.ci_low, floor)], [row.ci_high - row.mean]]
            ax.bar(i, row.mean - floor, bottom=floor, color=c, yerr=err, capsize=4, ecolor="black")
            label = f"n={row.n}" if err is not None else f"n={row.n}\nno CI"
            top = row.ci_high if err is not None else row.mean
            ax.text(i, top * 1.08 if log else top + 0.01 * ceiling, label, ha="center",
                    va="bottom", fontsize=7)
        ax.set_xticks(x, names, rotation=30, ha="right")
        if log:
            ax.set_yscale("log")
        ax.set_ylim(floor, ceiling)
        unit = "P99 latency (ms)" if metric == "p99_ms" else metric
        ax.set_ylabel(f"{unit}, log scale" if log else unit)
        ax.set_title(group_label(key), fontsize=9)
    name = "P99 latency" if metric == "p99_ms" else metric
    fig.suptitle(f"{name}: mean over seeds, error bars {ci_label}")
    fig.tight_layout()
    return save_png(fig, path)


def _in_measured_interval(rows: pd.DataFrame, cells: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """Rows whose ``time_column`` lies in their cell's measured interval [warm-up, duration)."""
    cols = [c for c in ("cell_id", "cfg.sim.warmup_s", "cfg.sim.duration_s") if c in cells.columns]
    merged = rows.merge(cells[cols], on="cell_id", how="inner")
    if "cfg.sim.warmup_s" in merged:
        merged = merged[merged[time_column] >= merged["cfg.sim.warmup_s"]]
    if "cfg.sim.duration_s" in merged:
        merged = merged[merged[time_column] < merged["cfg.sim.duration_s"]]
    return merged


def latency_cdf(cells: pd.DataFrame, requests: pd.DataFrame | None, group_by: tuple[str, ...],
                path: Path | str) -> Path:
    """Latency CDF per strategy (requests table), or per-cell percentile points without it."""
    colour = colours(cells["strategy"].unique().tolist())
    use_requests = requests is not None and not requests.empty and "latency_ms" in requests.columns
    if use_requests:
        requests = _in_measured_interval(requests, cells, "arrival_s")
    groups = list(_groups(cells, group_by))
    fig, axes = _grid(len(groups))
    for ax, (key, sub) in zip(axes, groups):
        # A group without request rows shows its per-cell percentiles, never an empty panel.
        group_requests = use_requests and requests["cell_id"].isin(sub["cell_id"]).any()
        for strategy, own in sub.groupby("strategy", sort=True):
            c = colour[strategy]
            if group_requests:
                lat = np.sort(requests.loc[requests["cell_id"].isin(own["cell_id"]), "latency_ms"].to_numpy(float))
                measured = int(own["requests_measured"].sum()) if "requests_measured" in own else len(lat)
                measured = max(measured, len(lat))
                if measured == 0:
                    continue
                share = 100.0 * (1 - len(lat) / measured)
                label = strategy + (f" ({share:.1f}% unfinished)" if share > 0 else "")
                ax.step(lat, np.arange(1, len(lat) + 1) / measured, where="post", color=c, label=label)
            else:
                cols = [q for q in ("p50_ms", "p90_ms", "p99_ms") if q in own]
                # Median over seeds: one overloaded seed (inf) does not hide the others.
                xs = [float(np.median(own[q].to_numpy(float))) for q in cols]
                ys = [float(q[1:3]) / 100 for q in cols]
                keep = [i for i, v in enumerate(xs) if np.isfinite(v)]
                lost = [cols[i].removesuffix("_ms").upper() for i in range(len(cols)) if i not in keep]
                label = strategy + (f" ({', '.join(lost)} inf: overloaded)" if lost else "")
                ax.plot([xs[i] for i in keep], [ys[i] for i in keep], "o-", color=c, label=label)
        xs = np.concatenate([np.asarray(line.get_xdata(), float) for line in ax.get_lines()] or [np.empty(0)])
        xs = xs[np.isfinite(xs) & (xs > 0)]
        log = xs.size and xs.max() / xs.min() > 20  # a log axis only where latencies span decades
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("request latency (ms, log scale)" if log else "request latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(group_label(key), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    source = ("all measured requests, pooled over seeds" if use_requests
              else "median over seeds of per-cell P50/P90/P99 (no requests table recorded)")
    fig.suptitle(f"Latency CDF per strategy: {source}")
    fig.tight_layout()
    return save_png(fig, path)


def representative_seed(sub: pd.DataFrame) -> int:
    """Smallest seed that every strategy of a group ran (else the smallest seed)."""
    common = set.intersection(*(set(g["seed"]) for _, g in sub.groupby("strategy")))
    return int(min(common) if common else sub["seed"].min())


def timeseries(cells: pd.DataFrame, ts: pd.DataFrame, events: pd.DataFrame | None, key: dict,
               path: Path | str) -> Path:
    """Windowed P99, max link utilisation and adaptation events of one group, one seed per strategy."""
    seed = representative_seed(cells)
    # One cell per strategy: with coarse group keys several configs can share a seed.
    chosen = cells[cells["seed"] == seed].sort_values("cell_id").drop_duplicates("strategy")
    several = (cells["seed"] == seed).sum() > len(chosen)
    colour = colours(cells["strategy"].unique().tolist())
    strategies = sorted(chosen["strategy"].unique())
    fig, (ax_p99, ax_util, ax_ev) = plt.subplots(3, 1, figsize=(8, 7), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 3, 1.4]})
    for strategy in strategies:
        ids = chosen.loc[chosen["strategy"] == strategy, "cell_id"]
        rows = ts[ts["cell_id"].isin(ids)].sort_values("window_start_s")
        if rows.empty:
            continue
        # Steps: each value holds for its whole window, so the last one is repeated at its end.
        start = rows["window_start_s"].to_numpy(float)
        width = float(np.median(np.diff(start))) if len(start) > 1 else 1.0
        edges = np.append(start, start[-1] + width)
        p99 = rows["p99_ms"].to_numpy(float)
        util = 100 * rows["max_link_util"].to_numpy(float)
        ax_p99.plot(edges, np.append(p99, p99[-1]), drawstyle="steps-post", color=colour[strategy], label=strategy)
        ax_util.plot(edges, np.append(util, util[-1]), drawstyle="steps-post", color=colour[strategy])
    warm = chosen["cfg.sim.warmup_s"].max() if "cfg.sim.warmup_s" in chosen else None
    n_events = 0
    if events is not None and not events.empty and "time_s" in events:
        for i, strategy in enumerate(strategies):
            ids = chosen.loc[chosen["strategy"] == strategy, "cell_id"]
            own = events[events["cell_id"].isin(ids)]
            n_events += len(own)
            for action, acts in own.groupby("action") if "action" in own else [("event", own)]:
                ax_ev.scatter(acts["time_s"], np.full(len(acts), i), marker=_ACTION_MARKERS.get(str(action), "x"),
                              color=colour[strategy], s=22, label=str(action))
    handles = {}
    for h, lab in zip(*ax_ev.get_legend_handles_labels()):
        handles.setdefault(lab, h)
    if handles:
        ax_ev.legend(handles.values(), handles.keys(), fontsize=7, loc="upper right", ncol=len(handles))
    else:
        ax_ev.text(0.5, 0.5, "no adaptation events", transform=ax_ev.transAxes, ha="center", va="center")
    ax_ev.set_yticks(range(len(strategies)), strategies, fontsize=7)
    ax_ev.set_ylim(-0.6, len(strategies) - 0.4)
    for ax in (ax_p99, ax_util, ax_ev):
        if warm:
            ax.axvspan(0, warm, color="grey", alpha=0.15, lw=0)
        ax.grid(alpha=0.3)
    ax_p99.set_ylabel("window P99 (ms)")
    ax_util.set_ylabel("max link util. (%)")
    ax_ev.set_ylabel("events")
    ax_ev.set_xlabel("simulated time (s); one step per window; grey: warm-up (not measured)")
    ax_p99.legend(fontsize=7)
    which = f"seed {seed}" + (" (first cell by id of several per strategy)" if several else "")
    fig.suptitle(f"{group_label(key)}: {which}, {n_events} adaptation events")
    fig.tight_layout()
    return save_png(fig, path)


def link_util_distribution(cells: pd.DataFrame, ts: pd.DataFrame | None, group_by: tuple[str, ...],
                           path: Path | str) -> Path:
    """Box plot per strategy of max link utilisation (per window after warm-up, else per cell)."""
    per_window = ts is not None and not ts.empty and {"max_link_util", "window_start_s"} <= set(ts.columns)
    if per_window:
        ts = _in_measured_interval(ts, cells, "window_start_s")
    colour = colours(cells["strategy"].unique().tolist())
    groups = list(_groups(cells, group_by))
    fig, axes = _grid(len(groups))
    for ax, (key, sub) in zip(axes, groups):
        names, samples = [], []
        for strategy, own in sub.groupby("strategy", sort=True):
            values = (ts.loc[ts["cell_id"].isin(own["cell_id"]), "max_link_util"] if per_window
                      else own["max_link_util"]).to_numpy(float)
            values = values[np.isfinite(values)]
            names.append(strategy)
            samples.append(100 * values)
        if any(len(s) for s in samples):
            box = ax.boxplot([s if len(s) else [np.nan] for s in samples], patch_artist=True, widths=0.6,
                             medianprops={"color": "black"}, showfliers=False)
            for patch, name in zip(box["boxes"], names):
                patch.set_facecolor(colour[name])
                patch.set_alpha(0.55)
            jitter = np.random.default_rng(0)  # fixed: same picture every run
            for i, s in enumerate(samples, start=1):
                ax.scatter(i + jitter.uniform(-0.15, 0.15, len(s)), s, s=6, color="black", alpha=0.5)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_ylabel("max link utilisation (%)")
        ax.set_title(group_label(key), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    source = "per window after warm-up, all seeds" if per_window else "per cell (no timeseries table)"
    fig.suptitle(f"Busiest-link utilisation per strategy: {source}")
    fig.tight_layout()
    return save_png(fig, path)
