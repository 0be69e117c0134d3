"""DeepSeek-EPLB-compatible expert placement, in numpy.

This reimplements the Expert Parallelism Load Balancer published by DeepSeek
(https://github.com/deepseek-ai/EPLB, ``eplb.py``) with the same inputs,
outputs, shapes and meaning, so that placements computed here can be compared
slot for slot with the reference.

The algorithm, per MoE layer:

* **Hierarchical policy** (``num_groups % num_nodes == 0``):

  1. Sum each expert group's load and pack the groups onto nodes with
     :func:`balanced_packing` (every node gets ``num_groups / num_nodes``
     groups). This keeps all experts of a group, and therefore group-limited
     routing, inside one node.
  2. Inside each node, add redundant replicas with :func:`replicate_experts`
     (the node gets ``num_replicas / num_nodes`` physical slots).
  3. Inside each node, pack the physical experts onto the node's GPUs with
     :func:`balanced_packing`, where a replica's weight is its expert's load
     divided by the expert's replica count.

* **Global policy** (otherwise): the same steps with one group on one node,
  i.e. replicate over all slots, then pack the physical experts onto all GPUs.

Modelling choices, stated once:

* Loads are cast to float32 and every sum, division and comparison is done in
  float32, because the reference casts its input with ``weight.float()``; the
  same rounding gives the same ties and so the same placement. Integer loads
  below 2**24 are represented exactly.
* Sorting by load descending is stable (equal loads keep index order), and
  every arg-min / arg-max picks the first index, matching the reference's
  behaviour on the published example (which contains ties).
* When a packing has exactly one item per pack, item ``i`` goes to pack ``i``
  without sorting, as in the reference.
* ``log2phy`` has the reference's width, the largest replica count of any
  expert in any layer, padded with -1.
* Preconditions are the reference's asserts: ``num_replicas`` a multiple of
  ``num_gpus`` and at least the expert count; under the hierarchical policy also
  ``num_groups`` dividing the expert count and ``num_nodes`` dividing
  ``num_gpus``. The global policy ignores ``num_groups`` and ``num_nodes``.
* Tie-breaking: the reference sorts loads with ``torch.sort(descending=True)``
  and picks replicas with ``max(dim=-1).indices``; on CPU both keep the first
  index among equal values, which is what this port does (stable sort, first
  arg-max / arg-min).
"""

from __future__ import annotations

import operator

import numpy as np

from helios.errors import ConfigError

