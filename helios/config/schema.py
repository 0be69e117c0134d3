"""The config's typed data: one frozen dataclass per section and per option of a group.

Each field carries its help text and its range checks (:func:`spec`), which
:mod:`helios.config.build` enforces. Each option of a config group is one dataclass,
picked by its ``name`` (a small registry per group, as in Vidur); the drift
scenarios' options are in :mod:`helios.config.scenarios`.

The field defaults repeat the figures of ``conf/``; the YAML files say where each
figure comes from.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3


def spec(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with help text and range checks.

    ``checks`` may hold ``gt``, ``ge``, ``le``, ``lt`` (numeric bounds), ``choices``
    (allowed values) and ``pattern`` (a regular expression the whole string matches,
    with ``pattern_help`` saying in words what it allows); :func:`from_mapping`
    enforces them.
    """
    return field(default=default, metadata={"help": help, **checks})


#: A name used as a path component (``sweep``): never a path, never hidden.
NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}"
NAME_HELP = ("a plain name: letters, digits, '_', '.', '-', not starting with '.', at most 100 "
             "characters (results go to <output_dir>/<sweep>/)")


# --------------------------------------------------------------------------- topology
@dataclass(frozen=True)
class TopologyConfig:
    """Fields shared by every topology: the servers and their network access."""

    name: str = spec("fat_tree", "topology family")
    gpus_per_server: int = spec(4, "GPUs per server joined by an NVSwitch", ge=1)
    nics_per_server: int = spec(1, "400G-class NICs bonded into the server uplink", ge=1)
    nic_per_gpu: bool = spec(False, "each GPU has its own NIC to the access switch "
                                    "(nics_per_server is then ignored)")
    thin_servers: int = spec(0, "mixed server types: the last N servers have thin_nics NICs", ge=0)
    thin_nics: int = spec(1, "NICs of a thin server (fewer than a full server's)", ge=1)
    nvlink_gbyte_s: float = spec(450.0, "NVLink bandwidth per GPU per direction, GB/s", gt=0)
    nic_gbit_s: float = spec(400.0, "bandwidth of one NIC per direction, Gb/s", gt=0)
    nvlink_latency_us: float = spec(0.5, "GPU<->NVSwitch hop latency, us", ge=0)
    link_latency_us: float = spec(1.0, "latency of each network hop (wire + switch), us", ge=0)


@dataclass(frozen=True)
class FatTreeConfig(TopologyConfig):
    """k-ary Fat-Tree (Al-Fares et al. 2008) with ECMP routing."""

    k: int = spec(4, "switch radix; k pods, k^3/4 servers", ge=2)
    fabric_gbit_s: float = spec(400.0, "switch-to-switch link bandwidth, Gb/s", gt=0)
    oversubscription: float = spec(
        1.0, "taper at the spine: aggregation-core links run at fabric_gbit_s / this", ge=1)
    routing: str = spec("ecmp", "path selection", choices=("ecmp",))


@dataclass(frozen=True)
class DragonflyConfig(TopologyConfig):
    """Dragonfly (Kim et al. 2008) with minimal or Valiant routing."""

    name: str = spec("dragonfly", "topology family")
    a: int = spec(4, "routers per group", ge=1)
    p: int = spec(2, "servers per router", ge=1)
    h: int = spec(2, "global links per router", ge=1)
    g: typing.Optional[int] = spec(None, "groups (default a*h+1)", ge=2)
    local_gbit_s: float = spec(400.0, "intra-group router link bandwidth, Gb/s", gt=0)
    global_gbit_s: float = spec(400.0, "inter-group link bandwidth, Gb/s", gt=0)
    routing: str = spec("minimal", "path selection", choices=("minimal", "valiant"))


TOPOLOGIES: dict[str, type[TopologyConfig]] = {
    "fat_tree": FatTreeConfig,
    "dragonfly": DragonflyConfig,
}


