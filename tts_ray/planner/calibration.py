"""Accuracy calibration: expected accuracy of each (method, B) per model, and the spread of
branch lengths, measured once on a dataset by ``tts-ray calibrate`` and read by the planner.

The accuracy of a method at B branches is estimated from S >= B samples per problem by
averaging over random B-subsets, so one sampling pass gives the whole curve B = 1..S. The same
subsets, with every branch longer than a token limit T left out of the vote (the deadline cut
it), give the accuracy as a deadline leaves it: per problem, so that a problem whose every
solution is long is cut in every branch at once (on the testbed nearly all the spread of
lengths is between problems, not within one).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tts_ray.planner.profile import JsonFile

SUBSET_DRAWS = 64  # random B-subsets per problem and B: enough for a smooth curve
TOKEN_LIMIT_QUANTILES = 16  # token limits of the deadline table: this many quantiles of the lengths
TOKEN_LIMIT_DRAWS = 16  # B-subsets per problem and B for the deadline table (x every limit)


class TokenLimitedAccuracy(BaseModel):
    """Accuracy when every branch longer than a token limit is cut before it answers."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[int] = Field(..., min_length=1, description="Token limits, ascending.")
    accuracy: dict[str, list[list[float]]] = Field(
        ..., description="Per method, [B - 1][j]: accuracy at B branches when the branches longer "
                         "than tokens[j] are cut and the rest vote (none left: wrong).")

    @model_validator(mode="after")
    def _check_shape(self) -> TokenLimitedAccuracy:
        if any(t <= 0 for t in self.tokens) or any(a >= b for a, b in zip(self.tokens, self.tokens[1:])):
            raise ValueError("tokens must be positive and strictly ascending")
        for method, rows in self.accuracy.items():
            if not rows or any(len(row) != len(self.tokens) for row in rows):
                raise ValueError(f"accuracy[{method!r}] needs one value per token limit in every row")
        return self

    def at(self, method: str, branches: int, tokens: float) -> float | None:
        """Interpolated accuracy of ``method`` with ``branches`` within ``tokens`` (linear
        between limits, 0 at 0 tokens, the last limit's beyond it); None for a method not in
        the table."""
        rows = self.accuracy.get(method)
        if not rows:
            return None
        row = rows[min(branches, len(rows)) - 1]
        if tokens >= self.tokens[-1]:
            return row[-1]
        j = bisect.bisect_right(self.tokens, tokens)
        lo_t, lo_a = (0.0, 0.0) if j == 0 else (self.tokens[j - 1], row[j - 1])
        hi_t, hi_a = self.tokens[j], row[j]
        return lo_a + (hi_a - lo_a) * (max(tokens, 0.0) - lo_t) / (hi_t - lo_t)


