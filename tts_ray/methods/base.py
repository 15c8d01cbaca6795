"""What every TTS method takes and returns, shared helpers, and the aggregation of step scores."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tts_ray.engines.base import Completion, Generator, StepScorer
from tts_ray.grading import extract_answer, is_equivalent, normalize_answer
from tts_ray.planner.early_stop import EarlyStopRule, wave_sizes

DEADLINE = "deadline"  # finish_reason of a branch stopped at the deadline
# A branch told to stop at T answers a little after T; the router waits this much longer
# before cancelling it outright. The merge margin must cover it.
STOP_GRACE_S = 0.03

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda s: s[-1],
    "min": min,
    "prod": math.prod,
    "mean": lambda s: sum(s) / len(s),
}


def aggregate_score(step_scores: list[float], how: str) -> float:
    """One solution score from its step scores (0.0 for a solution without steps).

    Raises:
        KeyError: unknown aggregate.
    """
    return AGGREGATES[how](step_scores) if step_scores else 0.0


class MethodError(ValueError):
    """A method cannot run with what it was given (e.g. no reward model): a client error."""


@dataclass
class BranchStats:
    """How the branches of one request ended (reported in the response)."""

    finished: int = 0  # ran to EOS, a stop string or max_tokens
    stopped: int = 0  # stopped at the deadline; partial text kept
    cancelled: int = 0  # still unanswered at the deadline; cancelled, nothing kept
    failed: int = 0  # the replica raised
    early_stopped: int = 0  # never started: the vote was settled (early stopping)
    not_started: int = 0  # never started: no time left for another window

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class MethodContext:
    """Everything a method needs besides the prompt."""

    generator: Generator
    scorer: StepScorer | None
    num_branches: int
    max_tokens: int
    temperature: float
    aggregate: str = "last"
    beam_width: int = 4
    max_search_steps: int = 12
    step_separator: str = "\n"
    add_special_tokens: bool = True
    equivalent: Callable[[str, str], bool] = is_equivalent
    deadline_s: float | None = None  # time.time() instant the merged answer is due
    merge_margin_s: float = 0.1  # kept before the deadline for merging and answering
    score_reserve_s: float = 0.0  # kept before the merge margin for PRM scoring
    early_stop: EarlyStopRule | None = None
    stats: BranchStats = field(default_factory=lambda: BranchStats())

    def generation_deadline(self, scored: bool) -> float | None:
        """When generation must end so that scoring (if ``scored``) and the merge still fit."""
        if self.deadline_s is None:
            return None
        return self.deadline_s - self.merge_margin_s - (self.score_reserve_s if scored else 0.0)

    def require_scorer(self, method: str) -> StepScorer:
        if self.scorer is None:
            raise MethodError(f"method {method!r} needs a reward model, and none is configured")
        return self.scorer


@dataclass
class Branch:
    """One finished (or abandoned) branch as reported to the client."""

    text: str
    answer: str | None
    num_tokens: int
    finish_reason: str | None
    replica: str | None = None
    step_scores: list[float] | None = None
    score: float | None = None
    spec_accepted_tokens: int | None = None
    spec_verify_steps: int | None = None
    elapsed_s: float | None = None  # wall time of the branch's last engine request

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class MethodResult:
    """The merged outcome of one request."""

    method: str
    answer: str | None
    text: str
    votes: dict[str, float]
    branches: list[Branch]
    timings_s: dict[str, float] = field(default_factory=dict)
    search_steps: int | None = None
    partial: bool = False  # no branch finished in time: the answer comes from partial text
    degraded: str | None = None  # why the merge fell back, e.g. to a plain vote when scoring failed

    @property
    def num_tokens(self) -> int:
        return sum(b.num_tokens for b in self.branches)


Method = Callable[[MethodContext, str], Awaitable[MethodResult]]


def to_branch(completion: Completion, prefix: str = "") -> Branch:
    text = prefix + completion.text
    return Branch(text=text, answer=extract_answer(text), num_tokens=completion.num_tokens,
                  finish_reason=completion.finish_reason, replica=completion.replica,
                  spec_accepted_tokens=completion.spec_accepted_tokens,
                  spec_verify_steps=completion.spec_verify_steps, elapsed_s=completion.elapsed_s)


def speculation_summary(branches: list[Branch]) -> dict[str, float] | None:
    """Draft tokens accepted per verification step over all branches (None without
    speculation): vLLM's per-request counters, summed."""
    steps = sum(b.spec_verify_steps or 0 for b in branches)
    if not steps:
        return None
    accepted = sum(b.spec_accepted_tokens or 0 for b in branches)
    return {"accepted_tokens": accepted, "verify_steps": steps, "accepted_per_step": accepted / steps}