# --------------------------------------------------------------------------- model, GPU
@dataclass(frozen=True)
class ModelConfig:
    """Shape of the MoE model; see :mod:`helios.moe` for the derived byte and FLOP counts."""

    name: str = spec("deepseek_v3", "model name")
    num_experts: int = spec(256, "routed experts per MoE layer", ge=1)
    top_k: int = spec(8, "experts chosen per token", ge=1)
    hidden_size: int = spec(7168, "model (token) hidden size", ge=1)
    expert_intermediate_size: int = spec(2048, "expert FFN intermediate size", ge=1)
    num_moe_layers: int = spec(58, "MoE layers in the whole model", ge=1)
    param_bytes: float = spec(1.0, "bytes per expert weight (FP8=1, BF16=2)", gt=0)
    dispatch_bytes: float = spec(1.0, "bytes per activation element sent to experts", gt=0)
    combine_bytes: float = spec(2.0, "bytes per activation element sent back", gt=0)
    # Dense part (serving=ep): attention, shared experts, dense layers, LM head.
    attention: str = spec("mla", "attention kind", choices=("mla", "gqa"))
    num_attention_heads: int = spec(128, "query heads", ge=1)
    num_kv_heads: int = spec(128, "GQA: key/value heads", ge=1)
    head_dim: int = spec(128, "GQA: dimension per head", ge=1)
    q_lora_rank: int = spec(1536, "MLA: query compression rank (0 = none)", ge=0)
    kv_lora_rank: int = spec(512, "MLA: compressed KV dimension", ge=1)
    qk_nope_head_dim: int = spec(128, "MLA: per-head query/key dimension without RoPE", ge=1)
    qk_rope_head_dim: int = spec(64, "MLA: per-head RoPE dimension", ge=0)
    v_head_dim: int = spec(128, "MLA: per-head value dimension", ge=1)
    num_dense_layers: int = spec(3, "leading layers with a dense FFN instead of experts", ge=0)
    dense_intermediate_size: int = spec(18432, "FFN intermediate size of the dense layers", ge=1)
    num_shared_experts: int = spec(1, "shared experts run by every token on its own rank", ge=0)
    vocab_size: int = spec(129280, "vocabulary (LM head) size", ge=1)
    dense_param_bytes: float = spec(1.0, "bytes per attention/dense weight", gt=0)
    routing_gini: float = spec(
        0.25, "measured Gini of the per-expert token counts (helios.popularity)", ge=0, lt=1)


@dataclass(frozen=True)
class GpuConfig:
    """One accelerator: memory for expert weights and a roofline compute model."""

    name: str = spec("h100_sxm", "GPU name (conf/gpu/<name>.yaml)",
                     choices=("h100_sxm", "h800", "h200"))
    memory_gib: float = spec(80.0, "HBM capacity, GiB", gt=0)
    expert_memory_fraction: float = spec(0.55, "share of HBM for routed-expert weights", gt=0, le=1)
    peak_tflops: float = spec(989.0, "dense BF16/FP8-GEMM peak, TFLOP/s", gt=0)
    efficiency: float = spec(0.5, "achieved fraction of peak in grouped expert GEMMs", gt=0, le=1)
    hbm_tbyte_s: float = spec(3.35, "HBM bandwidth, TB/s", gt=0)
    kernel_overhead_us: float = spec(5.0, "fixed cost of one expert batch (launch, sync), us", ge=0)


# --------------------------------------------------------------------------- serving
@dataclass(frozen=True)
class ServingConfig:
    """How requests are served: the group's base; options are chosen by ``name``."""

    name: str = spec("ep", "serving model")


@dataclass(frozen=True)
class RequestServingConfig(ServingConfig):
    """The seed study's per-request model (:mod:`helios.sim.engine`); no keys of its own."""

    name: str = spec("request", "serving model")


