"""Merging branch answers: majority vote, reward-weighted vote and best-of-N (pure logic).

Answers are compared through an equivalence function so that equivalent answers
(``1/2`` and ``0.5``) count as one; branches without an answer (``None``) never win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Equivalence = Callable[[str, str], bool]


def _exact(a: str, b: str) -> bool:
    return a == b


@dataclass
class VoteResult:
    """The outcome of a vote.

    Attributes:
        answer: the winning answer, or None when no branch had one.
        votes: each distinct answer (its first spelling) with its total weight.
        winner_index: index of a branch holding the winning answer (None if no answer).
    """

    answer: str | None
    votes: dict[str, float] = field(default_factory=dict)
    winner_index: int | None = None


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float],
                  equivalent: Equivalence = _exact) -> VoteResult:
    """Sum ``weights`` per class of equivalent answers; the heaviest class wins.

    Ties go to the class seen first, so the result is deterministic for a given order.

    Raises:
        ValueError: ``answers`` and ``weights`` differ in length, or a weight is negative.
    """
    if len(answers) != len(weights):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative")
    classes: list[tuple[str, float, int]] = []  # (representative, weight, first branch index)
    for index, (answer, weight) in enumerate(zip(answers, weights)):
        if answer is None:
            continue
        for c, (representative, total, first) in enumerate(classes):
            if equivalent(answer, representative):
                classes[c] = (representative, total + weight, first)
                break
        else:
            classes.append((answer, weight, index))
    if not classes:
        return VoteResult(answer=None)
    best = max(range(len(classes)), key=lambda c: (classes[c][1], -c))
    representative, _, first = classes[best]
    return VoteResult(answer=representative, votes={r: w for r, w, _ in classes}, winner_index=first)


def majority_vote(answers: Sequence[str | None], equivalent: Equivalence = _exact) -> VoteResult:
    """One vote per branch that has an answer; see :func:`weighted_vote`."""
    return weighted_vote(answers, [1.0] * len(answers), equivalent)


def best_of_n(answers: Sequence[str | None], scores: Sequence[float]) -> VoteResult:
    """The branch with the highest score wins (answerless branches only if nothing else).

    Raises:
        ValueError: empty input or lengths differ.
    """
    if not answers or len(answers) != len(scores):
        raise ValueError("best_of_n needs as many scores as answers, and at least one")
    order = sorted(range(len(answers)), key=lambda i: (answers[i] is not None, scores[i], -i))
    winner = order[-1]
    answer = answers[winner]
    votes = {answer: float(scores[winner])} if answer is not None else {}
    return VoteResult(answer=answer, votes=votes, winner_index=winner)
