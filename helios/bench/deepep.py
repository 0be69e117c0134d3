"""``python -m helios.bench deepep``: simulated DeepEP kernels against DeepEP's published figures.

Sets up the configurations of DeepEP's benchmark tables (README of deepseek-ai/DeepEP,
V1 kernels, tested on H800 with NVLink ~160 GB/s and one ConnectX-7 400 Gb/s NIC per GPU,
DeepSeek-V3 shapes: hidden 7168, top-8 of 256 experts, FP8 dispatch, BF16 combine) and
simulates one dispatch and one combine with the ``serving=ep`` step model, on 8-GPU
servers with a NIC per GPU and a non-blocking fabric. Experts sit on ranks in contiguous
blocks, as in DeepEP's tests, and gates are uniform.

Counted as DeepEP's own tests count (``tests/legacy/test_internode.py``,
``test_intranode.py``, ``test_low_latency.py``):

* normal kernels, 4096 tokens per rank, top-4 node groups (``per_node`` dispatch):
  intranode "NVL bandwidth" is the tokens a rank receives (one per token and rank,
  its own included) x FP8 bytes / time; internode "RDMA bandwidth" is the (token,
  server) pairs a rank sends, its own server included (DeepEP's "logical bandwidth"),
  x FP8 bytes / time; FP8 bytes = ``hidden * (1 + 4/128)`` (scales included); combine
  counts the same tokens in BF16 over the combine time;
* low-latency kernels, 128 tokens per rank, ``per_expert`` dispatch: the kernel time.

A phase's time is from its start to the last delivery at the slowest rank. Two
calibrations follow, each fitted on a subset of the rows and applied to all of them:

* a fixed cost per phase (``serving.phase_overhead_us``: launch, count exchange,
  completion polling): one constant fitted by least squares on the relative errors of
  the twelve low-latency figures, where a fixed cost is what separates the network
  model from the measurement;
* the NVLink bandwidth an all-to-all kernel sustains, as a fraction of the 160 GB/s
  that the links carry in the model: fitted (with the fixed cost) on the two intranode
  EP8 figures, which no other link bounds. The internode figures are then a held-out
  check: at EP16 NVLink forwarding, not RDMA, is the busiest link in the model.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from helios.bench import BenchParser
from helios.sim.ep.step import StepBuilder, layer_traffic
from helios.sim.kernel import LinkState
from helios.topology import fat_tree

HIDDEN, TOP_K, EXPERTS = 7168, 8, 256
FP8_BYTES = HIDDEN * (1 + 4 / 128)
LL_FP8_BYTES = HIDDEN + HIDDEN / 128 * 4 + 16
BF16_BYTES = HIDDEN * 2

#: (ranks, published dispatch, published combine) per table: GB/s for normal, us for LL.
NORMAL = [(8, 153.0, 158.0), (16, 43.0, 43.0), (32, 58.0, 57.0), (64, 51.0, 50.0)]
LOW_LATENCY = [(8, 77.0, 114.0), (16, 118.0, 195.0), (32, 155.0, 273.0), (64, 173.0, 314.0),
               (128, 192.0, 369.0), (256, 194.0, 360.0)]
#: H800 NVLink as DeepEP states it (~160 GB/s per GPU), what the model's links carry.
NVLINK_BANDWIDTH = 160e9


def _cluster(ranks: int, nvlink_bandwidth: float = NVLINK_BANDWIDTH):
    k = 4 if ranks <= 128 else 6
    return fat_tree(k, gpus_per_server=8, nic_per_gpu=True, nvlink_bandwidth=nvlink_bandwidth,
                    nic_bandwidth=50e9, fabric_bandwidth=1e13, nvlink_latency=0.5e-6,
                    link_latency=1e-6, seed=0)


def _gate(ranks: int, tokens: int, node_groups: int | None, rng: np.random.Generator):
    """(src, gpu, expert) of every token-expert pair; experts in contiguous rank blocks."""
    per_rank = EXPERTS // ranks
    src = np.repeat(np.arange(ranks), tokens)
    count = src.size
    if node_groups is None:
        experts = np.argsort(rng.random((count, EXPERTS)), axis=1)[:, :TOP_K]
    else:
        nodes = ranks // 8
        groups = min(node_groups, nodes)
        per_node = EXPERTS // nodes
        chosen = np.argsort(rng.random((count, nodes)), axis=1)[:, :groups]
        pool = (chosen[:, :, None] * per_node + np.arange(per_node)).reshape(count, -1)
        pick = np.argsort(rng.random(pool.shape), axis=1)[:, :TOP_K]
        experts = np.take_along_axis(pool, pick, axis=1)
    return src, experts // per_rank, experts


def simulate(ranks: int, tokens: int, dispatch: str, out_bytes: float, back_bytes: float,
             node_groups: int | None, seed: int = 0, overhead_s: float = 0.0,
             nvlink_fraction: float = 1.0):
    """Dispatch and combine seconds of one phase each, and the layer's traffic counts."""
    cluster = _cluster(ranks, NVLINK_BANDWIDTH * nvlink_fraction)
    G = cluster.num_gpus
    src, gpu, experts = _gate(ranks, tokens, node_groups, np.random.default_rng(seed))
    traffic = layer_traffic(src, gpu, experts, G, 8, EXPERTS)
    zero = np.zeros(G)
    builder = StepBuilder(G, 8, dispatch, out_bytes, back_bytes, phase_overhead_s=overhead_s)
    plan = builder.build(0.0, zero, [[zero]], [[zero]], [[traffic]], zero)
    arrays = plan.graph.arrays()
    finish = LinkState(cluster, 512.0 * 1024).run(arrays)
    gemm = np.flatnonzero(arrays[0] == 0)[3 * G:4 * G]  # pre, tail, attn, gemm
    dispatch_s = finish[gemm[:ranks]].max()
    combine_s = finish[plan.tail[:ranks]].max() - dispatch_s
    return dispatch_s, combine_s, traffic