__all__ = ["rebalance_experts", "balanced_packing", "replicate_experts", "balancedness"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack weighted items into packs of equal item count, greedily balancing weight.

    Items are visited in descending weight order (stable for ties); each goes to
    the lightest pack that still has room, the first such pack on ties.

    Parameters
    ----------
    weight : numpy.ndarray
        ``[rows, n]`` float32 item weights; each row is packed independently.
    num_packs : int
        Number of packs; must divide ``n``.

    Returns
    -------
    pack_index : numpy.ndarray
        ``[rows, n]`` int64, the pack of each item.
    rank_in_pack : numpy.ndarray
        ``[rows, n]`` int64, the order in which the item entered its pack.
    """
    rows, n = weight.shape
    items_per_pack = n // num_packs
    if items_per_pack * num_packs != n:
        raise ConfigError("num_packs", num_packs, f"a divisor of the item count {n}")
    if items_per_pack == 1:
        # The reference skips sorting in this case; so do we, for identical output.
        pack_index = np.tile(np.arange(n, dtype=np.int64), (rows, 1))
        return pack_index, np.zeros((rows, n), dtype=np.int64)

    order = np.argsort(-weight, axis=1, kind="stable")
    row_ids = np.arange(rows)
    pack_index = np.full((rows, n), -1, dtype=np.int64)
    rank_in_pack = np.full((rows, n), -1, dtype=np.int64)
    pack_weight = np.zeros((rows, num_packs), dtype=np.float32)
    pack_count = np.zeros((rows, num_packs), dtype=np.int64)
    # One step per item position, vectorised over rows: n steps instead of rows * n.
    for position in range(n):
        item = order[:, position]
        open_weight = np.where(pack_count < items_per_pack, pack_weight, np.inf)
        pack = np.argmin(open_weight, axis=1)
        pack_index[row_ids, item] = pack
        rank_in_pack[row_ids, item] = pack_count[row_ids, pack]
        pack_weight[row_ids, pack] += weight[row_ids, item]
        pack_count[row_ids, pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give ``num_phy - num_log`` redundant replicas to the most loaded experts.

    Physical slot ``i < num_log`` holds logical expert ``i``; each further slot
    goes, one at a time, to the expert with the highest load per replica
    (first index on ties). This greedy choice minimises the maximum load per
    replica.

    Parameters
    ----------
    weight : numpy.ndarray
        ``[rows, num_log]`` float32 loads.
    num_phy : int
        Physical slots per row, ``>= num_log``.

    Returns
    -------
    phy2log : numpy.ndarray
        ``[rows, num_phy]`` int64, the logical expert in each slot.
    replica_rank : numpy.ndarray
        ``[rows, num_phy]`` int64, which replica of its expert the slot holds (0-based).
    logcnt : numpy.ndarray
        ``[rows, num_log]`` int64, the replica count of each expert.
    """
    rows, num_log = weight.shape
    if num_phy < num_log:
        raise ConfigError("num_phy", num_phy, f">= the number of logical experts {num_log}")
    row_ids = np.arange(rows)
    phy2log = np.empty((rows, num_phy), dtype=np.int64)
    phy2log[:, :num_log] = np.arange(num_log, dtype=np.int64)
    replica_rank = np.zeros((rows, num_phy), dtype=np.int64)
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    load_per_replica = weight.astype(np.float32, copy=True)
    for slot in range(num_log, num_phy):
        best = np.argmax(load_per_replica, axis=1)
        phy2log[:, slot] = best
        replica_rank[:, slot] = logcnt[row_ids, best]
        logcnt[row_ids, best] += 1
        # float32 / float32, as in the reference (numpy would promote int64 to float64).
        load_per_replica[row_ids, best] = weight[row_ids, best] / logcnt[row_ids, best].astype(np.float32)
    return phy2log, replica_rank, logcnt


def _inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of a ``[rows, n]`` permutation array."""
    inverse = np.empty_like(perm)
    np.put_along_axis(inverse, perm, np.arange(perm.shape[1], dtype=perm.dtype)[None, :].repeat(perm.shape[0], 0), 1)
    return inverse


def _hierarchical(
    weight: np.ndarray, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups -> nodes, replicate inside nodes, replicas -> GPUs inside nodes.

    Returns ``(phy2log, replica_rank, logcnt)`` for the whole cluster; physical
    slots are numbered node by node, GPU by GPU.
    """
    num_layers, num_log = weight.shape
    group_size = num_log // num_groups
    groups_per_node = num_groups // num_nodes
    log_per_node = num_log // num_nodes
    phy_per_node = num_phy // num_nodes
    phy_per_gpu = num_phy // num_gpus

    # Step 1: groups onto nodes. "mlog" numbers experts node-major: the experts of
    # node 0's groups first (in packing order), then node 1's, and so on.
    group_load = weight.reshape(num_layers, num_groups, group_size).sum(axis=-1, dtype=np.float32)
    group_node, group_rank = balanced_packing(group_load, num_nodes)
    group_slot = group_node * groups_per_node + group_rank  # [layers, groups]
    log2mlog = (group_slot[:, :, None] * group_size + np.arange(group_size)).reshape(num_layers, num_log)
    mlog2log = _inverse_permutation(log2mlog)

    # Step 2: replicate inside each node; one row per (layer, node).
    mlog_load = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, log_per_node)
    phy2mlog, phy_rank, mlogcnt = replicate_experts(mlog_load, phy_per_node)

    # Step 3: replicas onto the node's GPUs, each replica carrying an equal share.
    replica_load = np.take_along_axis(mlog_load / mlogcnt.astype(np.float32), phy2mlog, axis=1)
    gpu_in_node, rank_on_gpu = balanced_packing(replica_load, num_gpus // num_nodes)
    phy2slot = gpu_in_node * phy_per_gpu + rank_on_gpu
    slot2phy = _inverse_permutation(phy2slot)

    slot2mlog_local = np.take_along_axis(phy2mlog, slot2phy, axis=1).reshape(num_layers, num_nodes, phy_per_node)
    node_offset = (np.arange(num_nodes, dtype=np.int64) * log_per_node)[None, :, None]
    slot2mlog = (slot2mlog_local + node_offset).reshape(num_layers, num_phy)
    phy2log = np.take_along_axis(mlog2log, slot2mlog, axis=1)
    replica_rank = np.take_along_axis(phy_rank, slot2phy, axis=1).reshape(num_layers, num_phy)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, num_log), log2mlog, axis=1)
    return phy2log, replica_rank, logcnt


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(key, value, "a positive integer")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise ConfigError(key, value, "a positive integer") from None
    if as_int < 1:
        raise ConfigError(key, value, "a positive integer")
    return as_int


