"""Evaluation statistics: Wilson intervals, percentiles, and the summary of one evaluation run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

# Two-sided 95%: the normal quantile used by the Wilson score interval.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default).

    Returns (0.0, 1.0) for zero trials: nothing is known.

    Raises:
        ValueError: negative counts or ``successes > trials``.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_in_service(latencies_s: Sequence[float], wall_s: float) -> float:
    """Time-averaged number of requests inside the service over a run of ``wall_s`` seconds,
    by Little's law: the sum of the requests' times in the service over the wall time. A
    benchmark row's latencies are each problem's last attempt, so the earlier attempts that
    were answered 429 (each far shorter than an answered one) are left out.

    Raises:
        ValueError: ``wall_s`` not positive, or a negative latency.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be > 0, got {wall_s}")
    if any(latency < 0 for latency in latencies_s):
        raise ValueError("latencies must be >= 0")
    return sum(latencies_s) / wall_s


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics
    (numpy's default); None for no values.

    Raises:
        ValueError: ``q`` outside [0, 100].
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class ProblemResult(BaseModel):
    """One problem's outcome (a line of ``results.jsonl``)."""

    id: str = Field(..., description="The problem's unique_id.")
    level: int | None = Field(None, description="Difficulty level, where known.")
    answer: str | None = Field(None, description="The service's merged final answer (None: none given).")
    gold: str = Field(..., description="The dataset's answer.")
    correct: bool = Field(..., description="answer is_equivalent to gold; False on any error.")
    latency_s: float = Field(..., ge=0, description="Client-side wall time of the request (the last attempt's).")
    num_branches: int | None = Field(None, description="Branches the service ran (tts.num_branches).")
    tokens: int | None = Field(None, description="Completion tokens over all branches (usage).")
    votes: dict[str, float] | None = Field(None, description="Weight per distinct answer (tts.votes).")
    method: str | None = Field(None, description="Method the service ran (tts.method).")
    server_total_s: float | None = Field(None, description="Server-side tts.timings_s.total.")
    spec_accepted_per_step: float | None = Field(
        None, description="Draft tokens accepted per verification step (tts.speculation).")
    plan: dict[str, Any] | None = Field(
        None, description="The service's plan (tts.plan: pool, method, branches, k, predicted latency).")
    branch_answers: list[str | None] | None = Field(
        None, description="Each branch's extracted answer in the service's order (tts.branches).")
    branch_tokens: list[int] | None = Field(
        None, description="Each branch's generated tokens, same order as branch_answers.")
    finish_reason: str | None = Field(
        None, description="Choice 0's finish_reason: 'deadline' when no branch finished in time "
                          "and the best partial answer came back.")
    seed_applied: bool | None = Field(
        None, description="tts.seed_applied: whether the service sampled with the request's seed "
                          "(None: no seed sent, or no tts block).")
    status: int | None = Field(None, description="HTTP status; None when no response arrived.")
    attempts: int = Field(1, ge=1, description="Requests sent for this problem (> 1: retried after 429/503).")
    retry_wait_s: float = Field(0.0, ge=0, description="Seconds waited on Retry-After before the last attempt.")
    error: str | None = Field(None, description="Error message for non-200 answers or transport errors.")


class EvalSummary(BaseModel):
    """The summary of one evaluation run (``summary.json``; ``summary.csv`` flattens it)."""

    dataset: str = Field(..., description="Dataset name or path.")
    dataset_source: str = Field(..., description="Where the problems came from.")
    method: str | None = Field(None, description="Requested tts.method (None: the router's default).")
    branches: int | str | None = Field(None, description="Requested tts.branches (an int or 'auto').")
    latency_budget_s: float | None = Field(None, description="Requested tts.latency_budget_s.")
    concurrency: int = Field(..., description="Requests in flight at once.")
    num_problems: int = Field(..., description="Problems sent.")
    num_correct: int = Field(..., description="Problems answered correctly.")
    num_errors: int = Field(..., description="Problems without a 200 answer (counted as wrong).")
    num_no_answer: int = Field(..., description="200 answers without an extractable final answer.")
    accuracy: float = Field(..., description="num_correct / num_problems (errors count as wrong).")
    accuracy_ci95_low: float = Field(..., description="Wilson 95% interval, lower end.")
    accuracy_ci95_high: float = Field(..., description="Wilson 95% interval, upper end.")
    latency_mean_s: float | None = Field(None, description="Mean request latency (all requests).")
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    tokens_per_problem: float | None = Field(None, description="Mean completion tokens over 200 answers.")
    branches_per_problem: float | None = Field(None, description="Mean branches run over 200 answers.")
    requests_per_s: float = Field(..., description="num_problems / wall_s.")
    wall_s: float = Field(..., description="Wall time of the whole run.")
    url: str | None = Field(None, description="Service base URL evaluated.")


def summarize(results: Sequence[ProblemResult], *, wall_s: float, dataset: str, dataset_source: str,
              concurrency: int, method: str | None = None, branches: int | str | None = None,
              latency_budget_s: float | None = None, url: str | None = None) -> EvalSummary:
    """Aggregate per-problem results into an :class:`EvalSummary`.

    Raises:
        ValueError: ``wall_s`` is not positive.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    n = len(results)
    correct = sum(r.correct for r in results)
    ok = [r for r in results if r.status == 200]
    low, high = wilson_interval(correct, n)
    latencies = [r.latency_s for r in results]
    tokens = [r.tokens for r in ok if r.tokens is not None]
    branch_counts = [r.num_branches for r in ok if r.num_branches is not None]
    return EvalSummary(
        dataset=dataset, dataset_source=dataset_source, method=method, branches=branches,
        latency_budget_s=latency_budget_s, concurrency=concurrency, num_problems=n, num_correct=correct,
        num_errors=n - len(ok), num_no_answer=sum(r.answer is None for r in ok),
        accuracy=correct / n if n else 0.0, accuracy_ci95_low=low, accuracy_ci95_high=high,
        latency_mean_s=sum(latencies) / n if n else None,
        latency_p50_s=percentile(latencies, 50), latency_p90_s=percentile(latencies, 90),
        latency_p99_s=percentile(latencies, 99),
        tokens_per_problem=sum(tokens) / len(tokens) if tokens else None,
        branches_per_problem=sum(branch_counts) / len(branch_counts) if branch_counts else None,
        requests_per_s=n / wall_s, wall_s=wall_s, url=url,
    )