class ModelCalibration(BaseModel):
    """Calibration of one model (tier)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: dict[str, list[float]] = Field(
        ..., description="Per method, expected accuracy at B = 1, 2, ... (index B-1).")
    lengths: list[int] = Field(..., min_length=1,
                               description="Sorted sample of branch lengths in tokens.")
    max_tokens: int = Field(..., ge=1, description="max_tokens the samples were drawn with.")
    accuracy_by_tokens: TokenLimitedAccuracy | None = Field(
        None, description="Accuracy per (method, B) when a deadline cuts the branches longer than "
                          "a token limit, measured per problem; None: the planner assumes "
                          "branches finish independently (accuracy_by_deadline).")

    def expected_accuracy(self, method: str, branches: int) -> float | None:
        """Expected accuracy of ``method`` with ``branches``; beyond the calibrated range the
        last value (curves flatten); None for an uncalibrated method."""
        curve = self.accuracy.get(method)
        if not curve:
            return None
        return curve[min(branches, len(curve)) - 1]

    def expected_max_length(self, branches: int, max_tokens: int) -> float:
        """E[longest of ``branches`` branch lengths], lengths capped at ``max_tokens``: the
        number of decode steps a request waits for. Uses P(max <= x) = F(x)^B on the sample."""
        n = len(self.lengths)
        capped = [min(x, max_tokens) for x in self.lengths]
        expected, previous = 0.0, 0.0
        for i, x in enumerate(capped, start=1):
            cdf = (i / n) ** branches
            expected += x * (cdf - previous)
            previous = cdf
        return expected


    def finish_probability(self, tokens: float, max_tokens: int) -> float:
        """P(one branch ends within ``tokens`` decode tokens): the share of sampled lengths,
        capped at ``max_tokens`` (a branch stops there), that are <= ``tokens``."""
        if tokens >= max_tokens:
            return 1.0
        if tokens <= 0:
            return 0.0
        return bisect.bisect_right(self.lengths, tokens) / len(self.lengths)

    def accuracy_within(self, method: str, branches: int, tokens: float, max_tokens: int) -> float | None:
        """Expected accuracy of ``method`` with ``branches`` when the deadline leaves each branch
        ``tokens`` decode tokens (and the request stops branches at ``max_tokens``): from the
        per-problem table when there is one, else from :meth:`accuracy_by_deadline` with
        independent branches. None for an uncalibrated method."""
        limit = min(tokens, max_tokens)
        table = self.accuracy_by_tokens
        if table is not None and method in table.accuracy:
            return table.at(method, branches, limit)
        return self.accuracy_by_deadline(method, branches, self.finish_probability(tokens, max_tokens))

    def accuracy_by_deadline(self, method: str, branches: int, finish_probability: float) -> float | None:
        """Expected accuracy of ``method`` with ``branches`` when each branch finishes before
        the deadline with ``finish_probability`` (independently) and the vote uses the
        finished ones: E[accuracy(K)], K ~ Binomial(B, p), with no answer (0) when K = 0.
        None for an uncalibrated method."""
        if self.expected_accuracy(method, 1) is None:
            return None
        p = min(max(finish_probability, 0.0), 1.0)
        if p == 1.0:
            return self.expected_accuracy(method, branches)
        expected, pmf = 0.0, (1 - p) ** branches  # P(K = 0)
        for k in range(1, branches + 1):
            # P(K = k) from P(K = k - 1): the binomial recurrence, no large factorials
            pmf = pmf * (branches - k + 1) / k * p / (1 - p) if p > 0 else 0.0
            expected += pmf * self.expected_accuracy(method, k)
        return expected


class Calibration(JsonFile):
    """What ``tts-ray calibrate`` measured."""

    dataset: str = Field(..., description="Dataset the accuracy was measured on.")
    problems: int = Field(..., ge=1, description="Problems used.")
    samples_per_problem: int = Field(..., ge=1, description="Samples drawn per problem (largest B).")
    temperature: float = Field(..., ge=0, description="Sampling temperature.")
    models: dict[str, ModelCalibration] = Field(..., description="Per model id.")
    created: str = Field("", description="ISO time of the measurement.")
    command: str = Field("", description="The command that produced it.")


def pick_answer(answers: Sequence[str | None], weights: Sequence[float], how: str) -> str | None:
    """The answer a method (``majority``, ``weighted_majority``, ``best_of_n``) picks from
    normalized answers (ties: first seen)."""
    if how == "best_of_n":
        best = max(range(len(answers)), key=lambda i: (answers[i] is not None, weights[i], -i))
        return answers[best]
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + (weight if how == "weighted_majority" else 1.0)
    if not totals:
        return None
    return max(totals, key=lambda a: (totals[a], -list(totals).index(a)))


def accuracy_curves(problems: Sequence[dict], max_branches: int | None = None,
                    seed: int = 0) -> dict[str, list[float]]:
    """Expected accuracy per method at B = 1..S from S samples per problem.

    Each problem is ``{"answers": [normalized answer or None] * S, "correct": [bool] * S,
    "scores": [float] * S or None}``; ``correct[i]`` says whether answer i is right.
    Methods: single (B = 1 only), majority, and with scores weighted_majority and best_of_n.

    Raises:
        ValueError: no problems, or problems with different sample counts.
    """
    if not problems:
        raise ValueError("no problems to calibrate on")
    sizes = {len(p["answers"]) for p in problems}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(sizes)}")
    samples = sizes.pop()
    top = min(samples, max_branches or samples)
    scored = all(p.get("scores") is not None for p in problems)
    methods = ["majority"] + (["weighted_majority", "best_of_n"] if scored else [])
    rng = random.Random(seed)
    curves: dict[str, list[float]] = {m: [] for m in methods}
    for branches in range(1, top + 1):
        draws = 1 if branches == samples else min(SUBSET_DRAWS, math.comb(samples, branches))
        hits = dict.fromkeys(methods, 0.0)
        for p in problems:
            right = {a for a, ok in zip(p["answers"], p["correct"]) if ok and a is not None}
            for _ in range(draws):
                idx = rng.sample(range(samples), branches)
                answers = [p["answers"][i] for i in idx]
                weights = [p["scores"][i] for i in idx] if scored else [1.0] * branches
                for m in methods:
                    hits[m] += pick_answer(answers, weights, m) in right
        for m in methods:
            curves[m].append(hits[m] / (draws * len(problems)))
    curves["single"] = [curves["majority"][0]]
    return curves


def token_limits(lengths: Sequence[int], max_tokens: int, quantiles: int = TOKEN_LIMIT_QUANTILES) -> list[int]:
    """The token limits of the deadline table: ``quantiles`` quantiles of the sampled lengths
    (distinct, ascending), and ``max_tokens`` (nothing cut) last."""
    ordered = sorted(min(x, max_tokens) for x in lengths)
    picks = {ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1) / quantiles))] for q in range(1, quantiles + 1)}
    return sorted(t for t in picks if 0 < t < max_tokens) + [max_tokens]


def accuracy_by_tokens(problems: Sequence[dict], max_tokens: int, max_branches: int | None = None,
                       draws: int = TOKEN_LIMIT_DRAWS, seed: int = 0) -> TokenLimitedAccuracy:
    """The deadline table from S samples per problem: problems as for :func:`accuracy_curves`,
    each with ``"lengths": [tokens] * S`` too. For every B and random B-subset of a problem's
    samples, each token limit T leaves the branches of length <= T to vote.

    Raises:
        ValueError: no problems, or problems with other sample counts or without lengths.
    """
    if not problems:
        raise ValueError("no problems to calibrate on")
    samples = len(problems[0]["answers"])
    if any(len(p["answers"]) != samples or len(p.get("lengths") or []) != samples for p in problems):
        raise ValueError(f"every problem needs {samples} samples, each with its length")
    top = min(samples, max_branches or samples)
    limits = token_limits([x for p in problems for x in p["lengths"]], max_tokens)
    scored = all(p.get("scores") is not None for p in problems)
    methods = ["majority"] + (["weighted_majority", "best_of_n"] if scored else [])
    rng = random.Random(seed)
    table: dict[str, list[list[float]]] = {m: [] for m in methods}
    for branches in range(1, top + 1):
        # every B-subset when there are at most ``draws`` of them, else ``draws`` random ones
        exact = math.comb(samples, branches) <= draws
        n = math.comb(samples, branches) if exact else draws
        hits = {m: [0.0] * len(limits) for m in methods}
        for p in problems:
            right = {a for a, ok in zip(p["answers"], p["correct"]) if ok and a is not None}
            subsets = (itertools.combinations(range(samples), branches) if exact
                       else (rng.sample(range(samples), branches) for _ in range(n)))
            for idx in subsets:
                for j, limit in enumerate(limits):
                    # a branch cut by the deadline has no answer to vote with
                    answers = [p["answers"][i] if p["lengths"][i] <= limit else None for i in idx]
                    if all(a is None for a in answers):
                        continue
                    weights = [p["scores"][i] for i in idx] if scored else [1.0] * branches
                    for m in methods:
                        hits[m][j] += pick_answer(answers, weights, m) in right
        for m in methods:
            table[m].append([round(h / (n * len(problems)), 5) for h in hits[m]])
    table["single"] = [table["majority"][0]]
    return TokenLimitedAccuracy(tokens=limits, accuracy=table)
