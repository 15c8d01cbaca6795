"""Early stopping of sampling once the vote is settled, and its offline simulation on recorded
samples (pure logic, used by the sampling methods and by ``tts-ray tune-early-stop``).

Two criteria, checked after each window of branches:

- ``beta`` (Adaptive-Consistency): the leading answer's share beats the runner-up's with
  posterior probability >= confidence (Beta posterior, uniform prior). It asks whether the
  leader would win with *infinitely* many samples, so it rarely fires when answers spread.
- ``final_vote``: the vote over all B branches the request asked for would still elect the
  current leader with probability >= confidence, the remaining branches drawn from the
  posterior predictive (a Polya urn that also brings answers not seen yet). It
  asks what matters for the answer returned: would running the rest change it?
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tts_ray.planner.calibration import pick_answer

CRITERIA = ("beta", "final_vote")
# Posterior predictive of final_vote (a Polya urn): an answer seen c times is drawn with weight
# c + PRIOR_PER_ANSWER, one not seen yet with weight NEW_ANSWER_PRIOR.
PRIOR_PER_ANSWER = 0.5
NEW_ANSWER_PRIOR = 1.0
PREDICTIVE_DRAWS = 400  # Monte Carlo draws of the remaining branches (seeded by the state)


def prob_leader_ahead(leader_votes: int, runner_up_votes: int) -> float:
    """P(p1 > p2) where the two leading answers' shares have the Beta(c1 + 1, c2 + 1) posterior
    (uniform prior), i.e. P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1)."""
    a, b = leader_votes + 1, runner_up_votes + 1
    n = a + b - 1
    return sum(math.comb(n, i) for i in range(a)) / 2 ** n


def prob_final_vote_unchanged(counts: Sequence[int], remaining: int, draws: int = PREDICTIVE_DRAWS) -> float:
    """P(the leader of ``counts`` (votes per answer, leader first) still wins strictly after
    ``remaining`` more branches), the remaining drawn from the posterior predictive; a tie
    counts as a change. Deterministic for a given state (the sampler is seeded by it)."""
    return _prob_final_vote_unchanged(tuple(counts), remaining, draws)


@functools.lru_cache(maxsize=4096)
def _prob_final_vote_unchanged(counts: tuple[int, ...], remaining: int, draws: int) -> float:
    if not counts:
        return 0.0
    rival = counts[1] if len(counts) > 1 else 0
    if counts[0] - rival > remaining:
        return 1.0  # no continuation can change the winner
    if remaining <= 0:
        return 0.0  # a tie now
    rng = random.Random(hash((counts, remaining)))
    kept = 0
    for _ in range(draws):
        # The Polya urn of the Dirichlet-process posterior: each remaining branch repeats an
        # answer with weight (its votes + PRIOR_PER_ANSWER) or brings a new one with weight
        # NEW_ANSWER_PRIOR; every draw joins the urn.
        final = list(counts)
        weights = [c + PRIOR_PER_ANSWER for c in counts]
        total = sum(weights) + NEW_ANSWER_PRIOR
        for _ in range(remaining):
            pick = rng.random() * total
            i = 0
            while i < len(weights) and pick >= weights[i]:
                pick -= weights[i]
                i += 1
            if i == len(weights):
                final.append(0)
                weights.append(PRIOR_PER_ANSWER)
                total += PRIOR_PER_ANSWER
            final[i] += 1
            weights[i] += 1
            total += 1
        if final[0] > max(final[1:], default=0):
            kept += 1
    return kept / draws


def wave_sizes(count: int, window: int | None) -> list[int]:
    """The branches an early-stopping request of ``count`` branches launches in each wave, in
    order: ``window`` at a time, the rest last; one wave of all ``count`` without a window.
    The sampling methods run these waves, and the planner and the keeper predict and book them."""
    if window is None or window >= count:
        return [count]
    return [window] * (count // window) + ([count % window] if count % window else [])


@dataclass(frozen=True)
class EarlyStopRule:
    """Sample in windows of ``window`` branches; after each window stop once the vote is
    settled at ``confidence`` by ``criterion`` (one of :data:`CRITERIA`).

    With ``beta``, window 4 and confidence 0.95, four agreeing answers stop (P = 0.969) and 3
    to 1 goes on.
    """

    window: int = 4
    confidence: float = 0.95
    criterion: str = "beta"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence must be in (0.5, 1)")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}")

    def settled(self, answers: Sequence[str | None], remaining: int = 0) -> bool:
        """Whether the vote over ``answers`` (normalized; None = no answer) is settled, with
        ``remaining`` branches of the request not run yet."""
        counts = [c for _, c in Counter(a for a in answers if a is not None).most_common()]
        if not counts:
            return False
        if self.criterion == "final_vote":
            return prob_final_vote_unchanged(counts, remaining) >= self.confidence
        runner_up = counts[1] if len(counts) > 1 else 0
        return prob_leader_ahead(counts[0], runner_up) >= self.confidence


def simulate(problems: Sequence[dict[str, Any]], rule: EarlyStopRule, branches: int,
             orders: int = 8, seed: int = 0) -> dict[str, float]:
    """Run ``rule`` offline on recorded samples: for each problem and each of ``orders`` random
    orders of its samples, majority over the first ``branches`` with and without early
    stopping (windows as the service runs them).

    Each problem is ``{"answers": [normalized or None] * S, "correct": [bool] * S, "lengths":
    [tokens] * S}`` with S >= ``branches``. Returns accuracy with and without stopping,
    branches and tokens used (tokens when lengths are given) and the saving.

    Raises:
        ValueError: a problem with fewer samples than ``branches``.
    """
    rng = random.Random(seed)
    full_hits = early_hits = full_tokens = early_tokens = 0.0
    used_branches = runs = 0
    for p in problems:
        if len(p["answers"]) < branches:
            raise ValueError(f"a problem has {len(p['answers'])} samples, fewer than {branches}")
        right = {a for a, ok in zip(p["answers"], p["correct"]) if ok and a is not None}
        lengths = p.get("lengths") or [1] * len(p["answers"])
        for _ in range(orders):
            idx = rng.sample(range(len(p["answers"])), branches)
            answers = [p["answers"][i] for i in idx]
            full_hits += pick_answer(answers, [1.0] * branches, "majority") in right
            full_tokens += sum(lengths[i] for i in idx)
            used = branches
            for end in range(rule.window, branches, rule.window):
                if rule.settled(answers[:end], remaining=branches - end):
                    used = end
                    break
            early_hits += pick_answer(answers[:used], [1.0] * used, "majority") in right
            early_tokens += sum(lengths[i] for i in idx[:used])
            used_branches += used
            runs += 1
    return {"branches": branches, "window": rule.window, "confidence": rule.confidence,
            "criterion": rule.criterion, "accuracy_full": full_hits / runs, "accuracy_early": early_hits / runs,
            "accuracy_drop_points": (full_hits - early_hits) / runs * 100,
            "branches_used": used_branches / runs, "token_saving": 1 - early_tokens / full_tokens}