def _error(simulated: float, published: float) -> float:
    return (simulated - published) / published * 100


def _normal_row(ranks: int, pub_d: float, pub_c: float, seed: int, overhead_s: float,
                nvlink_fraction: float) -> list[tuple[str, float, float, str]]:
    d, c, t = simulate(ranks, 4096, "per_node", FP8_BYTES, BF16_BYTES, 4, seed, overhead_s,
                       nvlink_fraction)
    if ranks == 8:
        # tokens each rank receives, one per (token, rank), its own tokens included
        scale = t.per_gpu[:ranks, :ranks].sum(axis=0).mean()
        label = "normal intranode EP8 NVL"
    else:
        scale = t.per_node[:ranks].sum(axis=1).mean()
        label = f"normal internode EP{ranks} RDMA"
    return [(label + " dispatch", scale * FP8_BYTES / d / 1e9, pub_d, "GB/s"),
            (label + " combine", scale * BF16_BYTES / c / 1e9, pub_c, "GB/s")]


def normal_rows(seed: int, overhead_s: float,
                nvlink_fraction: float = 1.0) -> list[tuple[str, float, float, str]]:
    """(configuration, simulated, published, unit) of the normal kernels' entries."""
    out = []
    for ranks, pub_d, pub_c in NORMAL:
        out += _normal_row(ranks, pub_d, pub_c, seed, overhead_s, nvlink_fraction)
    return out


def low_latency_rows(seed: int, overhead_s: float,
                     nvlink_fraction: float = 1.0) -> list[tuple[str, float, float, str]]:
    """(configuration, simulated, published, unit) of the low-latency kernels' entries."""
    out = []
    for ranks, pub_d, pub_c in LOW_LATENCY:
        d, c, _ = simulate(ranks, 128, "per_expert", LL_FP8_BYTES, BF16_BYTES, None, seed,
                           overhead_s, nvlink_fraction)
        out.append((f"low-latency EP{ranks} dispatch", d * 1e6, pub_d, "us"))
        out.append((f"low-latency EP{ranks} combine", c * 1e6, pub_c, "us"))
    return out


def rows(seed: int, overhead_s: float,
         nvlink_fraction: float = 1.0) -> list[tuple[str, float, float, str]]:
    """(configuration, simulated, published, unit) of every table entry."""
    return (normal_rows(seed, overhead_s, nvlink_fraction)
            + low_latency_rows(seed, overhead_s, nvlink_fraction))


def fitted_nvlink_fraction(seed: int, overhead_s: float) -> float:
    """The fraction ``f`` of :data:`NVLINK_BANDWIDTH` (in [0.5, 1]) minimising the summed
    squared relative errors of the two intranode EP8 figures, with the fixed cost."""
    ranks, pub_d, pub_c = NORMAL[0]

    def loss(f: float) -> float:
        return sum((sim / pub - 1) ** 2
                   for _, sim, pub, _ in _normal_row(ranks, pub_d, pub_c, seed, overhead_s, f))

    return float(minimize_scalar(loss, bounds=(0.5, 1.0), method="bounded",
                                 options={"xatol": 1e-3}).x)


def fitted_overhead_us(table: list[tuple[str, float, float, str]]) -> float:
    """The constant ``c`` (us, >= 0) minimising sum(((s + c) / p - 1)^2) over the
    low-latency rows (a phase's time grows by exactly ``c``)."""
    ll = [(sim, pub) for _, sim, pub, unit in table if unit == "us"]
    num = sum((pub - sim) / pub**2 for sim, pub in ll)
    return max(0.0, num / sum(1 / pub**2 for _, pub in ll))


def main(argv: list[str]) -> int:
    parser = BenchParser(prog="python -m helios.bench deepep",
                         description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the gate draws")
    args = parser.parse_args(argv)
    bare = rows(args.seed, 0.0)
    c_us = fitted_overhead_us(bare)
    fitted = rows(args.seed, c_us * 1e-6)
    f = fitted_nvlink_fraction(args.seed, c_us * 1e-6)
    both = rows(args.seed, c_us * 1e-6, f)
    nvl = f"NVL {f * NVLINK_BANDWIDTH / 1e9:.0f} GB/s"
    print(f"{'configuration':<34}{'published':>10} {'unit':<5}{'simulated':>10}{'error':>8}"
          f"{'+ ' + format(c_us, '.1f') + ' us':>12}{'error':>8}{'+ ' + nvl:>18}{'error':>8}")
    for (name, sim, pub, unit), (_, sim_c, _, _), (_, sim_f, _, _) in zip(bare, fitted, both):
        print(f"{name:<34}{pub:>10.1f} {unit:<5}{sim:>10.1f}{_error(sim, pub):>+7.1f}%"
              f"{sim_c:>12.1f}{_error(sim_c, pub):>+7.1f}%{sim_f:>18.1f}{_error(sim_f, pub):>+7.1f}%")
    print(f"fixed cost per phase fitted on the low-latency rows: {c_us:.1f} us "
          "(serving.phase_overhead_us)")
    print(f"sustained NVLink fitted on the two EP8 rows, with that cost: {f:.3f} x "
          f"{NVLINK_BANDWIDTH / 1e9:.0f} GB/s = {f * NVLINK_BANDWIDTH / 1e9:.1f} GB/s "
          "(topology.nvlink_gbyte_s)")
    return 0