@dataclass(frozen=True)
class EpServingConfig(ServingConfig):
    """Expert-parallel serving with data-parallel attention (:mod:`helios.sim.ep`)."""

    dispatch: str = spec("per_node", "how dispatched tokens are counted",
                         choices=("per_gpu", "per_node", "per_expert"))
    relay_chunks: int = spec(8, "per_node: pieces per relayed flow, so that the RDMA and NVLink "
                                "stages pipeline", ge=1, le=64)
    phase_overhead_us: float = spec(
        0.0, "fixed cost of every dispatch and every combine on the receiving rank (launch, "
             "count exchange, completion polling), us", ge=0)
    overlap: str = spec("none", "two_batch: two micro-batches overlap communication and compute",
                        choices=("none", "two_batch"))
    dp_balance: str = spec("round_robin", "which attention rank a new request joins",
                           choices=("round_robin", "shortest_queue"))
    max_running_requests: int = spec(128, "requests in a rank's running batch, at most", ge=1)
    max_batch_tokens: int = spec(8192, "tokens a rank runs in one step (decode + prefill chunk)", ge=1)
    prompt_tokens: int = spec(512, "mean prompt length, tokens", ge=1)
    prompt_cv: float = spec(0.0, "coefficient of variation of prompt lengths (0 = fixed, "
                                 "else lognormal)", ge=0)
    output_tokens: int = spec(32, "mean output length, tokens", ge=1)
    output_cv: float = spec(0.0, "coefficient of variation of output lengths (0 = fixed, "
                                 "else lognormal)", ge=0)
    length_clip: float = spec(8.0, "lognormal lengths are clipped to this x their mean", ge=1)
    initial_decode_requests: int = spec(
        0, "requests per rank already decoding at time 0 (a warm start at steady load; they "
           "arrive at 0, so no latency figure counts them)", ge=0)
    kv_memory_fraction: float = spec(0.2, "share of HBM for the KV cache of a rank", gt=0, lt=1)
    kv_cache_bytes: float = spec(2.0, "bytes per KV-cache element (BF16=2, FP8=1)", gt=0)
    ttft_slo_ms: float = spec(2000.0, "time-to-first-token objective, ms", gt=0)
    tpot_slo_ms: float = spec(100.0, "time-per-output-token objective, ms", gt=0)


SERVING: dict[str, type[ServingConfig]] = {
    "ep": EpServingConfig,
    "request": RequestServingConfig,
}


# --------------------------------------------------------------------------- scenario
@dataclass(frozen=True)
class ScenarioConfig:
    """Request arrivals and expert popularity (see :mod:`helios.workload`)."""

    name: str = spec("stationary", "scenario name")
    rate: float = spec(1000.0, "mean request arrival rate, requests/s", gt=0)
    tokens_per_request: int = spec(512, "mean tokens per request (a batch of tokens)", ge=1)
    token_distribution: str = spec(
        "fixed", "tokens per request", choices=("fixed", "poisson", "geometric")
    )
    popularity: str = spec(
        "measured", "expert popularity: calibrated to measured routing skew, or Zipf(zipf_s)",
        choices=("measured", "zipf"))
    gini: typing.Optional[float] = spec(
        None, "popularity=measured: Gini of per-expert token counts; None = model.routing_gini",
        ge=0, lt=1)
    zipf_s: float = spec(1.0, "popularity=zipf: Zipf exponent (0 = uniform)", ge=0)
    popularity_seed: typing.Optional[int] = spec(
        0, "seed of the hot-expert permutation; None = the cell seed", ge=0, lt=2**63)
    home_servers: typing.Optional[int] = spec(
        None, "serving=request: requests homed on the GPUs of the first N servers (None: all)", ge=1)

    def validate(self, cell: Any) -> None:
        """Scenario checks that need the whole cell config (e.g. a trace file); none here.

        Called by :func:`check_consistency`; subclasses in :mod:`helios.scenarios`
        override it and raise :class:`ConfigError`.
        """


SCENARIOS: dict[str, type[ScenarioConfig]] = {"stationary": ScenarioConfig}


# --------------------------------------------------------------------------- strategy
@dataclass(frozen=True)
class IlpConfig:
    """Solver settings and objective of the Helios placement MILP (per layer, HiGHS)."""

    solver: str = spec("highs", "MILP solver (HiGHS through highspy's array API)", choices=("highs",))
    time_limit_s: float = spec(60.0, "time for the whole placement (all layers), s", gt=0)
    mip_gap: float = spec(0.01, "relative MIP gap at which a layer's solve stops", ge=0, lt=1)
    num_redundant: typing.Optional[int] = spec(
        None, "extra expert copies per layer over the cluster, as EPLB's redundant experts "
        "(null: 16, or fewer where memory holds fewer)", ge=0)
    network_weight: float = spec(1.0, "weight of the dispatch + combine (network) terms", ge=0)
    compute_weight: float = spec(1.0, "weight of the GPU (grouped GEMM / queueing) terms", ge=0)
    rho_max: float = spec(0.95, "serving=request: cap on every GPU's and link's utilisation",
                          gt=0, lt=1)
    queue_cuts: int = spec(16, "serving=request: tangents of the M/D/1 queue length", ge=2, le=256)


