"""Command line: ``python -m helios.report <sweep_dir> [options]`` - tables, tests and figures.

Writes ``report.md`` and ``figures/*.png`` into ``--out`` (default: the sweep folder,
next to the data) and prints the tables to the terminal. Every file is written under a
temporary name and renamed. All input is validated before anything is written: a bad
folder or option prints one line ``helios: config error: <key>=<value>: <allowed>`` and
exits with status 2. The statistics are those of :mod:`helios.analysis`; the figures
those of :mod:`helios.plots`.

Library use (notebooks)::

    from helios.report import analyse, build
    a = analyse("results/paper")           # a.summary, a.comparison: DataFrames
    r = build("results/paper", out="/tmp/r")  # also writes report.md and figures
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helios.analysis import (HIGHER_IS_BETTER, Analysis, analyse, joined, key_text,
                             load_cells)
from helios.errors import ConfigError

__all__ = ["Report", "analyse", "build", "main", "markdown_table"]

TITLES = {
    "p99_ms": "P99 latency (ms)", "p50_ms": "P50 latency (ms)", "p90_ms": "P90 latency (ms)",
    "mean_ms": "mean latency (ms)", "goodput_tok_s": "goodput (tokens/s)",
    "throughput_tok_s": "throughput (tokens/s)", "max_link_util": "max link utilisation (fraction)",
    "gpu_load_imbalance": "GPU load imbalance (max/mean)", "replication_bytes": "replication bytes",
    "tpot_p99_ms": "P99 time per output token (ms)", "ttft_p99_ms": "P99 time to first token (ms)",
    "output_tok_s": "output throughput (tokens/s)", "step_ms_mean": "mean step time (ms)",
    "balancedness": "balancedness (mean/max tokens per GPU)",
    "tpot_p50_ms": "P50 time per output token (ms)", "migration_pause_s": "serving paused for copies (s)",
}
_TEST_NAMES = {"t": "paired t-test (scipy.stats.ttest_rel)",
               "wilcoxon": "Wilcoxon signed-rank test (scipy.stats.wilcoxon, exact for small n)"}
_CI_NAMES = {"t": "Student t interval (scipy.stats.t.interval)",
             "bootstrap": "percentile bootstrap, 9,999 resamples, seeded (scipy.stats.bootstrap)"}


@dataclass
class Report:
    """What :func:`build` produced."""

    analysis: Analysis
    markdown: str
    report_path: Path | None
    figures: list[tuple[str, Path]] = field(default_factory=list)


def _fmt(value: object) -> str:
    if value is None or value is pd.NA:
        return "—"
    v = float(value)  # type: ignore[arg-type]
    if np.isnan(v):
        return "—"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _pct(value: float) -> str:
    text = _fmt(value)
    return text if text == "—" else f"{'+' if value > 0 else ''}{text}%"


def markdown_table(analysis: Analysis, metric: str) -> str:
    """One metric's table: n, mean, CI, change vs baseline with CI, p, Holm p, verdict, notes."""
    s = analysis.settings
    data = joined(analysis, metric)
    conf = f"{s.confidence * 100:g}%"
    regret = analysis.regret_of if analysis.regret is not None else None
    head = [*s.group_by, "strategy", "n", "mean", f"{conf} CI", f"Δ vs {s.baseline}", f"Δ {conf} CI",
            "p", "p (Holm)", "verdict", *([f"regret vs {regret} ({conf} CI; p Holm)"] if regret else []),
            "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in data.to_dict("records"):
        ci = f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]" if np.isfinite(row["ci_low"]) else "—"
        notes = [row.get("note") or ""]
        if row["strategy"] == s.baseline:
            change = ["baseline", "—", "—", "—", ""]
        elif pd.isna(row.get("n_pairs")):
            change = ["—", "—", "—", "—", "untested"]
        else:
            lo, hi = row["change_ci_low"], row["change_ci_high"]
            dci = f"[{_pct(lo)}, {_pct(hi)}]" if np.isfinite(lo) else "—"
            verdict = row["verdict"] if row["verdict"] != "n.s." else "**n.s.**"
            delta = _pct(row["change_pct"])
            if delta == "—" and np.isfinite(row["mean_diff"]) and row["mean_diff"] != 0:
                delta = f"{'+' if row['mean_diff'] > 0 else ''}{_fmt(row['mean_diff'])} (absolute)"
            change = [delta, dci, _fmt(row["p_value"]), _fmt(row["p_holm"]), verdict]
            notes.append(row.get("compare_note") or "")
        extra = []
        if regret:
            if row["strategy"] == regret:
                extra = ["bound"]
            elif pd.isna(row.get("regret_pct")):
                extra = ["—"]
            else:
                lo, hi = row["regret_ci_low"], row["regret_ci_high"]
                rci = f" [{_pct(lo)}, {_pct(hi)}]" if np.isfinite(lo) else ""
                extra = [f"{_pct(row['regret_pct'])}{rci}; {_fmt(row['regret_p_holm'])}"]
        cells = [*(key_text(row[k]) for k in s.group_by), row["strategy"], str(row["n"]), _fmt(row["mean"]), ci,
                 *change, *extra, "; ".join(dict.fromkeys(n for n in notes if n))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def method_text(analysis: Analysis, n_cells: int) -> str:
    """The report's statement of method (what every number means)."""
    s = analysis.settings
    strategies = sorted(analysis.summary["strategy"].unique())
    return "\n".join([
        f"- {n_cells} cells; strategies: {', '.join(strategies)}; baseline: **{s.baseline}**.",
        f"- Groups: {' x '.join(s.group_by) or '(all cells in one group)'}; the seed is the replicate, "
        "and seeds are paired across strategies (same seed, same workload).",
        f"- Mean over seeds with a {s.confidence * 100:g}% confidence interval: {_CI_NAMES[s.ci]}. "
        "One seed: no interval.",
        "- Δ: change of the mean vs the baseline in %, paired by seed: 100·mean(x−b)/mean(b) over the seeds "
        "both ran; its CI is " + ("the t interval of mean(x−b) divided by mean(b) (baseline mean taken as fixed)."
                                  if s.ci == "t" else "a paired bootstrap of the same ratio."),
        f"- p: two-sided {_TEST_NAMES[s.test]} vs the baseline across seeds. p (Holm): Holm (1979) step-down "
        f"correction per metric over all (group, strategy) comparisons; **n.s.** = not significant at "
        f"α={s.alpha:g} after correction; better/worse = significant, in the metric's good/bad direction.",
        "- inf: P99 of an overloaded cell (requests unfinished at the end of the run); such means have no CI "
        "and the t-test is not computed for them.",
    ])


def render(analysis: Analysis, n_cells: int, source: str, figures: Sequence[tuple[str, Path]],
           base: Path | None = None) -> str:
    """The whole ``report.md`` text."""
    parts = [f"# Helios report: {source}", "", "## Method", "", method_text(analysis, n_cells), ""]
    if analysis.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in analysis.notes), ""]
    parts += ["## Tables", ""]
    for metric in analysis.settings.metrics:
        direction = "higher" if metric in HIGHER_IS_BETTER else "lower"
        parts += [f"### {TITLES.get(metric, metric)} — {direction} is better", "", markdown_table(analysis, metric),
                  ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, path in figures:
            rel = os.path.relpath(path, base) if base is not None else str(path)
            parts += [f"**{caption}** — `{rel}`", "", f"![{caption}]({rel})", ""]
    return "\n".join(parts)


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.stem}-{uuid.uuid4().hex}{path.suffix}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _optional(sweep_dir: Path, table: str) -> pd.DataFrame | None:
    from helios.results import load

    try:
        frame = load(sweep_dir, table)
    except Exception:  # a damaged optional table only costs its figure
        return None
    return None if frame.empty else frame


