"""Accuracy calibration: expected accuracy of each (method, B) per model, and the spread of
branch lengths, measured once on a dataset by ``tts-ray calibrate`` and read by the planner.

The accuracy of a method at B branches is estimated from S >= B samples per problem by
averaging over random B-subsets, so one sampling pass gives the whole curve B = 1..S.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from tts_ray.planner.profile import JsonFile

SUBSET_DRAWS = 64  # random B-subsets per problem and B: enough for a smooth curve


class ModelCalibration(BaseModel):
    """Calibration of one model (tier)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: dict[str, list[float]] = Field(
        ..., description="Per method, expected accuracy at B = 1, 2, ... (index B-1).")
    lengths: list[int] = Field(..., min_length=1,
                               description="Sorted sample of branch lengths in tokens.")
    max_tokens: int = Field(..., ge=1, description="max_tokens the samples were drawn with.")

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
