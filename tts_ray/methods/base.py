"""What every TTS method takes and returns, shared helpers, and the aggregation of step scores."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tts_ray.engines.base import Completion, Generator, StepScorer
from tts_ray.grading import extract_answer, is_equivalent

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

    @property
    def num_tokens(self) -> int:
        return sum(b.num_tokens for b in self.branches)


Method = Callable[[MethodContext, str], Awaitable[MethodResult]]


def to_branch(completion: Completion, prefix: str = "") -> Branch:
    text = prefix + completion.text
    return Branch(text=text, answer=extract_answer(text), num_tokens=completion.num_tokens,
                  finish_reason=completion.finish_reason, replica=completion.replica,
                  spec_accepted_tokens=completion.spec_accepted_tokens,
                  spec_verify_steps=completion.spec_verify_steps)


def speculation_summary(branches: list[Branch]) -> dict[str, float] | None:
    """Draft tokens accepted per verification step over all branches (None without
    speculation): vLLM's per-request counters, summed."""
    steps = sum(b.spec_verify_steps or 0 for b in branches)
    if not steps:
        return None
    accepted = sum(b.spec_accepted_tokens or 0 for b in branches)
    return {"accepted_tokens": accepted, "verify_steps": steps, "accepted_per_step": accepted / steps}


async def sample_branches(ctx: MethodContext, prompt: str, count: int) -> tuple[list[Branch], float]:
    """``count`` independent full solutions, each its own engine request; returns the
    branches and the wall time spent."""
    started = time.perf_counter()
    completions = await asyncio.gather(*[
        ctx.generator.generate(prompt, max_tokens=ctx.max_tokens, temperature=ctx.temperature,
                               add_special_tokens=ctx.add_special_tokens)
        for _ in range(count)
    ])
    return [to_branch(c) for c in completions], time.perf_counter() - started


async def score_branches(ctx: MethodContext, method: str, prompt: str, branches: list[Branch]) -> float:
    """Fill each branch's step scores and aggregate score; returns the wall time spent."""
    scorer = ctx.require_scorer(method)
    started = time.perf_counter()
    rows = await scorer.score(prompt, [b.text for b in branches])
    for branch, row in zip(branches, rows):
        branch.step_scores = row
        branch.score = aggregate_score(row, ctx.aggregate)
    return time.perf_counter() - started
