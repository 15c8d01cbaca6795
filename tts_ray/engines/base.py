"""The small protocol TTS methods program against: a generator of branches and a step scorer.

The serving layer implements it over Ray Serve handles (``tts_ray.serve.router``); anything
else that can sample a continuation and score steps can stand in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Completion:
    """One sampled continuation.

    Attributes:
        text: the generated text (stop strings excluded).
        num_tokens: generated tokens.
        finish_reason: "stop" (EOS or a stop string), "length", or "deadline" (stopped at
            ``deadline_s`` with the text generated so far).
        stop_reason: the stop string that ended it, if any.
        replica: which generator replica produced it.
        spec_accepted_tokens: draft tokens the target accepted (None without speculation).
        spec_verify_steps: target verification steps taken (None without speculation).
        elapsed_s: wall time of the request as the caller saw it.
    """

    text: str
    num_tokens: int
    finish_reason: str | None
    stop_reason: str | None = None
    replica: str | None = None
    spec_accepted_tokens: int | None = None
    spec_verify_steps: int | None = None
    elapsed_s: float | None = None


class Generator(Protocol):
    """Samples one continuation of ``prompt``; each call is its own engine request. At
    ``deadline_s`` (a ``time.time()`` instant) the branch stops and returns what it has;
    cancelling the call aborts the engine request."""

    async def generate(self, prompt: str, *, max_tokens: int, temperature: float,
                       stop: list[str] | None = None, add_special_tokens: bool = True,
                       deadline_s: float | None = None) -> Completion:
        ...


class StepScorer(Protocol):
    """Scores every step of each solution of one prompt: one list of floats in [0, 1] per
    solution, one float per step."""

    async def score(self, prompt: str, solutions: list[str]) -> list[list[float]]:
        ...
