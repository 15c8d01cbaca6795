"""Majority, weighted and best-of-N merging."""

import pytest

from tts_ray.grading import is_equivalent
from tts_ray.methods.voting import best_of_n, majority_vote, weighted_vote


def test_majority_counts_and_winner():
    result = majority_vote(["3", "5", "3", None, "7", "3"])
    assert result.answer == "3"
    assert result.votes == {"3": 3.0, "5": 1.0, "7": 1.0}
    assert sum(result.votes.values()) == 5  # the answerless branch casts no vote
    assert result.winner_index == 0


def test_tie_goes_to_first_seen():
    assert majority_vote(["5", "3", "3", "5"]).answer == "5"


def test_no_answers():
    result = majority_vote([None, None])
    assert result.answer is None and result.votes == {} and result.winner_index is None


def test_weighted_vote_can_overturn_majority():
    answers = ["3", "3", "5"]
    assert weighted_vote(answers, [0.1, 0.1, 0.9]).answer == "5"
    assert weighted_vote(answers, [0.5, 0.5, 0.9]).answer == "3"


def test_equivalent_answers_pool_their_votes():
    result = majority_vote(["1/2", "0.5", "\\frac{1}{2}", "2", "3"], equivalent=is_equivalent)
    assert result.answer == "1/2"
    assert result.votes["1/2"] == 3.0


def test_weighted_vote_validates_input():
    with pytest.raises(ValueError):
        weighted_vote(["1"], [1.0, 2.0])
    with pytest.raises(ValueError):
        weighted_vote(["1"], [-1.0])


def test_best_of_n_prefers_answers_then_score():
    assert best_of_n(["1", "2", None], [0.2, 0.7, 0.99]).answer == "2"
    assert best_of_n([None, None], [0.1, 0.2]).winner_index == 1
    with pytest.raises(ValueError):
        best_of_n([], [])