def make_figures(analysis: Analysis, cells: pd.DataFrame, sweep_dir: Path, fig_dir: Path) -> list[tuple[str, Path]]:
    """Draw every figure the data allows; returns (caption, path) pairs."""
    from helios import plots

    s = analysis.settings
    ts, events, requests = (_optional(sweep_dir, t) for t in ("timeseries", "events", "requests"))
    out = []
    bar_metric = "p99_ms" if "p99_ms" in s.metrics else s.metrics[0]
    out.append((f"{TITLES.get(bar_metric, bar_metric)} per strategy, mean and CI over seeds",
                plots.p99_bars(analysis.summary, s.group_by, fig_dir / "p99_bars.png", metric=bar_metric,
                               ci_label=f"{s.confidence * 100:g}% CI ({'Student t' if s.ci == 't' else 'bootstrap'})")))
    out.append(("Latency CDF per strategy", plots.latency_cdf(cells, requests, s.group_by,
                                                              fig_dir / "latency_cdf.png")))
    if "max_link_util" in cells.columns:
        out.append(("Max link utilisation distribution per strategy",
                    plots.link_util_distribution(cells, ts, s.group_by, fig_dir / "link_util.png")))
    if ts is not None and {"window_start_s", "p99_ms", "max_link_util"} <= set(ts.columns):
        for key, sub in plots._groups(cells, s.group_by):
            if ts["cell_id"].isin(sub["cell_id"]).any():
                label = plots.group_label(key)
                path = fig_dir / f"timeseries_{plots.slug(label)}.png"
                out.append((f"Windowed P99, max link utilisation and adaptation events: {label}",
                            plots.timeseries(sub, ts, events, key, path)))
    return out


