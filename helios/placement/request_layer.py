"""``serving=request``: one layer's placement cost, waiting + transfer time per request
(see :mod:`helios.placement.loadaware` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from helios.placement.loadaware import US, LayerVars, _Layer, pwl, queue_cuts
from helios.placement.milp import Milp

__all__ = ["RequestLayer"]


@dataclass
class RequestLayer(_Layer):
    """``serving=request``: one layer's waiting + transfer time per request (module doc).

    ``load`` is pairs per second; a copy of expert ``e`` with share ``s`` keeps its GPU
    ``copy_busy[e] + busy[e] s`` seconds per second busy (:func:`copy_busy_terms`: a
    request's job on it pays its weight read and launch whatever its share), ``rate``
    requests per second of ``tokens`` tokens, ``coef``
    the combined dispatch + combine :func:`link_coefficients` (seconds per token sent),
    ``tau`` a token's unloaded transfer seconds per GPU, ``gpu_bg`` / ``link_bg`` the
    other layers' utilisations, ``weight_bg`` a part of each GPU's ``W`` held fixed (the
    copies outside a neighbourhood, :mod:`helios.placement.request_search`).

    The request model sends a token once to every GPU holding one of its experts, so a
    GPU receives ``rate tokens f(W[g])`` tokens per second, ``W[g] = sum_e a[e] y[e, g]``,
    ``a[e] = -log(1 - pi[e])`` (``pi[e]`` the chance a token picks ``e``; selections
    treated as independent, and a replicated expert's share as a thinned intensity),
    ``f(W) = 1 - exp(-W)``. ``f`` is concave: experts picked together save sends when
    they share a GPU. It enters as the incremental piecewise-linear interpolation at
    ``segments`` breakpoints (equal steps of ``f``; binaries open a segment only once the
    previous one is full); this interpolation is the model, here and in the MILP.
    """

    busy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    copy_busy: np.ndarray | None = None
    """Busy seconds per second a copy costs whatever its share (default none)."""
    rate: float = 1.0
    tokens: int = 1
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    tau: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hops: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gpu_bg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    link_bg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight_bg: np.ndarray | None = None
    link_cuts: np.ndarray | None = None
    """Which tangents enter each link's waiting (bool, shape (links, cuts)); default all."""
    rho_max: float = 0.95
    cuts: int = 16
    segments: int = 8

    def __post_init__(self) -> None:
        if self.weight_bg is None:
            self.weight_bg = np.zeros(self.num_gpus)
        if self.copy_busy is None:
            self.copy_busy = np.zeros(self.num_experts)
        self.hop_scale = 0.0
        self.slopes, self.intercepts = queue_cuts(self.rho_max, self.cuts)
        pi = np.clip(self.load / (self.rate * self.tokens), 0.0, 1.0 - 1e-9)
        self.intensity = -np.log1p(-pi)
        most = float(np.sort(self.intensity)[::-1][:int(self.slots.max())].sum())
        levels = np.linspace(0.0, 1.0 - math.exp(-most), self.segments + 1)
        self.breaks = -np.log1p(-levels)
        self.breaks[-1] = most
        self.values = 1.0 - np.exp(-self.breaks)
        if self.metric == "hops":
            balanced = np.full(self.num_gpus, self.intensity.sum() / self.num_gpus)
            sends = self.rate * self.tokens * np.interp(balanced, self.breaks, self.values)
            true = self._network(sends, use_hops=False)
            denom = float(self.hops @ sends)
            self.hop_scale = true / denom if denom > 0 else 0.0

    def sends_of(self, y: np.ndarray) -> np.ndarray:
        """Tokens per second each GPU receives (the piecewise-linear model)."""
        return self.sends_at(self.weight_bg + self.intensity @ y)

    def _network(self, sends: np.ndarray, use_hops: bool | None = None) -> float:
        """Network seconds per request times the request rate."""
        if use_hops if use_hops is not None else self.metric == "hops":
            return float(self.hop_scale * (self.hops @ sends))
        links = pwl(self.link_bg + self.coef @ sends, self.slopes, self.intercepts).sum()
        return float(links + self.tau @ sends)

    def gpu_load(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """This layer's own GPU utilisations from copies ``x`` with shares ``y``."""
        return self.copy_busy @ x + self.busy @ y

    def utilisation(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GPU and link utilisations, including the other layers' (a copy is a positive share)."""
        return self.gpu_bg + self.gpu_load(y > 0, y), self.link_bg + self.coef @ self.sends_of(y)

    def own_load(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This layer's own GPU and link utilisations."""
        return self.gpu_load(y > 0, y), self.coef @ self.sends_of(y)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """The objective (microseconds per request) of copies ``x`` and shares ``y``."""
        net_w, comp_w = self.weights
        gpu = pwl(self.gpu_bg + self.gpu_load(x, y), self.slopes, self.intercepts).sum()
        return (comp_w * float(gpu) + net_w * self._network(self.sends_of(y))) * US / self.rate

    def build(self) -> tuple[Milp, LayerVars, dict[str, np.ndarray]]:
        m = Milp()
        net_w, comp_w = self.weights
        E, G = self.num_experts, self.num_gpus
        scale = US / self.rate
        v = self._shared(m)
        g = np.arange(G)
        u = m.add_cols(G, 0.0, self.rho_max)
        m.add_rows(np.r_[g, np.tile(g, E), np.tile(g, E)], np.r_[u, v.y.ravel(), v.x.ravel()],
                   np.r_[np.ones(G), -np.repeat(self.busy, G), -np.repeat(self.copy_busy, G)],
                   self.gpu_bg, self.gpu_bg)
        w = m.add_cols(G, 0.0, cost=comp_w * scale)
        self._cut_rows(m, w, u)
        send_cost = self.send_cost
        # A sends column counts rate * tokens tokens/s: in tokens/s, link coefficients
        # (~1e-10 s per token) fall below HiGHS's 1e-9 matrix floor and are dropped.
        unit = self.rate * self.tokens
        sends = self._sends_rows(m, v, net_w * scale * send_cost * unit)
        aux = {"u": u, "w": w, "sends": sends}
        if self.metric != "hops":
            K = self.coef.shape[0]
            util = m.add_cols(K, 0.0, self.rho_max)
            k, gg = np.nonzero(self.coef)
            m.add_rows(np.r_[np.arange(K), k], np.r_[util, sends[gg]],
                       np.r_[np.ones(K), -self.coef[k, gg] * unit], self.link_bg, self.link_bg)
            wait = m.add_cols(K, 0.0, cost=net_w * scale)
            self._cut_rows(m, wait, util, self.link_cuts)
            aux.update(util=util, wait=wait)
        return m, v, aux

    def _sends_rows(self, m: Milp, v: LayerVars, cost: np.ndarray) -> np.ndarray:
        """Columns ``S[g]`` = ``f(W[g])``, the tokens sent to ``g`` per token of the layer
        (units of ``rate * tokens`` tokens/s), by the incremental PWL of ``f``."""
        E, G, n = self.num_experts, self.num_gpus, self.segments
        width = np.diff(self.breaks)
        slope = np.diff(self.values) / width
        fill = m.add_cols(G * n, 0.0, np.tile(width, G)).reshape(G, n)
        opened = m.add_cols(G * (n - 1), 0.0, 1.0, integer=True).reshape(G, n - 1)
        g = np.arange(G)
        # sum_k fill[g, k] = weight_bg[g] + sum_e a[e] y[e, g]
        m.add_rows(np.r_[np.repeat(g, n), np.tile(g, E)], np.r_[fill.ravel(), v.y.ravel()],
                   np.r_[np.ones(G * n), -np.repeat(self.intensity, G)], self.weight_bg,
                   self.weight_bg)
        r = np.arange(G * (n - 1))
        # segment k full before k + 1 opens: fill[k] >= width[k] z[k], fill[k + 1] <= width[k + 1] z[k]
        m.add_rows(np.r_[r, r], np.r_[fill[:, :-1].ravel(), opened.ravel()],
                   np.r_[np.ones(r.size), -np.tile(width[:-1], G)], 0.0, np.inf)
        m.add_rows(np.r_[r, r], np.r_[fill[:, 1:].ravel(), opened.ravel()],
                   np.r_[np.ones(r.size), -np.tile(width[1:], G)], -np.inf, 0.0)
        sends = m.add_cols(G, 0.0, cost=cost)
        m.add_rows(np.r_[g, np.repeat(g, n)], np.r_[sends, fill.ravel()],
                   np.r_[np.ones(G), -np.tile(slope, G)], 0.0, 0.0)
        self._fill, self._opened = fill, opened
        return sends

    def lower_bound(self, time_limit_s: float = 5.0) -> float:
        """A bound below every placement's objective, from three relaxations (the link
        LP gets ``time_limit_s``):

        * GPU waiting: ``sum_g Lq(U[g]) >= G Lq(mean U)`` (the tangent model is convex), and
          ``sum_g U[g]`` is the same for every placement (each expert's shares sum to 1);
        * link waiting: :meth:`link_floor`;
        * transfer: :meth:`transfer_floor`.

        Each term is bounded on its own (the sum of the least terms is at most the least
        sum).
        """
        net_w, comp_w = self.weights
        G = self.num_gpus
        mean_u = (self.gpu_bg.sum() + self.busy.sum() + self.copy_busy.sum()) / G  # >= 1 copy each
        gpu = G * float(pwl(np.array([mean_u]), self.slopes, self.intercepts)[0])
        links = 0.0 if self.metric == "hops" else self.link_floor(time_limit_s)
        return (comp_w * gpu + net_w * (links + self.transfer_floor())) * US / self.rate

    def _block_sends(self) -> np.ndarray:
        """``f`` of each GPU's background weight plus each intensity block (tokens/s),
        shape (G, G): row ``g``, column ``k`` for block ``k`` on GPU ``g``.

        Sort the intensities in decreasing order and cut them into blocks of the GPUs'
        slot counts, largest first; ``D[k]`` is the ``k``-th block's sum (zero past the
        experts). Any ``k`` GPUs hold at most their slots' worth of copies and each
        expert's intensity at most once over its copies (its shares sum to 1), so the
        ``k`` heaviest own weights sum to at most ``D[0] + ... + D[k-1]``, with the same
        total: ``D`` majorizes the weight vector, which lies in the permutohedron of
        ``D`` (Rado 1952), whose vertices are the permutations of ``D``.
        """
        intensity = np.sort(self.intensity)[::-1]
        edges = np.minimum(np.r_[0, np.cumsum(np.sort(self.slots)[::-1])], intensity.size)
        blocks = np.diff(np.r_[0.0, np.cumsum(intensity)][edges])
        return self.sends_at(self.weight_bg[:, None] + blocks[None, :])

    def link_floor(self, time_limit_s: float = 5.0) -> float:
        """A floor under the links' waiting ``sum_l Lq(link_bg[l] + coef[l] @ s)``.

        An LP (HiGHS) over every sends vector ``s`` a placement could have and more:
        ``s >= 0``, no GPU above the sends of the heaviest block on it, and the total
        at least the least total any placement sends (the blocks of
        :meth:`_block_sends` assigned at unit cost: ``f`` is concave, so the least sum
        is at a permutation). ``Lq`` enters by its tangents, as in the MILP. Its
        optimum less 1e-6 of it (HiGHS's tolerances), or the background's waiting if
        the LP does not solve in ``time_limit_s``. On one DeepSeek-V3 layer of the seed
        fat-tree it is 64-74% of the greedy start's link waiting (0.03-0.05 s); on the
        seed dragonfly it is zero (0.4 s): spread over 288 GPUs the sends leave every
        link below the knee of the first tangent above zero (~5% busy).
        """
        background = float(pwl(self.link_bg, self.slopes, self.intercepts).sum())
        used = np.flatnonzero(self.coef.any(axis=1))
        if used.size == 0:
            return background
        sends = self._block_sends()
        gpus, chosen = linear_sum_assignment(sends)
        unit = self.rate * self.tokens  # columns in the layer's tokens, as in the MILP
        least = float(sends[gpus, chosen].sum()) / unit
        m = Milp()
        G, K = self.num_gpus, used.size
        s = m.add_cols(G, 0.0, sends[:, 0] / unit)
        m.add_rows(np.zeros(G), s, np.ones(G), least, np.inf)
        util = m.add_cols(K, 0.0, np.inf)
        coef = self.coef[used]
        k, g = np.nonzero(coef)
        m.add_rows(np.r_[np.arange(K), k], np.r_[util, s[g]], np.r_[np.ones(K), -coef[k, g] * unit],
                   self.link_bg[used], self.link_bg[used])
        wait = m.add_cols(K, 0.0, cost=1.0)
        self._cut_rows(m, wait, util)
        result = m.solve(None, time_limit_s, 0.0, relax=True)
        if result.stop != "optimal":
            return background
        rest = np.setdiff1d(np.arange(self.coef.shape[0]), used)
        floor = result.objective * (1 - 1e-6) + float(pwl(self.link_bg[rest], self.slopes, self.intercepts).sum())
        return max(background, floor)

    def transfer_floor(self) -> float:
        """The least unloaded transfer ``sum_g cost[g] f(W[g])`` any placement can have.

        ``f`` is concave, so its least sum over the permutohedron of the intensity blocks
        (:meth:`_block_sends`) is at a vertex: the least-cost assignment of blocks to
        GPUs. With equal slot counts and no replicas every such permutation is a
        placement, so the floor is attained. On one DeepSeek-V3 layer of the seed
        clusters it is 1.3-2.4 times the chord bound it replaced (the total weight
        filled into the cheapest GPUs at ``f(W_max) / W_max``, as if every GPU could
        hold the hottest experts at once) and 77-88% of the greedy start's transfer.

        References
        ----------
        R. Rado, "An inequality", J. London Math. Soc. 27 (1952), 1-6.
        A. W. Marshall, I. Olkin and B. C. Arnold, *Inequalities: Theory of Majorization
        and Its Applications*, 2nd ed., Springer 2011 (Karamata's inequality, ch. 3).
        """
        cost = self.send_cost[:, None] * self._block_sends()
        gpus, chosen = linear_sum_assignment(cost)
        return float(cost[gpus, chosen].sum())

    def _cut_rows(self, m: Milp, wait: np.ndarray, util: np.ndarray,
                  keep: np.ndarray | None = None) -> None:
        """``wait >= slope * util + intercept`` for every tangent (those ``keep`` marks)."""
        n, cuts = wait.size, self.slopes.size
        keep = np.ones(n * cuts, dtype=bool) if keep is None else np.asarray(keep).ravel()
        rows = np.arange(int(keep.sum()))
        m.add_rows(np.r_[rows, rows], np.r_[np.repeat(wait, cuts)[keep], np.repeat(util, cuts)[keep]],
                   np.r_[np.ones(rows.size), -np.tile(self.slopes, n)[keep]],
                   np.tile(self.intercepts, n)[keep], np.inf)

    def complete(self, m: Milp, v: LayerVars, aux: dict[str, np.ndarray], x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
        values = np.zeros(m.num_cols)
        values[v.y.ravel()], values[v.x.ravel()], values[v.pairs] = y.ravel(), x.ravel(), self.pairs_of(y)
        gpu, link = self.gpu_bg + self.gpu_load(x, y), self.link_bg + self.coef @ self.sends_of(y)
        values[aux["u"]] = gpu
        values[aux["w"]] = np.maximum(pwl(gpu, self.slopes, self.intercepts), 0.0)
        weight = np.minimum(self.weight_bg + self.intensity @ y, self.breaks[-1])
        width = np.diff(self.breaks)
        fill = np.clip(weight[:, None] - self.breaks[None, :-1], 0.0, width[None, :])
        values[self._fill.ravel()] = fill.ravel()
        values[self._opened.ravel()] = (fill[:, :-1] >= width[None, :-1] * (1 - 1e-12)).ravel()
        values[aux["sends"]] = self.sends_of(y) / (self.rate * self.tokens)
        if "util" in aux:
            values[aux["util"]] = link
            values[aux["wait"]] = np.maximum(pwl(link, self.slopes, self.intercepts), 0.0)
        return values

    def new_state(self) -> dict[str, Any]:
        return {"gpu": self.gpu_bg.copy(), "link": self.link_bg.copy(),
                "weight": self.weight_bg.copy(), "pairs": np.zeros(self.num_gpus)}

    def sends_at(self, weight: np.ndarray) -> np.ndarray:
        """Tokens per second to GPUs whose copies weigh ``weight`` in all (``W``)."""
        return self.rate * self.tokens * np.interp(weight, self.breaks, self.values)

    def extra_sends(self, weight: np.ndarray, e: int, share: float) -> np.ndarray:
        """Tokens per second more to GPUs of copy weight ``weight`` that take ``share`` of
        expert ``e``."""
        return self.sends_at(weight + self.intensity[e] * share) - self.sends_at(weight)

    def marginal(self, state: dict[str, Any], e: int, share: float, cand: np.ndarray) -> np.ndarray:
        net_w, comp_w = self.weights
        u = self.busy[e] * share + self.copy_busy[e]
        gpu = state["gpu"][cand]
        obj = comp_w * (pwl(gpu + u, self.slopes, self.intercepts) - pwl(gpu, self.slopes, self.intercepts))
        extra = self.extra_sends(state["weight"][cand], e, share)
        if self.metric == "hops":
            return obj + net_w * self.hop_scale * self.hops[cand] * extra
        return obj + net_w * self.link_price(state["link"], cand) * extra

    def fits(self, state: dict[str, Any], e: int, share: float, cand: np.ndarray) -> np.ndarray:
        """Which GPUs of ``cand`` can take a copy of ``e`` with ``share`` keeping their own
        utilisation and, under ``metric="latency"``, every link's at or below ``rho_max``:
        the MILP's caps, so that a start built within them is one of its solutions."""
        gpu = state["gpu"][cand] + self.busy[e] * share + self.copy_busy[e] <= self.rho_max
        if self.metric == "hops":
            return gpu
        extra = self.extra_sends(state["weight"][cand], e, share)
        links = state["link"][:, None] + self.coef[:, cand] * extra[None, :] <= self.rho_max
        return gpu & links.all(axis=0)

    @property
    def send_cost(self) -> np.ndarray:
        """Per GPU: the objective's unloaded network cost of a token sent there (transfer
        seconds, or the scaled hop count under ``metric="hops"``)."""
        return self.hop_scale * self.hops if self.metric == "hops" else self.tau

    def link_price(self, link: np.ndarray, gpus: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Network seconds of one more token sent to each of ``gpus`` at link utilisations
        ``link``: its unloaded transfer plus, on every link of its routes, the queueing
        cost's slope at that load (first order: a copy moves one link's utilisation by
        little); one K x len(gpus) product."""
        slope = self.slopes[np.argmax(link[:, None] * self.slopes + self.intercepts, axis=1)]
        return slope @ self.coef[:, gpus] + self.tau[gpus]

    def add(self, state: dict[str, Any], e: int, share: float, g: int) -> None:
        extra = float(self.extra_sends(state["weight"][g:g + 1], e, share)[0])
        state["weight"][g] += self.intensity[e] * share
        state["gpu"][g] += self.busy[e] * share + self.copy_busy[e]
        state["link"] += self.coef[:, g] * extra
        state["pairs"][g] += self.load[e] * share