@dataclass(frozen=True)
class EplbConfig:
    """DeepSeek EPLB parameters (see :mod:`helios.placement.eplb`)."""

    num_redundant: int = spec(16, "redundant expert slots per layer, over the cluster", ge=0)
    num_groups: int = spec(1, "expert groups (hierarchical policy when it divides by nodes)", ge=1)


@dataclass(frozen=True)
class FileStrategyConfig:
    """Strategy ``from_file``: a deployed placement (see :mod:`helios.placement.deploy`)."""

    path: str = spec("", "SGLang --init-expert-location JSON or EPLB phy2log/logcnt JSON")


@dataclass(frozen=True)
class AdaptationConfig:
    """Runtime adaptation engine (strategies ``helios_dynamic`` and ``eplb_dynamic``)."""

    ewma_alpha: float = spec(
        0.5, "serving=request: weight of the newest window in the expert-load EWMA", gt=0, le=1)
    max_replicas_per_expert: int = spec(
        4, "serving=request: replica cap per (layer, expert) (or its initial count if more)", ge=1)
    paced_transfers: bool = spec(
        True, "send replica weights one network chunk at a time (background copy) instead of at once")
    interval_s: typing.Optional[float] = spec(
        None, "serving=request: time between two decisions, s, in whole sim.window_s (null: "
              "every window)", gt=0)
    count_window_s: typing.Optional[float] = spec(
        None, "serving=request: decide on the mean load of the last this many seconds, in whole "
              "sim.window_s (null: the EWMA)", gt=0)
    # serving=ep (helios.sim.ep.migration): set in steps, as vLLM and SGLang set them.
    interval_steps: int = spec(
        3000, "serving=ep: steps between two rebalances (vLLM eplb step_interval, SGLang "
              "eplb_rebalance_num_iterations)", ge=1)
    window_steps: int = spec(
        1000, "serving=ep: the expert counts of the last this many completed steps decide "
              "(vLLM eplb window_size, SGLang expert_distribution_recorder_buffer_size)", ge=1)
    layers_per_chunk: typing.Optional[int] = spec(
        None, "serving=ep: layers rebalanced per step, a chunk after each step (SGLang "
              "eplb_rebalance_layers_per_chunk); null: all at once", ge=1)
    utilization_threshold: float = spec(
        1.0, "serving=ep: skip a rebalance while the window's balancedness (mean / max GPU "
             "load) is above this (SGLang eplb_min_rebalancing_utilization_threshold; 1 never "
             "skips)", gt=0, le=1)
    transfer: str = spec(
        "stop_the_world", "serving=ep: weight copies pause serving until done (stop_the_world,"
        " as vLLM and SGLang by default) or go in the background (async) while steps run",
        choices=("stop_the_world", "async"))
    migration_gbyte_s: typing.Optional[float] = spec(
        None, "budget of weight-copy bytes over the fabric, GB/s (serving=ep: async only; "
              "serving=request: every copy, a chunk at a time); null: no budget", gt=0)
    min_gain: float = spec(
        0.01, "helios_dynamic: a move must cut its layer's cost (serving=ep: the step's; "
              "serving=request: the waiting and transfer per request) by this share", ge=0, lt=1)


@dataclass(frozen=True)
class TelemetryConfig:
    """What routers and adaptation engines may see, and how late (no oracle telemetry)."""

    delay_s: typing.Optional[float] = spec(
        None, "age of the telemetry routers and adaptation engines see, s (null: one "
              "sim.window_s for the link and GPU meters, which the congestion_aware router "
              "reads in both serving models; serving=ep's engines see the expert counts of "
              "completed steps, no older)", ge=0, le=3600)