def build(sweep_dir: Path | str, baseline: str | None = None, metrics: Sequence[str] | None = None,
          group_by: Sequence[str] | None = None, out: Path | str | None = None, ci: str = "t", test: str = "t",
          figures: bool = True, write: bool = True, regret: str | None = None) -> Report:
    """Analyse a sweep folder and write ``report.md`` and figures into ``out`` (default: the folder).

    Raises
    ------
    ConfigError
        Before anything is written, for a bad folder or option (see :func:`helios.analysis.analyse`).
    """
    sweep_dir = Path(sweep_dir)
    cells = load_cells(sweep_dir)
    analysis = analyse(cells, baseline, metrics, group_by, ci=ci, test=test, regret=regret)
    out_dir = sweep_dir if out is None else Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("out", str(out_dir), "a folder (this path is a file)")
    cells = cells.assign(strategy=cells["strategy"].astype(str))
    if not write:
        return Report(analysis, render(analysis, len(cells), sweep_dir.name, []), None)
    figs = make_figures(analysis, cells, sweep_dir, out_dir / "figures") if figures else []
    text = render(analysis, len(cells), sweep_dir.name, figs, base=out_dir)
    report = Report(analysis, text, _write_text(out_dir / "report.md", text), figs)
    if figures:
        remove_stale_figures(out_dir / "figures", {path for _, path in figs})
    return report


#: Names of the figures a report draws; only these are ever removed from ``figures/``.
FIGURE_PATTERNS = ("p99_bars.png", "latency_cdf.png", "link_util.png", "timeseries_*.png")


def remove_stale_figures(fig_dir: Path, current: set[Path]) -> list[Path]:
    """Delete figures an earlier report drew that this one did not (e.g. another group-by).

    Runs after ``report.md`` is written, so an interrupted report never leaves a folder
    without the figures its ``report.md`` lists. Files of other names are left alone.
    """
    keep = {p.resolve() for p in current}
    stale = [path for pattern in FIGURE_PATTERNS for path in sorted(fig_dir.glob(pattern))
             if path.resolve() not in keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as the one-line config error (exit 2)."""

    argv: Sequence[str] = ()

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError("arguments", " ".join(self.argv), message)


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = _Parser(prog="python -m helios.report", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", help="results folder <output_dir>/<sweep>")
    p.add_argument("--baseline", help="strategy to compare against (default: round_robin, else first by name)")
    p.add_argument("--metrics", nargs="+", help="cells columns to analyse (space- or comma-separated)")
    p.add_argument("--group-by", nargs="*", help="group keys (default: topology model scenario; none: one group)")
    p.add_argument("--out", help="output folder (default: the sweep folder)")
    p.add_argument("--ci", default="t", help="t (Student t, default) or bootstrap")
    p.add_argument("--test", default="t", help="t (paired t-test, default) or wilcoxon")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--regret", help="a bound (e.g. oracle_static_window): every strategy's change against it too")
    return p


def _split(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    if [v.lower() for v in values] == ["none"]:
        return []
    return [v for item in values for v in item.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a config error)."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        cli = parser()
        cli.argv = argv  # type: ignore[attr-defined]
        args = cli.parse_args(argv)
        report = build(args.sweep_dir, args.baseline, _split(args.metrics), _split(args.group_by), args.out,
                       ci=args.ci, test=args.test, figures=not args.no_figures, regret=args.regret)
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        return 2
    print(report.markdown.split("## Figures")[0].rstrip())
    print()
    print(f"helios: report written to {report.report_path}")
    for _, path in report.figures:
        print(f"helios: figure {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
