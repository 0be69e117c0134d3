"""Continuous batching on one data-parallel attention rank.

Each step the rank's scheduler forms one batch, as SGLang and vLLM do by default:

1. **decode**: every running request whose prompt is fully prefilled contributes one
   token (it produces one output token per step);
2. **chunked prefill**: the remaining budget of ``max_batch_tokens`` goes to prompt
   chunks, first to running requests with a partial prefill, then to waiting
   requests admitted in arrival order (FIFO);
3. **admission**: a waiting request joins while the rank runs fewer than
   ``max_running_requests`` and the KV cache has room for its whole prompt and
   output (``(prompt + output) * kv_bytes_per_token``, reserved at admission and freed
   when it finishes; no preemption), so KV memory bounds the running batch.

A request's first output token comes at the end of the step that completes its
prefill; each later step adds one. It finishes with its last output token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class ServedRequest:
    """One request's lengths and progress (times in seconds)."""

    rid: int
    arrival: float
    rank: int
    prompt: int
    output: int
    prefilled: int = 0
    generated: int = 0
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    warm: bool = False
    """Put in the running batch at time 0 by a warm start; no latency figure counts it."""


@dataclass
class Batch:
    """What one rank runs in one step."""

    decode: list[ServedRequest] = field(default_factory=list)
    prefill: list[tuple[ServedRequest, int]] = field(default_factory=list)
    """(request, chunk tokens) pairs."""

    @property
    def tokens(self) -> int:
        return len(self.decode) + sum(n for _, n in self.prefill)

    @property
    def context(self) -> float:
        """Sum over the batch's tokens of the positions each attends to (itself included)."""
        ctx = sum(r.prompt + r.generated for r in self.decode)
        for r, n in self.prefill:
            ctx += n * r.prefilled + n * (n + 1) / 2
        return float(ctx)

    @property
    def sampling(self) -> int:
        """Tokens that produce an output token this step (decode + completed prefills)."""
        return len(self.decode) + sum(1 for r, n in self.prefill if r.prefilled + n == r.prompt)


class RankScheduler:
    """Waiting queue, running set and KV budget of one rank.

    Parameters
    ----------
    rank : int
    max_running, max_batch_tokens : int
    kv_budget_tokens : int
        Tokens the rank's KV cache holds.
    """

    def __init__(self, rank: int, max_running: int, max_batch_tokens: int,
                 kv_budget_tokens: int) -> None:
        self.rank = rank
        self.max_running, self.max_batch_tokens = max_running, max_batch_tokens
        self.kv_budget = kv_budget_tokens
        self.kv_used = 0
        self.waiting: deque[ServedRequest] = deque()
        self.running: list[ServedRequest] = []

    def load(self) -> int:
        """Requests on the rank (waiting + running): what ``shortest_queue`` compares."""
        return len(self.waiting) + len(self.running)

    def add(self, req: ServedRequest) -> None:
        self.waiting.append(req)

    def admit_running(self, req: ServedRequest) -> bool:
        """Put ``req`` straight into the running set (a warm start); False if it does not fit."""
        if len(self.running) >= self.max_running or \
                self.kv_used + req.prompt + req.output > self.kv_budget:
            return False
        self.kv_used += req.prompt + req.output
        self.running.append(req)
        return True

    def form_batch(self) -> Batch:
        """The next step's batch (admits waiting requests; changes no progress counter)."""
        batch = Batch()
        for r in self.running:
            if r.prefilled == r.prompt:
                batch.decode.append(r)
        budget = self.max_batch_tokens - len(batch.decode)
        for r in self.running:
            if budget <= 0:
                break
            if r.prefilled < r.prompt:
                n = min(r.prompt - r.prefilled, budget)
                batch.prefill.append((r, n))
                budget -= n
        while (budget > 0 and self.waiting and len(self.running) < self.max_running
               and self.kv_used + self.waiting[0].prompt + self.waiting[0].output <= self.kv_budget):
            r = self.waiting.popleft()
            self.kv_used += r.prompt + r.output
            self.running.append(r)
            n = min(r.prompt, budget)
            batch.prefill.append((r, n))
            budget -= n
        return batch

    def finish_step(self, batch: Batch, now: float) -> list[ServedRequest]:
        """Advance the batch's requests to the step's end ``now``; returns those finished."""
        done = []
        for r in batch.decode:
            r.generated += 1
            if r.generated == r.output:
                done.append(r)
        for r, n in batch.prefill:
            r.prefilled += n
            if r.prefilled == r.prompt:
                r.generated = 1
                r.first_token_s = now
                if r.output == 1:
                    done.append(r)
        for r in done:
            r.finish_s = now
            self.kv_used -= r.prompt + r.output
        if done:
            gone = {id(r) for r in done}
            self.running = [r for r in self.running if id(r) not in gone]
        return done
