"""Parallel-sampling methods: single sample, majority vote, PRM-weighted vote, best-of-N.

Each votes over the branches that finished in time; when none did, over the partial ones
(the result is then marked partial and answers with ``finish_reason: "deadline"``).
"""

from __future__ import annotations

import time

from tts_ray.methods.base import (
    Branch,
    MethodContext,
    MethodResult,
    mergeable,
    sample_branches,
    score_branches,
)
from tts_ray.methods.voting import VoteResult, majority_vote, weighted_vote
from tts_ray.methods.voting import best_of_n as pick_best


def _result(method: str, vote: VoteResult, pool: list[Branch], branches: list[Branch], partial: bool,
            timings: dict[str, float]) -> MethodResult:
    text = pool[vote.winner_index].text if vote.winner_index is not None else (
        max(pool, key=lambda b: len(b.text)).text if pool else "")
    return MethodResult(method=method, answer=vote.answer, text=text, votes=vote.votes,
                        branches=branches, timings_s=timings, partial=partial)


async def _sample_and_vote(ctx: MethodContext, prompt: str, method: str, count: int,
                           scored: bool) -> MethodResult:
    branches, generate_s = await sample_branches(ctx, prompt, count, scored=scored)
    timings = {"generate": generate_s}
    pool, partial = mergeable(branches)
    degraded = None
    if scored and pool:
        try:
            timings["score"] = await score_branches(ctx, method, prompt, pool)
        except Exception as exc:  # noqa: BLE001 - any reward failure degrades, never fails, the answer
            # The reward deployment failed: the branches are still good for a plain vote.
            degraded = f"reward model unavailable ({type(exc).__name__}): plain majority vote"
            for branch in pool:
                branch.step_scores = branch.score = None
    started = time.perf_counter()
    answers = [b.answer for b in pool]
    if not pool:
        vote = VoteResult(answer=None)
    elif degraded is not None:
        vote = majority_vote(answers, ctx.equivalent)
    elif method == "weighted_majority":
        vote = weighted_vote(answers, [b.score or 0.0 for b in pool], ctx.equivalent)
    elif method == "best_of_n":
        vote = pick_best(answers, [b.score or 0.0 for b in pool])
    else:
        vote = majority_vote(answers, ctx.equivalent)
    timings["merge"] = time.perf_counter() - started
    result = _result(method, vote, pool, branches, partial, timings)
    result.degraded = degraded
    return result


async def single(ctx: MethodContext, prompt: str) -> MethodResult:
    """One branch, no scoring: the plain model."""
    return await _sample_and_vote(ctx, prompt, "single", 1, scored=False)


async def majority(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples; the most frequent (equivalence-merged) answer wins."""
    return await _sample_and_vote(ctx, prompt, "majority", ctx.num_branches, scored=False)


async def weighted_majority(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples scored by the PRM; each answer's weight is the sum of its
    branches' aggregated scores."""
    ctx.require_scorer("weighted_majority")
    return await _sample_and_vote(ctx, prompt, "weighted_majority", ctx.num_branches, scored=True)


async def best_of_n(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples scored by the PRM; the highest-scoring branch wins."""
    ctx.require_scorer("best_of_n")
    return await _sample_and_vote(ctx, prompt, "best_of_n", ctx.num_branches, scored=True)