async def generate_many(ctx: MethodContext, prompts: list[str], stop_at: float | None,
                        stop: list[str] | None = None) -> list[Completion | None]:
    """One engine request per prompt, all at once. At ``stop_at`` they stop with partial
    text; any still unanswered a moment later are cancelled (their engine requests are
    aborted) and come back as None, as do failed ones (counted in ``ctx.stats``).

    Raises:
        Exception: the first replica error, when every request failed.
    """
    tasks = [asyncio.create_task(ctx.generator.generate(
        prompt, max_tokens=ctx.max_tokens, temperature=ctx.temperature, stop=stop,
        add_special_tokens=ctx.add_special_tokens, deadline_s=stop_at)) for prompt in prompts]
    timeout = None if stop_at is None else max(0.0, stop_at + STOP_GRACE_S - time.time())
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    for task in pending:
        task.cancel()
    ctx.stats.cancelled += len(pending)
    results: list[Completion | None] = []
    errors = []
    for task in tasks:
        if task in done and task.exception() is None:
            results.append(task.result())
        else:
            if task in done:
                errors.append(task.exception())
            results.append(None)
    ctx.stats.failed += len(errors)
    if errors and len(errors) == len(tasks):
        raise errors[0]
    return results


async def _run_wave(ctx: MethodContext, prompt: str, count: int, stop_at: float | None) -> list[Branch]:
    branches = [to_branch(c) for c in await generate_many(ctx, [prompt] * count, stop_at) if c is not None]
    for branch in branches:
        if branch.finish_reason == DEADLINE:
            ctx.stats.stopped += 1
        else:
            ctx.stats.finished += 1
    return branches


async def sample_branches(ctx: MethodContext, prompt: str, count: int,
                          scored: bool = False) -> tuple[list[Branch], float]:
    """``count`` independent full solutions, each its own engine request; returns the
    branches that answered (finished or stopped at the deadline) and the wall time spent.

    Generation ends by :meth:`MethodContext.generation_deadline`. With ``ctx.early_stop`` the
    branches run in windows, and no further window starts once the vote is settled or when
    the last window's duration no longer fits before the deadline.
    """
    started = time.perf_counter()
    stop_at = ctx.generation_deadline(scored)
    if ctx.early_stop is None:
        return await _run_wave(ctx, prompt, count, stop_at), time.perf_counter() - started
    branches: list[Branch] = []
    launched, wave_s = 0, 0.0
    for size in wave_sizes(count, ctx.early_stop.window):
        if branches and stop_at is not None and time.time() + wave_s > stop_at:
            ctx.stats.not_started += count - launched
            break
        wave_started = time.perf_counter()
        branches += await _run_wave(ctx, prompt, size, stop_at)
        wave_s = time.perf_counter() - wave_started
        launched += size
        answers = [normalize_answer(b.answer) if b.answer is not None else None
                   for b in branches if b.finish_reason != DEADLINE]
        if launched < count and ctx.early_stop.settled(answers, remaining=count - launched):
            ctx.stats.early_stopped += count - launched
            break
    return branches, time.perf_counter() - started


def mergeable(branches: list[Branch]) -> tuple[list[Branch], bool]:
    """The branches a vote should use: the finished ones, or when none finished the partial
    ones (second value True)."""
    finished = [b for b in branches if b.finish_reason != DEADLINE]
    return (finished, False) if finished else (list(branches), True)


async def score_branches(ctx: MethodContext, method: str, prompt: str, branches: list[Branch]) -> float:
    """Fill each branch's step scores and aggregate score; returns the wall time spent."""
    scorer = ctx.require_scorer(method)
    started = time.perf_counter()
    rows = await scorer.score(prompt, [b.text for b in branches])
    for branch, row in zip(branches, rows):
        branch.step_scores = row
        branch.score = aggregate_score(row, ctx.aggregate)
    return time.perf_counter() - started