def _validated_weight(weight: np.ndarray) -> np.ndarray:
    array = np.asarray(weight)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ConfigError("weight", f"array of shape {array.shape}", "a 2-D array [layers, num_logical_experts >= 1]")
    is_real = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not is_real:
        raise ConfigError("weight", f"array of dtype {array.dtype}", "real-valued (integer or float) loads")
    as_float = array.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(as_float < 0):
        raise ConfigError("weight", "an array with negative or non-finite entries", "finite loads >= 0")
    if array.size and float(as_float.sum(axis=1).max()) > _FLOAT32_MAX:
        raise ConfigError("weight", "an array whose per-layer total overflows float32", "per-layer total load < 3.4e38")
    return array.astype(np.float32)


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicate and place experts like DeepSeek's EPLB ``rebalance_experts``.

    Parameters
    ----------
    weight : numpy.ndarray
        ``[layers, num_logical_experts]`` non-negative finite load statistics.
    num_replicas : int
        Physical expert slots per layer; a multiple of ``num_gpus`` and
        ``>= num_logical_experts``.
    num_groups : int
        Expert groups (for group-limited routing); must divide
        ``num_logical_experts``. Group ``g`` holds experts
        ``[g * size, (g + 1) * size)``.
    num_nodes : int
        Servers, whose intra-node links are faster; must divide ``num_gpus``.
        The hierarchical policy is used when ``num_groups % num_nodes == 0``,
        the global one otherwise.
    num_gpus : int
        GPUs; slots ``[k * num_replicas / num_gpus, (k + 1) * num_replicas / num_gpus)``
        live on GPU ``k``, and GPUs ``[n * num_gpus / num_nodes, ...)`` on node ``n``.

    Returns
    -------
    phy2log : numpy.ndarray
        ``[layers, num_replicas]`` int64, the logical expert in each physical slot.
    log2phy : numpy.ndarray
        ``[layers, num_logical_experts, num_replicas - num_logical_experts + 1]``
        int64; entry ``[l, e, r]`` is the slot of replica ``r`` of expert ``e``,
        -1 for ``r >= logcnt[l, e]``.
    logcnt : numpy.ndarray
        ``[layers, num_logical_experts]`` int64, replicas of each logical expert.

    Raises
    ------
    helios.errors.ConfigError
        (a ``ValueError``) when a precondition fails; the message names it.
    """
    weight32 = _validated_weight(weight)
    num_replicas = _positive_int("num_replicas", num_replicas)
    num_groups = _positive_int("num_groups", num_groups)
    num_nodes = _positive_int("num_nodes", num_nodes)
    num_gpus = _positive_int("num_gpus", num_gpus)
    num_layers, num_log = weight32.shape
    if num_replicas < num_log:
        raise ConfigError("num_replicas", num_replicas, f">= num_logical_experts ({num_log})")
    if num_replicas % num_gpus:
        raise ConfigError("num_replicas", num_replicas, f"a multiple of num_gpus ({num_gpus})")
    if num_groups % num_nodes == 0:
        # The hierarchical policy's preconditions; the global one ignores groups and nodes.
        if num_log % num_groups:
            raise ConfigError("num_groups", num_groups,
                              f"a divisor of num_logical_experts ({num_log}) when it divides "
                              f"by num_nodes ({num_nodes}), the hierarchical policy")
        if num_gpus % num_nodes:
            raise ConfigError("num_nodes", num_nodes, f"a divisor of num_gpus ({num_gpus})")
        # Implied by the checks above, kept explicit because the packing relies on it.
        experts_per_node = (num_log // num_groups) * (num_groups // num_nodes)
        if experts_per_node > num_replicas // num_nodes:
            raise ConfigError(
                "num_replicas", num_replicas, f"at least {experts_per_node} physical slots per node ({num_nodes} nodes)"
            )
        phy2log, replica_rank, logcnt = _hierarchical(weight32, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, replica_rank, logcnt = _hierarchical(weight32, num_replicas, 1, 1, num_gpus)

    width = int(logcnt.max())  # the reference's width: the most replicas of any expert
    log2phy = np.full((num_layers, num_log * width), -1, dtype=np.int64)
    slots = np.broadcast_to(np.arange(num_replicas, dtype=np.int64), (num_layers, num_replicas))
    np.put_along_axis(log2phy, phy2log * width + replica_rank, slots, axis=1)
    return phy2log, log2phy.reshape(num_layers, num_log, width), logcnt


def balancedness(weight_row: np.ndarray, phy2log_row: np.ndarray, logcnt_row: np.ndarray, num_gpus: int) -> float:
    """Mean over max GPU load of one layer's placement (1.0 = perfectly even).

    Each logical expert's load is split evenly among its replicas, and slot
    ``s`` lives on GPU ``s // (num_replicas / num_gpus)``, as in
    :func:`rebalance_experts`. A layer with zero total load counts as 1.0.

    Parameters
    ----------
    weight_row : numpy.ndarray
        ``[num_logical_experts]`` loads.
    phy2log_row : numpy.ndarray
        ``[num_replicas]`` logical expert of each slot.
    logcnt_row : numpy.ndarray
        ``[num_logical_experts]`` replica counts.
    num_gpus : int
        GPUs; must divide ``num_replicas``.

    Returns
    -------
    float
        ``mean(gpu_load) / max(gpu_load)``, in ``(0, 1]``.
    """
    num_gpus = _positive_int("num_gpus", num_gpus)
    weight_row = np.asarray(weight_row, dtype=np.float64)
    phy2log_row = np.asarray(phy2log_row, dtype=np.int64)
    logcnt_row = np.asarray(logcnt_row, dtype=np.int64)
    if phy2log_row.ndim != 1 or phy2log_row.size % num_gpus:
        raise ConfigError("num_gpus", num_gpus, f"a divisor of the slot count {phy2log_row.size}")
    slot_load = weight_row[phy2log_row] / logcnt_row[phy2log_row]
    gpu_load = slot_load.reshape(num_gpus, -1).sum(axis=1)
    peak = float(gpu_load.max())
    return 1.0 if peak == 0.0 else float(gpu_load.mean()) / peak


# --------------------------------------------------------------------------- strategy
from helios.placement.base import Placement, PlacementContext  # noqa: E402  (strategy wrapper only)


def check_eplb_fits(cfg: object, num_experts: int, num_gpus: int, slots_per_gpu: int,
                    num_nodes: int = 1) -> int:
    """Physical slots per layer of strategy ``eplb`` (``EplbConfig`` ``cfg``), checked.

    ``num_experts + num_redundant`` rounded up to a multiple of ``num_gpus``; usable
    before any simulation (e.g. in config validation).

    Raises
    ------
    ConfigError
        ``strategy.eplb.num_redundant`` when the replicas do not fit the GPUs' expert
        slots; ``strategy.eplb.num_groups`` when it does not divide the expert count.
    """
    E, G, slots = num_experts, num_gpus, slots_per_gpu
    per_gpu = -(-(E + cfg.num_redundant) // G)
    if per_gpu > slots:
        raise ConfigError("strategy.eplb.num_redundant", cfg.num_redundant,
                          f"at most {G * slots - E}: {G} GPUs x {slots} expert slots hold "
                          f"{G * slots} replicas of {E} experts (num_replicas rounds up to a "
                          f"multiple of {G})")
    if cfg.num_groups % num_nodes == 0 and E % cfg.num_groups:
        raise ConfigError("strategy.eplb.num_groups", cfg.num_groups,
                          f"a divisor of the expert count {E} (the hierarchical policy runs "
                          f"when it divides by the {num_nodes} servers)")
    return per_gpu * G


def eplb(ctx: PlacementContext) -> Placement:
    """Strategy ``eplb``: DeepSeek EPLB run on the expected per-expert load.

    * ``num_replicas = E + strategy.eplb.num_redundant``, rounded up to a multiple of the
      GPU count, because EPLB gives every GPU the same number of physical slots; the
      redundant replicas actually placed are recorded as ``eplb_redundant``.
    * EPLB's nodes are the servers (its hierarchy assumes fast links inside a node, here
      NVLink), its GPUs the cluster's GPUs, ``num_groups = strategy.eplb.num_groups``;
      so the hierarchical policy runs when the groups divide among the servers.
    * Physical slot ``s`` lives on GPU ``s // (num_replicas / num_gpus)``, as in EPLB. An
      expert's replicas are the distinct GPUs of its slots, the GPU of its lowest slot
      first. Two replicas of one expert on one GPU would serve nothing one does not (the
      simulator routes per GPU), so they count once and the slot stays empty
      (``eplb_merged_replicas`` counts them).

    Raises
    ------
    ConfigError
        ``strategy.eplb.num_redundant`` when the replicas do not fit the GPUs' expert
        slots; ``strategy.eplb.num_groups`` when it does not divide the expert count.
    """
    cfg, G, E = ctx.strategy.eplb, ctx.num_gpus, ctx.num_experts
    num_replicas = check_eplb_fits(cfg, E, G, ctx.slots_per_gpu, ctx.cluster.num_servers)
    per_gpu = num_replicas // G
    phy2log, _, _ = rebalance_experts(ctx.expected_load, num_replicas, cfg.num_groups,
                                      ctx.cluster.num_servers, G)
    replicas, merged = [], 0
    for layer in phy2log:
        experts: list[list[int]] = [[] for _ in range(E)]
        for slot, expert in enumerate(layer.tolist()):
            gpu = slot // per_gpu
            if gpu in experts[expert]:
                merged += 1
            else:
                experts[expert].append(gpu)
        replicas.append(experts)
    info = {"strategy": "eplb", "eplb_num_replicas": num_replicas,
            "eplb_redundant": num_replicas - E, "eplb_merged_replicas": merged,
            "eplb_policy": "hierarchical" if cfg.num_groups % ctx.cluster.num_servers == 0
            else "global"}
    return Placement(replicas, G, info)
