"""Fault handling without Serve: a branch re-run on another pool when its replica dies, and the
PRM-weighted methods falling back to a flagged majority vote when the reward model fails."""

import asyncio
import time

import pytest
import ray.serve.llm.openai_api_models  # noqa: F401 - its first import takes seconds: not inside a deadline
from ray.exceptions import ActorDiedError

from tts_ray.engines.base import Completion
from tts_ray.methods import METHODS, MethodContext
from tts_ray.serve.router import HandleGenerator


class _Call:
    def __init__(self, outcome):
        self.outcome = outcome

    def __await__(self):
        async def run():
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome
        return run().__await__()


class FakeHandle:
    """A deployment handle whose ``generate_branch.remote`` answers ``outcome`` (raising it if
    it is an exception) and counts its calls."""

    def __init__(self, outcome):
        self.outcome, self.calls = outcome, 0
        self.generate_branch = self

    def remote(self, request, deadline_s):
        self.calls += 1
        return _Call(self.outcome)


ANSWER = {"text": "x \\boxed{7}", "num_tokens": 3, "finish_reason": "stop", "stop_reason": None,
          "replica": "r-b", "spec_accepted_tokens": None, "spec_verify_steps": None}


def _generate(generator, deadline_s=None):
    return asyncio.run(generator.generate("q", max_tokens=8, temperature=0.7, deadline_s=deadline_s))


def test_a_branch_whose_replica_died_runs_again_on_the_next_pool():
    dead, alive = FakeHandle(ActorDiedError()), FakeHandle(ANSWER)
    generator = HandleGenerator(dead, "m", fallbacks=[alive])
    completion = _generate(generator, deadline_s=time.time() + 10)
    assert completion.replica == "r-b" and generator.retried == 1
    assert (dead.calls, alive.calls) == (1, 1)


def test_no_rerun_without_time_left_or_another_pool():
    with pytest.raises(ActorDiedError):
        _generate(HandleGenerator(FakeHandle(ActorDiedError()), "m", fallbacks=[FakeHandle(ANSWER)]),
                  deadline_s=time.time() + 0.1)
    with pytest.raises(ActorDiedError):
        _generate(HandleGenerator(FakeHandle(ActorDiedError()), "m"))


def test_an_engine_error_is_not_rerun():
    """An error the replica answered with says nothing about the other pool: no re-run."""
    other = FakeHandle(ANSWER)
    with pytest.raises(RuntimeError):
        _generate(HandleGenerator(FakeHandle(RuntimeError("generator error")), "m", fallbacks=[other]))
    assert other.calls == 0


class Generator:
    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    async def generate(self, prompt, **kwargs):
        answer = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        return Completion(text=f"step\n\\boxed{{{answer}}}", num_tokens=4, finish_reason="stop")


class BrokenScorer:
    async def score(self, prompt, solutions):
        raise ConnectionError("reward replica gone")


class Scorer:
    async def score(self, prompt, solutions):
        # the PRM would favour the minority answer "9"
        return [[0.99] if "{9}" in text else [0.01] for text in solutions]


@pytest.mark.parametrize("method", ["weighted_majority", "best_of_n"])
def test_a_failing_reward_model_degrades_to_a_flagged_majority_vote(method):
    answers = ["7", "7", "7", "9"]
    ctx = MethodContext(generator=Generator(answers), scorer=BrokenScorer(), num_branches=4, max_tokens=8,
                        temperature=0.7)
    result = asyncio.run(METHODS[method](ctx, "q"))
    assert result.answer == "7" and result.votes == {"7": 3, "9": 1}
    assert "reward model unavailable" in result.degraded
    assert all(b.score is None and b.step_scores is None for b in result.branches)
    # with a working reward model the same branches follow the PRM, unflagged
    ctx = MethodContext(generator=Generator(answers), scorer=Scorer(), num_branches=4, max_tokens=8,
                        temperature=0.7)
    result = asyncio.run(METHODS[method](ctx, "q"))
    assert result.answer == "9" and result.degraded is None
