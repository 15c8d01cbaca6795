"""Parallel-sampling methods: single sample, majority vote, PRM-weighted vote, best-of-N."""

from __future__ import annotations

import time

from tts_ray.methods.base import MethodContext, MethodResult, sample_branches, score_branches
from tts_ray.methods.voting import VoteResult, best_of_n as pick_best, majority_vote, weighted_vote


def _result(method: str, vote: VoteResult, branches, timings) -> MethodResult:
    started = time.perf_counter()
    text = branches[vote.winner_index].text if vote.winner_index is not None else branches[0].text
    timings["merge"] = timings.get("merge", 0.0) + time.perf_counter() - started
    return MethodResult(method=method, answer=vote.answer, text=text, votes=vote.votes,
                        branches=branches, timings_s=timings)


async def single(ctx: MethodContext, prompt: str) -> MethodResult:
    """One branch, no scoring: the plain model."""
    branches, generate_s = await sample_branches(ctx, prompt, 1)
    vote = majority_vote([branches[0].answer], ctx.equivalent)
    return _result("single", vote, branches, {"generate": generate_s})


async def majority(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples; the most frequent (equivalence-merged) answer wins."""
    branches, generate_s = await sample_branches(ctx, prompt, ctx.num_branches)
    started = time.perf_counter()
    vote = majority_vote([b.answer for b in branches], ctx.equivalent)
    return _result("majority", vote, branches, {"generate": generate_s,
                                                 "merge": time.perf_counter() - started})


async def weighted_majority(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples scored by the PRM; each answer's weight is the sum of its
    branches' aggregated scores."""
    branches, generate_s = await sample_branches(ctx, prompt, ctx.num_branches)
    score_s = await score_branches(ctx, "weighted_majority", prompt, branches)
    started = time.perf_counter()
    vote = weighted_vote([b.answer for b in branches], [b.score or 0.0 for b in branches], ctx.equivalent)
    return _result("weighted_majority", vote, branches, {"generate": generate_s, "score": score_s,
                                                          "merge": time.perf_counter() - started})


async def best_of_n(ctx: MethodContext, prompt: str) -> MethodResult:
    """``num_branches`` samples scored by the PRM; the highest-scoring branch wins."""
    branches, generate_s = await sample_branches(ctx, prompt, ctx.num_branches)
    score_s = await score_branches(ctx, "best_of_n", prompt, branches)
    started = time.perf_counter()
    vote = pick_best([b.answer for b in branches], [b.score or 0.0 for b in branches])
    return _result("best_of_n", vote, branches, {"generate": generate_s, "score": score_s,
                                                  "merge": time.perf_counter() - started})
