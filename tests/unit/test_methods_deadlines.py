"""The methods' deadline and early-stopping logic over a scripted generator (the Generator
protocol is the seam; the real service is exercised in tests/integration)."""

import asyncio
import time

import pytest

from tts_ray.engines.base import Completion
from tts_ray.methods import METHODS, MethodContext
from tts_ray.planner.early_stop import EarlyStopRule


class ScriptedGenerator:
    """Answers with ``answers[i]`` after ``delays_s[i]`` for the i-th call; honours deadlines
    like a replica does (partial text, finish_reason "deadline")."""

    def __init__(self, answers, delays_s):
        self.answers, self.delays_s, self.calls, self.cancelled = answers, delays_s, 0, 0

    async def generate(self, prompt, *, max_tokens, temperature, stop=None, add_special_tokens=True,
                       deadline_s=None):
        i = self.calls
        self.calls += 1
        delay = self.delays_s[i % len(self.delays_s)]
        try:
            if deadline_s is not None and time.time() + delay > deadline_s:
                await asyncio.sleep(max(0.0, deadline_s - time.time()))
                return Completion(text="partial work 1+1", num_tokens=3, finish_reason="deadline")
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        answer = self.answers[i % len(self.answers)]
        return Completion(text=f"work\nThe answer is \\boxed{{{answer}}}", num_tokens=10, finish_reason="stop")


def ctx(generator, **kw):
    return MethodContext(generator=generator, scorer=None, num_branches=kw.pop("num_branches", 8),
                         max_tokens=50, temperature=0.7, **kw)


def test_early_stopping_stops_after_a_unanimous_window():
    gen = ScriptedGenerator(["7"], [0.0])
    c = ctx(gen, num_branches=16, early_stop=EarlyStopRule(window=4, confidence=0.95))
    result = asyncio.run(METHODS["majority"](c, "q"))
    assert result.answer == "7"
    assert gen.calls == 4
    assert c.stats.early_stopped == 12 and c.stats.finished == 4


def test_early_stopping_goes_on_while_the_vote_is_open():
    gen = ScriptedGenerator(["7", "8"], [0.0])
    c = ctx(gen, num_branches=12, early_stop=EarlyStopRule(window=4, confidence=0.95))
    asyncio.run(METHODS["majority"](c, "q"))
    assert gen.calls == 12 and c.stats.early_stopped == 0


def test_deadline_merges_the_finished_branches_and_stops_the_rest():
    gen = ScriptedGenerator(["7", "7", "9", "9"], [0.01, 0.01, 5.0, 5.0])
    c = ctx(gen, num_branches=4, deadline_s=time.time() + 0.5, merge_margin_s=0.1)
    started = time.perf_counter()
    result = asyncio.run(METHODS["majority"](c, "q"))
    assert time.perf_counter() - started < 0.5
    assert result.answer == "7" and not result.partial
    assert c.stats.finished == 2 and c.stats.stopped == 2


def test_deadline_with_nothing_finished_returns_the_partial_answer():
    gen = ScriptedGenerator(["7"], [5.0])
    c = ctx(gen, num_branches=3, deadline_s=time.time() + 0.3, merge_margin_s=0.1)
    result = asyncio.run(METHODS["majority"](c, "q"))
    assert result.partial and result.answer is None
    assert result.text == "partial work 1+1"
    assert c.stats.stopped == 3


class StuckGenerator(ScriptedGenerator):
    """Ignores the deadline, as a replica stuck in a queue would."""

    async def generate(self, prompt, **kw):
        kw["deadline_s"] = None
        return await super().generate(prompt, **kw)


def test_branches_that_ignore_the_deadline_are_cancelled():
    gen = StuckGenerator(["7", "8"], [0.01, 30.0])
    c = ctx(gen, num_branches=2, deadline_s=time.time() + 0.3, merge_margin_s=0.1)
    result = asyncio.run(METHODS["majority"](c, "q"))
    assert result.answer == "7"
    assert c.stats.cancelled == 1 and gen.cancelled == 1


@pytest.mark.parametrize("method", ["majority", "single"])
def test_no_deadline_runs_everything(method):
    gen = ScriptedGenerator(["3"], [0.0])
    c = ctx(gen, num_branches=5)
    result = asyncio.run(METHODS[method](c, "q"))
    assert result.answer == "3"
    assert c.stats.finished == (5 if method == "majority" else 1)
