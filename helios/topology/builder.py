"""What the topology generators share: parameter checks and the graph under construction."""

from __future__ import annotations

import math
import numbers
from typing import Any

import networkx as nx
import numpy as np

from helios.errors import ConfigError
from helios.topology.cluster import Cluster, SwitchRoute


def check_integer(key: str, value: Any, minimum: int, allowed: str | None = None) -> int:
    """``value`` as an int; a ConfigError on ``topology.<key>`` unless it is one >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"topology.{key}", value, allowed or f"an integer >= {minimum}")
    return int(value)


def check_number(key: str, value: Any, positive: bool) -> float:
    """``value`` as a float: finite, and > 0 (a bandwidth) or >= 0 (a latency)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        allowed = "a finite number > 0 (bytes/s)" if positive else "a finite number >= 0 (s)"
        raise ConfigError(f"topology.{key}", value, allowed)
    return float(value)


def check_server_params(params: dict[str, Any]) -> None:
    """Validate the server/link parameters every generator shares (keys as in the signature)."""
    check_integer("gpus_per_server", params["gpus_per_server"], 1)
    check_integer("nics_per_server", params["nics_per_server"], 1)
    check_integer("thin_servers", params.get("thin_servers", 0), 0)
    check_integer("thin_nics", params.get("thin_nics", 1), 1)
    check_integer("seed", params["seed"], 0)
    for key, value in params.items():
        if key.endswith("_bandwidth"):
            check_number(key, value, positive=True)
        elif key.endswith("_latency"):
            check_number(key, value, positive=False)


def check_thin_servers(num_servers: int, gps: int, nic_per_gpu: bool, nics_per_server: int,
                       thin_servers: int, thin_nics: int) -> int:
    """Mixed server types a cluster can have (as many thin servers, fewer NICs); returns
    the NICs of a full server. Shared by the generators and the config check."""
    nics = gps if nic_per_gpu else nics_per_server
    if thin_servers > num_servers:
        raise ConfigError("topology.thin_servers", thin_servers,
                          f"at most the cluster's {num_servers} servers")
    if thin_servers and thin_nics >= nics:
        what = "topology.gpus_per_server: one NIC per GPU" if nic_per_gpu else "topology.nics_per_server"
        raise ConfigError("topology.thin_nics", thin_nics,
                          f"fewer than the {nics} NICs of a full server ({what})")
    return nics


class GraphBuilder:
    """Nodes and directed links accumulated while a generator runs."""

    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self.links: list[tuple[str, str]] = []
        self.bandwidth: list[float] = []
        self.latency: list[float] = []
        self.kind: list[str] = []
        self.link_id: dict[tuple[str, str], int] = {}

    def connect(self, u: str, v: str, bandwidth: float, latency: float, kind: str,
                **attrs: Any) -> None:
        """Add a bidirectional link as two directed links with the same figures."""
        bandwidth, latency = float(bandwidth), float(latency)
        for a, b in ((u, v), (v, u)):
            lid = len(self.links)
            self.link_id[(a, b)] = lid
            self.links.append((a, b))
            self.bandwidth.append(bandwidth)
            self.latency.append(latency)
            self.kind.append(kind)
            self.graph.add_edge(a, b, bandwidth=bandwidth, latency=latency, kind=kind, id=lid,
                                **attrs)

    def path(self, nodes: list[str]) -> tuple[int, ...]:
        return tuple(self.link_id[e] for e in zip(nodes, nodes[1:]))

    def add_servers(self, access: list[str], gps: int, p: dict[str, Any]) -> None:
        """Server ``s`` (GPUs ``s*gps .. s*gps+gps-1``) hangs off switch ``access[s]``.

        Mixed server types: the last ``thin_servers`` servers have ``thin_nics`` NICs
        (fewer than the others). Bonded, their uplink is ``thin_nics * nic_bandwidth``;
        with a NIC per GPU, their GPUs share the ``thin_nics`` NICs evenly, each GPU's
        link running at ``nic_bandwidth * thin_nics / gpus_per_server`` (a static share:
        a GPU cannot borrow an idle neighbour's part).
        """
        thin, thin_nics = int(p.get("thin_servers", 0)), int(p.get("thin_nics", 1))
        nics = check_thin_servers(len(access), gps, bool(p.get("nic_per_gpu")),
                                  int(p["nics_per_server"]), thin, thin_nics)
        for s, switch in enumerate(access):
            nvs = f"nvs{s}"
            self.graph.add_node(nvs, kind="nvswitch", server=s)
            count = thin_nics if s >= len(access) - thin else nics
            for gpu in range(s * gps, (s + 1) * gps):
                self.graph.add_node(f"gpu{gpu}", kind="gpu", server=s)
                self.connect(f"gpu{gpu}", nvs, p["nvlink_bandwidth"], p["nvlink_latency"], "nvlink")
                if p.get("nic_per_gpu"):
                    self.connect(f"gpu{gpu}", switch, p["nic_bandwidth"] * count / gps,
                                 p["link_latency"], "nic")
            if not p.get("nic_per_gpu"):
                self.connect(nvs, switch, count * p["nic_bandwidth"], p["link_latency"], "nic")

    def cluster(self, name: str, gps: int, num_servers: int, num_switches: int,
                switch_route: SwitchRoute) -> Cluster:
        num_gpus = num_servers * gps
        return Cluster(name=name, graph=self.graph, num_gpus=num_gpus, gpus_per_server=gps,
                       num_servers=num_servers, num_switches=num_switches,
                       gpu_server=np.arange(num_gpus, dtype=np.int64) // gps,
                       links=self.links, link_bandwidth=np.asarray(self.bandwidth, dtype=float),
                       link_latency=np.asarray(self.latency, dtype=float), link_kind=self.kind,
                       switch_route=switch_route)
