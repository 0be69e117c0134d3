"""The :class:`Placement` value object and the inputs every strategy sees."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helios.errors import ConfigError

FORMAT_VERSION = 2


@dataclass(frozen=True)
class EpStep:
    """``serving=ep``: a representative step, as the engine's roofline costs it.

    A grouped GEMM of ``n`` pairs over ``h`` held experts takes
    ``max(flop_s_per_pair n, weight_s_per_expert h + byte_s_per_pair n) + launch_s``.
    """

    step_tokens: float
    """Tokens in one step over all ranks (steady state at the scenario's rate)."""
    flop_s_per_pair: float
    byte_s_per_pair: float
    weight_s_per_expert: float
    launch_s: float


@dataclass(frozen=True)
class PlacementContext:
    """What a placement strategy may look at.

    Attributes
    ----------
    cluster : helios.topology.Cluster
    spec : helios.moe.ModelSpec
    expected_load : ndarray, shape (layers, num_experts)
        Expected token-expert pairs per second of each expert.
    source_share : ndarray, shape (num_gpus,)
        Share of tokens that start on each GPU (home GPUs).
    slots_per_gpu : int
        Expert slots per GPU per layer (the memory budget).
    strategy : StrategyConfig
        The strategy's own parameters.
    seed : int
        For strategies that randomise (none of the built-in ones do).
    tokens_per_request : float, optional
        Mean tokens per request; the request model's ILP needs it (per-request compute
        time and message sizes). None where unknown.
    serving : str
        The serving model the placement is for: ``"ep"`` or ``"request"``.
    ep_step : EpStep, optional
        ``serving=ep``: the representative step the ILP costs.
    sim_chunk_bytes : float
        The engine's chunk size (store-and-forward transfer times).
    num_moe_layers, num_dense_layers : int
        The model's layer counts (placement files cover the whole model).
    """

    cluster: Any
    spec: Any
    expected_load: np.ndarray
    source_share: np.ndarray
    slots_per_gpu: int
    strategy: Any
    seed: int = 0
    tokens_per_request: float | None = None
    serving: str = "request"
    ep_step: "EpStep | None" = None
    sim_chunk_bytes: float = 512.0 * 1024
    num_moe_layers: int | None = None
    """MoE layers of the whole model (None: the simulated ones)."""
    num_dense_layers: int = 0

    def __post_init__(self) -> None:
        if self.num_moe_layers is None:
            object.__setattr__(self, "num_moe_layers", self.expected_load.shape[0])

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def layers(self) -> int:
        return self.expected_load.shape[0]

    @property
    def num_experts(self) -> int:
        return self.expected_load.shape[1]


@dataclass
class Placement:
    """Where each (layer, expert) lives: ``replicas[layer][expert]`` is a list of GPUs.

    The first GPU of each list is the expert's primary copy. ``info`` carries
    strategy-specific facts (solver status, objective, ...) and goes to JSON with it.
    """

    replicas: list[list[list[int]]]
    num_gpus: int
    info: dict[str, Any] = field(default_factory=dict)
    shares: list[list[list[float]]] | None = None
    """Share of each expert's tokens per replica (parallel to ``replicas``); None: equal."""

    def share_table(self) -> list[list[list[float]]]:
        """Shares per replica, equal where the placement names none."""
        if self.shares is not None:
            return self.shares
        return [[[1.0 / len(g)] * len(g) for g in layer] for layer in self.replicas]

    @property
    def layers(self) -> int:
        return len(self.replicas)

    @property
    def num_experts(self) -> int:
        return len(self.replicas[0]) if self.replicas else 0

    def replica_counts(self) -> np.ndarray:
        """Replicas per (layer, expert): shape (layers, num_experts)."""
        return np.array([[len(g) for g in layer] for layer in self.replicas])

    def memory_use(self) -> np.ndarray:
        """Expert slots used on each GPU in each layer: shape (layers, num_gpus)."""
        use = np.zeros((self.layers, self.num_gpus), dtype=int)
        for layer, experts in enumerate(self.replicas):
            for gpus in experts:
                np.add.at(use[layer], gpus, 1)
        return use

    def gpu_load(self, expected_load: np.ndarray) -> np.ndarray:
        """Per-GPU load when each expert's load splits evenly among its replicas.

        Parameters
        ----------
        expected_load : ndarray, shape (layers, num_experts)

        Returns
        -------
        ndarray, shape (layers, num_gpus)
        """
        load = np.zeros((self.layers, self.num_gpus))
        for layer, experts in enumerate(self.replicas):
            for expert, gpus in enumerate(experts):
                np.add.at(load[layer], gpus, expected_load[layer, expert] / len(gpus))
        return load

    def primary(self) -> np.ndarray:
        """GPU of each expert's first replica: shape (layers, num_experts)."""
        return np.array([[g[0] for g in layer] for layer in self.replicas])

    def validate(self, num_experts: int, slots_per_gpu: int) -> None:
        """Check that every expert is placed and no GPU exceeds its slots.

        Raises
        ------
        ValueError
            Naming the first violation.
        """
        for layer, experts in enumerate(self.replicas):
            if len(experts) != num_experts:
                raise ValueError(f"layer {layer}: {len(experts)} experts placed, expected {num_experts}")
            for expert, gpus in enumerate(experts):
                if not gpus:
                    raise ValueError(f"layer {layer} expert {expert} has no replica")
                if len(set(gpus)) != len(gpus):
                    raise ValueError(f"layer {layer} expert {expert} has two replicas on one GPU")
                if min(gpus) < 0 or max(gpus) >= self.num_gpus:
                    raise ValueError(f"layer {layer} expert {expert} on unknown GPU {gpus}")
                if self.shares is not None:
                    share = self.shares[layer][expert]
                    if len(share) != len(gpus) or min(share) < 0 or abs(sum(share) - 1) > 1e-6:
                        raise ValueError(f"layer {layer} expert {expert}: shares {share} do not "
                                         f"split its tokens over its {len(gpus)} replicas")
        over = np.argwhere(self.memory_use() > slots_per_gpu)
        if len(over):
            layer, gpu = over[0]
            raise ValueError(f"layer {layer} GPU {gpu} holds more than {slots_per_gpu} experts")

    def to_json(self) -> str:
        data = {"format": FORMAT_VERSION, "num_gpus": self.num_gpus, "replicas": self.replicas,
                "info": self.info}
        if self.shares is not None:
            data["shares"] = self.shares
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Placement":
        """Parse :meth:`to_json` output; raises ``ValueError`` on any other format."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError("not a placement of format version %d" % FORMAT_VERSION)
        replicas = data["replicas"]
        if not (isinstance(replicas, list) and all(
                isinstance(layer, list) and all(
                    isinstance(g, list) and all(isinstance(x, int) for x in g) for g in layer)
                for layer in replicas)):
            raise ValueError("malformed replicas")
        shares = data.get("shares")
        if shares is not None and not (isinstance(shares, list) and len(shares) == len(replicas) and all(
                isinstance(layer, list) and len(layer) == len(rl) and all(
                    isinstance(s, list) and len(s) == len(g)
                    and all(isinstance(v, (int, float)) for v in s) for s, g in zip(layer, rl))
                for layer, rl in zip(shares, replicas))):
            raise ValueError("malformed shares")
        return cls(replicas=replicas, num_gpus=int(data["num_gpus"]), info=dict(data.get("info", {})),
                   shares=shares)


def check_fits(num_experts: int, num_gpus: int, slots_per_gpu: int) -> None:
    """Raise :class:`ConfigError` when one copy of every expert cannot fit."""
    if num_experts > num_gpus * slots_per_gpu:
        raise ConfigError("gpu.expert_memory_fraction", slots_per_gpu,
                          f"{num_gpus} GPUs x {slots_per_gpu} slots cannot hold {num_experts} experts")
