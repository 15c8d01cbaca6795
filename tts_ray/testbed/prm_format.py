"""How the testbed PRM reads a solution: each step followed by a step tag, scored at the tag.

The PRM is a causal LM (the Math-Shepherd recipe): after the problem prompt come the
solution's steps, each followed by ``<|step|>`` and a newline. At every tag position the
model predicts ``<|good|>`` or ``<|bad|>``; the step score is
``P(good) / (P(good) + P(bad))`` there. The tagging itself is :mod:`tts_ray.engines.prm`'s, shared with the reward deployment.
"""

from __future__ import annotations

from tts_ray.constants import STEP_TAG_TOKEN
from tts_ray.engines.prm import split_solution, tag_steps
from tts_ray.testbed.tokenizer import prompt_text


def prm_text(problem: str, steps: list[str]) -> str:
    """The PRM's input for ``problem`` and a solution split into ``steps`` (BOS not included)."""
    return tag_steps(prompt_text(problem), steps, STEP_TAG_TOKEN)


def prm_text_for_solution(problem: str, solution: str) -> tuple[str, list[str]]:
    """Split ``solution`` into steps (its non-empty lines) and build the PRM's input."""
    steps = split_solution(solution)
    return prm_text(problem, steps), steps