@dataclass(frozen=True)
class StrategyConfig:
    """Placement strategy, its parameters, and how tokens pick among replicas.

    Every strategy carries every section, so that all cells of a sweep share one
    column set; a strategy reads only its own sections.
    """

    name: str = spec("round_robin", "strategy (see helios.placement.STRATEGIES)")
    routing: str = spec("nearest", "replica choice per message (see helios.sim.routing.ROUTERS)")
    ilp: IlpConfig = field(default_factory=IlpConfig)
    eplb: EplbConfig = field(default_factory=EplbConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    file: FileStrategyConfig = field(default_factory=lambda: FileStrategyConfig())


# --------------------------------------------------------------------------- run control
@dataclass(frozen=True)
class SimConfig:
    """Length, measurement and resolution of one simulation."""

    duration_s: float = spec(3.0, "simulated time during which requests arrive, s", gt=0)
    warmup_s: float = spec(1.0, "initial time excluded from the metrics, s", ge=0)
    window_s: float = spec(0.1, "width of a measurement window, s", gt=0)
    drain_s: float = spec(2.0, "extra time after arrivals stop to finish requests, s", ge=0)
    layers: typing.Optional[int] = spec(
        None, "MoE layers simulated (None = all of model.num_moe_layers)", ge=1)
    slo_ms: float = spec(10.0, "serving=request: request latency objective for goodput, ms", gt=0)
    chunk_kib: float = spec(512.0, "chunk size of link transfers, KiB", gt=0)
    max_events: float = spec(
        2e10, "refuse a cell whose estimated events exceed this (helios.preflight; not part of "
              "the cell id)", gt=0)
    max_memory_gib: typing.Optional[float] = spec(
        None, "refuse a cell whose estimated memory exceeds this, GiB (null: half of this "
              "machine's memory; not part of the cell id)", gt=0)


@dataclass(frozen=True)
class RecordConfig:
    """Optional, bulky outputs."""

    requests: bool = spec(False, "write the per-request latency table")


@dataclass(frozen=True)
class RayConfig:
    """Where and how a multirun fans out (does not change results)."""

    address: typing.Optional[str] = spec(None, "Ray cluster address; None starts a local Ray")
    num_workers: typing.Optional[int] = spec(None, "simulation actors; None = one per CPU", ge=1)
    max_retries: int = spec(2, "retries of a cell whose worker died", ge=0)
    connect_timeout_s: float = spec(30.0, "give up joining ray.address after this many seconds",
                                    gt=0, le=3600)


@dataclass(frozen=True)
class FaultConfig:
    """Test-only fault injection (see :mod:`helios.faults`); leave it at its defaults.

    Not in ``conf/config.yaml``: set it with ``+fault.raise_in_cell=true`` or
    ``+fault.delay_s=2``. While at its
    defaults the section is left out of :func:`to_dict` and :func:`flatten`, so it
    changes neither the id nor the columns of a normal cell; a cell with an injected
    fault gets an id of its own.
    """

    raise_in_cell: bool = spec(False, "test only: the cell raises FaultInjected when it starts")
    delay_s: float = spec(0.0, "test only: the cell waits this long (s) before it starts, so "
                               "that a test can act while it runs", ge=0, le=600)


@dataclass(frozen=True)
class CellConfig:
    """Everything one simulation cell depends on."""

    topology: TopologyConfig = field(default_factory=FatTreeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    serving: ServingConfig = field(default_factory=EpServingConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    seed: int = spec(0, "seed of every random draw of the cell", ge=0, lt=2**63)
    sweep: str = spec("default", "sweep name: results go to <output_dir>/<sweep>/",
                      pattern=NAME_PATTERN, pattern_help=NAME_HELP)
    output_dir: str = spec("results", "root folder of results and the placement cache")
    rerun: bool = spec(False, "run cells again even if their results exist (+rerun=true)")
    fault: FaultConfig = field(default_factory=FaultConfig)


#: Sections of :class:`CellConfig` left out of :func:`to_dict` and :func:`flatten` while at
#: their defaults, so that adding them changed no cell id and no column.
HIDDEN_AT_DEFAULT = ("fault",)


def simulated_layers(cfg: CellConfig) -> int:
    """MoE layers a cell simulates: ``sim.layers``, or every MoE layer of the model."""
    return cfg.sim.layers if cfg.sim.layers is not None else cfg.model.num_moe_layers
