"""How the testbed PRM reads a solution: each step followed by a step tag, scored at the tag.

The PRM is a causal LM (the Math-Shepherd recipe): after the problem prompt come the
solution's steps, each followed by ``<|step|>`` and a newline. At every tag position the
model predicts ``<|good|>`` or ``<|bad|>``; the step score is
``P(good) / (P(good) + P(bad))`` there. Training and scoring share this module so that the
two can never drift apart.
"""

from __future__ import annotations

from tts_ray.constants import BAD_TOKEN, GOOD_TOKEN, STEP_TAG_TOKEN
from tts_ray.testbed.steps import split_steps
from tts_ray.testbed.tokenizer import prompt_text

STEP_SUFFIX = STEP_TAG_TOKEN + "\n"


def prm_text(problem: str, steps: list[str]) -> str:
    """The PRM's input for ``problem`` and a solution split into ``steps`` (BOS not included)."""
    return prompt_text(problem) + "".join(step + STEP_SUFFIX for step in steps)


def prm_text_for_solution(problem: str, solution: str) -> tuple[str, list[str]]:
    """Split ``solution`` into steps (its non-empty lines) and build the PRM's input."""
    steps = split_steps(solution)
    return prm_text(problem, steps), steps


__all__ = ["BAD_TOKEN", "GOOD_TOKEN", "STEP_SUFFIX", "STEP_TAG_TOKEN", "prm_text",
           "prm_text_for_solution"]
