"""Step-level search guided by PRM scores: beam search and DVTS (as in search-and-learn).

A *step* is generated as its own request that stops at the step separator, so every step
is scored before the search decides which prefixes to extend. Both methods keep
``num_branches`` candidates per iteration:

- **beam search**: one pool; the best ``num_branches // beam_width`` unfinished prefixes
  survive and each is extended ``beam_width`` times;
- **DVTS** (diverse verifier tree search): ``num_branches // beam_width`` independent
  subtrees of ``beam_width`` candidates; each keeps its single best prefix, which keeps the
  search diverse.

A candidate finishes when its step ends with EOS or the length limit, or holds a boxed
answer. Under a deadline no step starts unless the last step's duration still fits; the
unfinished prefixes then join the vote as partial branches when nothing finished. Beam search answers with the best-scoring finished solution; DVTS with a
PRM-weighted vote over its subtrees' solutions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tts_ray.grading import extract_answer
from tts_ray.methods.base import (
    DEADLINE,
    Branch,
    MethodContext,
    MethodResult,
    aggregate_score,
    generate_many,
    mergeable,
)
from tts_ray.methods.voting import best_of_n, weighted_vote


@dataclass
class _Candidate:
    prefix: str
    num_tokens: int = 0
    replica: str | None = None
    spec_accepted_tokens: int | None = None
    spec_verify_steps: int | None = None


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


async def _search(ctx: MethodContext, prompt: str, method: str, num_groups: int,
                  keep_per_group: int, expand: int) -> MethodResult:
    scorer = ctx.require_scorer(method)
    separator = ctx.step_separator
    groups = [[_Candidate("") for _ in range(keep_per_group * expand)] for _ in range(num_groups)]
    finished: list[tuple[int, Branch]] = []
    frontier: list[Branch] = []  # scored unfinished prefixes of the last step
    timings = {"generate": 0.0, "score": 0.0}
    steps, step_s = 0, 0.0
    stop_at = ctx.generation_deadline(scored=True)
    while any(groups) and steps < ctx.max_search_steps:
        if stop_at is not None and steps and time.time() + step_s > ctx.deadline_s - ctx.merge_margin_s:
            break
        step_started = time.perf_counter()
        steps += 1
        flat = [(g, c) for g, group in enumerate(groups) for c in group]
        started = time.perf_counter()
        completions = await generate_many(ctx, [prompt + c.prefix for _, c in flat], stop_at, stop=[separator])
        timings["generate"] += time.perf_counter() - started
        extended = []
        for (g, parent), completion in zip(flat, completions):
            if completion is None:
                continue
            ended_step = completion.stop_reason == separator
            text = parent.prefix + completion.text + (separator if ended_step else "")
            stopped = completion.finish_reason == DEADLINE
            done = not stopped and (not ended_step or extract_answer(text) is not None)
            extended.append((g, _Candidate(
                text, parent.num_tokens + completion.num_tokens, completion.replica,
                _add(parent.spec_accepted_tokens, completion.spec_accepted_tokens),
                _add(parent.spec_verify_steps, completion.spec_verify_steps)), done,
                DEADLINE if stopped else completion.finish_reason))
        if not extended:
            break
        started = time.perf_counter()
        rows = await scorer.score(prompt, [c.prefix for _, c, _, _ in extended])
        timings["score"] += time.perf_counter() - started
        by_group: dict[int, list] = {g: [] for g in range(num_groups)}
        frontier = []
        for (g, cand, done, finish), row in zip(extended, rows):
            score = aggregate_score(row, ctx.aggregate)
            last = steps == ctx.max_search_steps
            if done or last or finish == DEADLINE:
                text = cand.prefix.rstrip(separator) if done else cand.prefix
                branch = Branch(text=text, answer=extract_answer(text), num_tokens=cand.num_tokens,
                                finish_reason=finish if done or finish == DEADLINE else "length",
                                replica=cand.replica, step_scores=row, score=score,
                                spec_accepted_tokens=cand.spec_accepted_tokens,
                                spec_verify_steps=cand.spec_verify_steps)
                finished.append((g, branch))
            else:
                by_group[g].append((score, cand))
                frontier.append(Branch(text=cand.prefix, answer=extract_answer(cand.prefix),
                                       num_tokens=cand.num_tokens, finish_reason=DEADLINE,
                                       replica=cand.replica, step_scores=row, score=score,
                                       spec_accepted_tokens=cand.spec_accepted_tokens,
                                       spec_verify_steps=cand.spec_verify_steps))
        groups = []
        for g in range(num_groups):
            survivors = sorted(by_group[g], key=lambda sc: -sc[0])[:keep_per_group]
            groups.append([_Candidate(c.prefix, c.num_tokens, c.replica, c.spec_accepted_tokens,
                                      c.spec_verify_steps)
                           for _, c in survivors for _ in range(expand)])
        step_s = time.perf_counter() - step_started
    started = time.perf_counter()
    # The search ended early (deadline): unfinished prefixes count as partial branches.
    branches = [b for _, b in finished] + (frontier if any(groups) else [])
    for branch in branches:
        if branch.finish_reason == DEADLINE:
            ctx.stats.stopped += 1
        else:
            ctx.stats.finished += 1
    pool, partial = mergeable(branches)
    if not pool:
        return MethodResult(method=method, answer=None, text="", votes={}, branches=[],
                            timings_s=timings, search_steps=steps, partial=True)
    if method == "dvts":
        vote = weighted_vote([b.answer for b in pool], [b.score or 0.0 for b in pool], ctx.equivalent)
    else:
        vote = best_of_n([b.answer for b in pool], [b.score or 0.0 for b in pool])
    text = pool[vote.winner_index].text if vote.winner_index is not None else pool[0].text
    timings["merge"] = time.perf_counter() - started
    return MethodResult(method=method, answer=vote.answer, text=text, votes=vote.votes, branches=branches,
                        timings_s=timings, search_steps=steps, partial=partial)


async def beam_search(ctx: MethodContext, prompt: str) -> MethodResult:
    """Step-level beam search over ``num_branches`` candidates of width ``beam_width``."""
    width = min(ctx.beam_width, ctx.num_branches)
    return await _search(ctx, prompt, "beam_search", num_groups=1,
                         keep_per_group=max(1, ctx.num_branches // width), expand=width)


async def dvts(ctx: MethodContext, prompt: str) -> MethodResult:
    """Diverse verifier tree search: ``num_branches // beam_width`` independent subtrees."""
    width = min(ctx.beam_width, ctx.num_branches)
    return await _search(ctx, prompt, "dvts", num_groups=max(1, ctx.num_branches // width),
                         keep_per_group=1, expand=width)
