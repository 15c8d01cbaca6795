"""Early stopping of sampling once the vote is settled (Adaptive-Consistency's Beta rule over
ESC-style windows): pure logic, used by the sampling methods."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


def prob_leader_ahead(leader_votes: int, runner_up_votes: int) -> float:
    """P(p1 > p2) where the two leading answers' shares have the Beta(c1 + 1, c2 + 1) posterior
    (uniform prior), i.e. P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1)."""
    a, b = leader_votes + 1, runner_up_votes + 1
    n = a + b - 1
    return sum(math.comb(n, i) for i in range(a)) / 2 ** n


@dataclass(frozen=True)
class EarlyStopRule:
    """Sample in windows of ``window`` branches; after each window stop once the leading
    answer is ahead of the runner-up with posterior probability >= ``confidence``.

    With window 4 and confidence 0.95, four agreeing answers stop (P = 0.969); 3 to 1 goes on.
    """

    window: int = 4
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence must be in (0.5, 1)")

    def settled(self, answers: Sequence[str | None]) -> bool:
        """Whether the vote over ``answers`` (normalized; None = no answer) is settled."""
        counts = Counter(a for a in answers if a is not None).most_common(2)
        if not counts:
            return False
        leader = counts[0][1]
        runner_up = counts[1][1] if len(counts) > 1 else 0
        return prob_leader_ahead(leader, runner_up) >= self.confidence
