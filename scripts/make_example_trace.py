"""Write the small example expert-load trace replayed by ``scenario=trace``.

Usage::

    python scripts/make_example_trace.py                      # conf/traces/example_trace.csv
    python scripts/make_example_trace.py --experts 16 --out /tmp/tiny_trace.parquet
    python scripts/make_example_trace.py --engine-examples conf/traces   # SGLang / vLLM formats

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


def engine_examples(loads: np.ndarray, top_k: int, dense_layers: int, ranks: int,
                    seed: int) -> dict[str, object]:
    """The same synthetic loads in the engines' formats (see ``helios.traces``).

    ``loads``: shape (windows, moe_layers, experts). Returns arrays for
    ``sglang_stat`` (``logical_count`` with ``dense_layers`` zero rows first, as SGLang
    counts every hidden layer), ``sglang_per_pass`` (per pass and rank, counts on
    physical slots: every expert has one slot, the first ``ranks`` experts a second
    one, the counts split between them) and ``vllm`` (routed experts, tokens in time
    order, ``top_k`` distinct experts per token drawn from each window's loads).
    """
    rng = np.random.default_rng(seed)
    windows, layers, experts = loads.shape
    hidden = np.concatenate([np.zeros((windows, dense_layers, experts), dtype=np.int64),
                             loads.astype(np.int64)], axis=1)
    mapping = np.tile(np.concatenate([np.arange(experts), np.arange(ranks)]), (hidden.shape[1], 1))
    physical, pass_id = [], []
    for w in range(windows):
        per_rank = [np.zeros_like(mapping) for _ in range(ranks)]
        for layer in range(hidden.shape[1]):
            for e in range(experts):
                slots = np.flatnonzero(mapping[layer] == e)
                split = rng.multinomial(hidden[w, layer, e], np.ones(ranks * len(slots)) / (ranks * len(slots)))
                for r in range(ranks):
                    per_rank[r][layer, slots] = split[r * len(slots):(r + 1) * len(slots)]
        physical += per_rank
        pass_id += [w] * ranks
    tokens = []
    for w in range(windows):
        ids = np.empty((256, layers, top_k), dtype=np.int16)
        for layer in range(layers):
            p = loads[w, layer] / loads[w, layer].sum()
            for t in range(256):
                ids[t, layer] = rng.choice(experts, size=top_k, replace=False, p=p)
        tokens.append(ids)
    return {
        "sglang_stat": {"logical_count": hidden.astype(np.int32)},
        "sglang_per_pass": {"global_physical_count": np.stack(physical).astype(np.int32),
                            "forward_pass_id": np.array(pass_id),
                            "last_physical_to_logical_map": mapping.astype(np.int32)},
        "vllm": np.concatenate(tokens),
    }


def write_engine_examples(out_dir: Path, seed: int = 0) -> list[Path]:
    """The shipped examples for ``model=tiny`` (4 MoE layers, 16 experts, top-2), in
    SGLang's and vLLM's formats, under ``out_dir``."""
    frame = make_trace(windows=6, layers=4, experts=16, pairs=512, zipf_s=1.0, drift=0.3, seed=seed)
    loads = np.zeros((6, 4, 16))
    loads[frame.window, frame.layer, frame.expert] = frame.load
    examples = engine_examples(loads, top_k=2, dense_layers=1, ranks=2, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in examples.items():
        if isinstance(data, dict):
            path = out_dir / f"example_{name}.npz"
            np.savez_compressed(path, **data)
        else:
            path = out_dir / "example_vllm_routed_experts.npy"
            np.save(path, data)
        paths.append(path)
    return paths


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
    p.add_argument("--engine-examples", metavar="DIR",
                   help="write the SGLang and vLLM format examples for model=tiny into DIR instead")
    args = p.parse_args(argv)
    if args.engine_examples:
        for path in write_engine_examples(Path(args.engine_examples), args.seed):
            print(f"wrote {path}")
        return
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
