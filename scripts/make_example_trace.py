"""Write the small example expert-load trace replayed by ``scenario=trace``.

Usage::

    python scripts/make_example_trace.py                      # conf/traces/example_trace.csv
    python scripts/make_example_trace.py --experts 16 --out /tmp/tiny_trace.parquet

The file has the layout of an expert-distribution recorder dump (SGLang's
``expert_distribution_recorder``, vLLM's EPLB load statistics): one row per
(window, layer, expert) with the number of token-expert pairs the expert received in
that window. Columns: ``window, layer, expert, load`` (integers). A ``.parquet`` or
``.pq`` output name writes Parquet instead of CSV.

The loads are synthetic, not measured. Model, per layer:

* window 0: Zipf(``--zipf``) popularity over the experts under a random permutation
  (the skew used by the ``stationary`` scenario);
* every next window: each expert's log-popularity takes an independent Gaussian step
  of standard deviation ``--drift`` (a random walk, so the hot set drifts gradually);
* loads: a multinomial draw of ``--pairs`` token-expert pairs from the window's
  popularity (the sampling noise a real recorder sees).

Defaults match the default config: 256 experts (``model=deepseek_v3``), 4 layers
(so up to ``sim.layers=4``), and ~1000 requests/s x 512 tokens x top-8 over a 0.03 s
window = 122,880 pairs per window and layer. Everything is drawn from
``numpy.random.default_rng(--seed)``, so the file is reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_trace(windows: int, layers: int, experts: int, pairs: int, zipf_s: float,
               drift: float, seed: int) -> pd.DataFrame:
    """The synthetic trace as a DataFrame with columns window, layer, expert, load."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, experts + 1, dtype=float)
    rows = []
    for layer in range(layers):
        log_pop = np.empty(experts)
        log_pop[rng.permutation(experts)] = -zipf_s * np.log(ranks)
        for window in range(windows):
            if window:
                log_pop = log_pop + rng.normal(0.0, drift, size=experts)
            probs = np.exp(log_pop - log_pop.max())
            load = rng.multinomial(pairs, probs / probs.sum())
            rows.append(pd.DataFrame({"window": window, "layer": layer,
                                      "expert": np.arange(experts), "load": load}))
    return pd.concat(rows, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO_ROOT / "conf" / "traces" / "example_trace.csv"))
    p.add_argument("--windows", type=int, default=12)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--pairs", type=int, default=122_880, help="token-expert pairs per window and layer")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the initial popularity")
    p.add_argument("--drift", type=float, default=0.3, help="s.d. of the log-popularity step per window")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    frame = make_trace(args.windows, args.layers, args.experts, args.pairs, args.zipf,
                       args.drift, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(out)
    print(f"wrote {len(frame)} rows to {out}")


if __name__ == "__main__":
    main()
