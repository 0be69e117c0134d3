"""Cluster network graphs (k-ary Fat-Tree, Dragonfly) and the route of every GPU pair.

Model of a server: each GPU has an NVLink-class link, one per direction, to its
server's NVSwitch node ``nvs{s}``; the NVSwitch node reaches the server's access
switch (fat-tree edge switch or dragonfly router) through one link per direction
whose bandwidth is ``nics_per_server * nic_bandwidth`` (the NICs are bonded).
Intra-server traffic is gpu -> nvs -> gpu; inter-server traffic is
gpu -> nvs -> access switch -> ... -> access switch -> nvs -> gpu. With
``nic_per_gpu`` every GPU instead has a NIC of its own to the access switch (as in
DGX/HGX H100 servers, one 400G ConnectX-7 per GPU), and inter-server traffic is
gpu -> access switch -> ... -> access switch -> gpu. Mixed server types: the last
``thin_servers`` servers have ``thin_nics`` NICs, fewer than the others
(:meth:`~helios.topology.builder.GraphBuilder.add_servers`).

Every direction of every link is its own ``networkx.DiGraph`` edge with a link id.
A link's latency is the one-way time from entering the link until the node at its
far end has forwarded the data (propagation plus that node's traversal), so a
path's latency is the sum over its links: ``nvlink_latency`` on GPU<->NVSwitch
links and ``link_latency`` on every network link.

Routes are fixed per (src GPU, dst GPU, seed) pair, as flow-hashed ECMP does: where
several paths qualify, ``zlib.crc32`` of the pair and the seed picks one, so a route
is the same in every process (Python's ``hash()`` of strings is salted per process).

- :mod:`~helios.topology.cluster`: :class:`Cluster` and its routes;
- :mod:`~helios.topology.fat_tree`, :mod:`~helios.topology.dragonfly`: the generators;
- :func:`build`: the cluster a topology config describes.
"""

from __future__ import annotations

from typing import Any

from helios.errors import ConfigError
from helios.topology.cluster import Cluster
from helios.topology.dragonfly import dragonfly
from helios.topology.fat_tree import fat_tree

__all__ = ["Cluster", "fat_tree", "dragonfly", "build"]


def build(topo: Any, seed: int = 0) -> Cluster:
    """Build the cluster a topology config (``helios.config.TopologyConfig``) describes.

    Converts the config's units (GB/s, Gb/s, us) to bytes/s and seconds; ``run_cell``
    builds every cell's cluster with it.
    """
    common = dict(gpus_per_server=topo.gpus_per_server, nics_per_server=topo.nics_per_server,
                  nic_per_gpu=topo.nic_per_gpu, thin_servers=topo.thin_servers,
                  thin_nics=topo.thin_nics,
                  nvlink_bandwidth=topo.nvlink_gbyte_s * 1e9,
                  nic_bandwidth=topo.nic_gbit_s / 8 * 1e9,
                  nvlink_latency=topo.nvlink_latency_us * 1e-6,
                  link_latency=topo.link_latency_us * 1e-6, seed=seed)
    if topo.name == "fat_tree":
        return fat_tree(topo.k, fabric_bandwidth=topo.fabric_gbit_s / 8 * 1e9,
                        oversubscription=topo.oversubscription, **common)
    if topo.name == "dragonfly":
        return dragonfly(topo.a, topo.p, topo.h, topo.g, routing=topo.routing,
                         local_bandwidth=topo.local_gbit_s / 8 * 1e9,
                         global_bandwidth=topo.global_gbit_s / 8 * 1e9, **common)
    raise ConfigError("topology.name", topo.name, "one of fat_tree, dragonfly")
