"""Statistics across seeds: confidence intervals, paired changes and tests, Holm.

Pure functions on 1-D arrays of per-seed values; :mod:`helios.analysis` applies them
per group, strategy and metric and states the method in every report.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 9999


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979); NaN entries stay NaN and are not counted in m.

    Sort the m p-values ascending; the i-th smallest (1-based) gets
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``. Rejecting where the adjusted value is
    below alpha is Holm's step-down procedure, which controls the family-wise error rate.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def seeded_rng(seed: int, *key: object) -> np.random.Generator:
    """A generator fixed by the settings seed and the row's key (order-independent)."""
    tag = zlib.crc32("|".join(map(str, key)).encode())
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "t",
            rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Confidence interval of the mean of finite ``values`` (n >= 2); ``(nan, nan)`` if n < 2."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    mean = float(x.mean())
    if np.all(x == x[0]):
        return mean, mean  # zero spread: every method gives a point
    from scipy import stats  # imported here: the command line's error path stays fast

    if method == "t":
        low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=stats.sem(x))
        return float(low), float(high)
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                          method="percentile", rng=rng if rng is not None else np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def describe(values: Sequence[float], confidence: float = 0.95, method: str = "t",
             rng: np.random.Generator | None = None) -> dict[str, object]:
    """n, mean, sd, CI and a note for one (group, strategy, metric) sample."""
    x = np.asarray(values, dtype=float)
    nan = np.isnan(x)
    x = x[~nan]
    inf = ~np.isfinite(x)
    notes = []
    if nan.any():
        notes.append(f"{int(nan.sum())} seed(s) without a value left out")
    row: dict[str, object] = {"n": len(x), "n_inf": int(inf.sum()), "mean": float("nan"), "sd": float("nan"),
                              "ci_low": float("nan"), "ci_high": float("nan")}
    if len(x) == 0:
        notes.append("no values")
    elif inf.any():
        row["mean"] = float(np.mean(x))  # +inf (or -inf); never NaN unless both signs occur
        notes.append(f"{int(inf.sum())} of {len(x)} seed(s) infinite (overloaded: unfinished requests); no CI")
    else:
        row["mean"] = float(x.mean())
        row["sd"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
        if len(x) == 1:
            notes.append("one seed: no CI")
        else:
            row["ci_low"], row["ci_high"] = mean_ci(x, confidence, method, rng)
            if row["ci_low"] < 0 <= x.min() and x.min() > 0:
                # A positive quantity (a latency) gets no interval below zero: the t
                # interval of log(x), mapped back (a geometric-mean interval).
                row["ci_low"], row["ci_high"] = (float(v) for v in np.exp(
                    mean_ci(np.log(x), confidence, "t", rng)))
                notes.append("CI on the log scale (the t interval fell below zero)")
            if len(x) == 2:
                notes.append("n=2: the CI rests on two seeds")
    row["note"] = "; ".join(notes)
    return row


def paired_change(x: np.ndarray, b: np.ndarray, confidence: float = 0.95, method: str = "t",
                  rng: np.random.Generator | None = None) -> tuple[float, float, float, list[str]]:
    """Change of ``x`` vs paired baseline ``b`` in %: ``(change, ci_low, ci_high, notes)``."""
    from scipy import stats

    nan = float("nan")
    mx, mb = float(np.mean(x)), float(np.mean(b))
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(b))):
        if np.isinf(mx) and np.isfinite(mb) and mb != 0:
            return float(np.sign(mx) * np.sign(mb) * np.inf), nan, nan, ["change infinite (overloaded seeds); no CI"]
        if np.isinf(mb) and np.isfinite(mx):
            return -100.0, nan, nan, ["baseline infinite (overloaded seeds): change is the limit -100%; no CI"]
        return nan, nan, nan, ["change undefined: both sides infinite on some seeds"]
    if mb == 0:
        return nan, nan, nan, ["change in % undefined: baseline mean is 0"]
    change = 100.0 * (mx - mb) / mb
    if len(x) < 2:
        return change, nan, nan, ["one paired seed: no CI"]
    d = x - b
    if method == "t":
        low, high = mean_ci(d, confidence, "t")
        low, high = sorted((100.0 * low / mb, 100.0 * high / mb))
        return change, low, high, []
    if np.all(b == b[0]) and np.all(x == x[0]):
        return change, change, change, []  # no spread to resample

    def ratio(xs: np.ndarray, bs: np.ndarray, axis: int = -1) -> np.ndarray:
        bm = np.mean(bs, axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (np.mean(xs, axis=axis) - bm) / bm

    res = stats.bootstrap((x, b), ratio, paired=True, vectorized=True, confidence_level=confidence,
                          n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                          rng=rng if rng is not None else np.random.default_rng(0))
    return change, float(res.confidence_interval.low), float(res.confidence_interval.high), []


def paired_test(x: np.ndarray, b: np.ndarray, test: str = "t", alpha: float = 0.05) -> tuple[float, float, list[str]]:
    """Two-sided paired test of ``x`` vs ``b``: ``(statistic, p, notes)``; p is NaN if untestable."""
    from scipy import stats

    nan = float("nan")
    with np.errstate(invalid="ignore"):
        d = x - b  # inf - inf is NaN: such pairs are handled below
    if test == "t":
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(b))):
            return nan, nan, ["t-test undefined with infinite values (try --test wilcoxon)"]
        if len(d) < 2:
            return nan, nan, ["one paired seed: no test"]
        if np.all(d == d[0]):
            if d[0] == 0:
                return 0.0, 1.0, ["identical to the baseline on every seed"]
            return nan, nan, ["difference constant across seeds: t-test undefined (zero variance)"]
        res = stats.ttest_rel(x, b)
        return float(res.statistic), float(res.pvalue), []
    notes = []
    both_inf = np.isinf(x) & np.isinf(b) & (np.sign(x) == np.sign(b))
    if both_inf.any():
        notes.append(f"{int(both_inf.sum())} pair(s) infinite on both sides left out")
        x, b = x[~both_inf], b[~both_inf]
        d = x - b
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        if len(d) == 0:
            return nan, nan, [*notes, "no pairs to test"]
        return 0.0, 1.0, [*notes, "identical to the baseline on every seed"]
    if 2.0 / 2**nonzero >= alpha:
        notes.append(f"Wilcoxon with n={nonzero} non-zero pairs cannot reach p<{alpha:g} "
                     f"(smallest two-sided p = {2.0 / 2**nonzero:.4g})")
    res = stats.wilcoxon(x, b)
    return float(res.statistic), float(res.pvalue), notes


# ----------------------------------------------------------------------------- tables
