"""Exact step labels for ARITH solutions: which steps of a sampled solution are still correct.

A solution is a list of lines (steps). Against the reference solution, step i is correct
when every earlier step was correct and step i performs the reference operation on the
reference operands with the true result (operands may be swapped for + and *). The final
``\\boxed{x}`` line is correct when the steps before it were and x is the reference answer.
Once a step is wrong, every later step is wrong too: the prefix can no longer reach the
right answer, which is the label a process reward model needs (as in Math-Shepherd).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tts_ray.engines.prm import split_solution
from tts_ray.testbed.arith import apply_op

_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_BOXED_RE = re.compile(r"^\s*\\boxed\{\s*(-?\d+)\s*\}\s*$")


@dataclass(frozen=True)
class Step:
    """One parsed equation line ``left op right = result``."""

    left: int
    op: str
    right: int
    result: int

    def holds(self) -> bool:
        """True when the stated result is the exact value of ``left op right``."""
        try:
            return apply_op(self.left, self.op, self.right) == self.result
        except ValueError:
            return False

    def same_operation(self, other: Step) -> bool:
        """Same operator on the same operands (either order for the commutative + and *)."""
        if self.op != other.op:
            return False
        if (self.left, self.right) == (other.left, other.right):
            return True
        return self.op in "+*" and (self.left, self.right) == (other.right, other.left)


def split_steps(solution: str) -> list[str]:
    """The non-empty lines of ``solution``, stripped: one step each."""
    return split_solution(solution, "\n")


def parse_step(line: str) -> Step | None:
    """Parse ``a op b = c``; None when the line is not such an equation."""
    match = _STEP_RE.match(line)
    if match is None:
        return None
    left, op, right, result = match.groups()
    return Step(int(left), op, int(right), int(result))


def parse_boxed(line: str) -> int | None:
    """The integer inside a line that is exactly ``\\boxed{n}``; None otherwise."""
    match = _BOXED_RE.match(line)
    return int(match.group(1)) if match else None


def label_steps(reference_solution: str, candidate_solution: str) -> list[bool]:
    """Label each step (line) of ``candidate_solution`` correct or not against the reference.

    Returns one bool per non-empty candidate line. Lines beyond the reference's length,
    unparseable lines and anything after a wrong step are False.
    """
    reference = split_steps(reference_solution)
    ref_steps = [parse_step(line) for line in reference[:-1]]
    ref_answer = parse_boxed(reference[-1]) if reference else None
    labels: list[bool] = []
    prefix_ok = True
    for i, line in enumerate(split_steps(candidate_solution)):
        if prefix_ok:
            if i < len(ref_steps):
                step = parse_step(line)
                ref = ref_steps[i]
                prefix_ok = bool(step and ref and step.holds() and step.same_operation(ref))
            elif i == len(ref_steps):
                value = parse_boxed(line)
                prefix_ok = value is not None and value == ref_answer
            else:
                prefix_ok = False
        labels.append(prefix_ok)
    return labels
