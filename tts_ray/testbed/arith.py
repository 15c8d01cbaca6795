"""ARITH: a deterministic generator of multi-step arithmetic word problems with exact solutions.

Each problem is a short story: a starting quantity followed by a chain of operations
(+, -, *, /), then a question. The reference solution has one step per line,
``a op b = c``, and ends with ``\\boxed{answer}``. Records use MATH-500's fields
(``problem, solution, answer, subject, level, unique_id``) so that one evaluation path
serves both datasets.

Difficulty levels 1-5 grow the number of operations, the size of the numbers and the
operator mix. Everything is drawn from ``random.Random(seed)``, whose integer draws are
stable across CPython versions, so ARITH-500 regenerates bit-identically.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tts_ray.constants import ARITH500_SEED, ARITH500_SIZE, ARITH_LEVELS, ARITH_TRAIN_SEED

SUBJECT = "Arithmetic"
# Intermediate results stay below this so that every number fits a few tokens.
MAX_VALUE = 99_999


@dataclass(frozen=True)
class LevelSpec:
    """How hard a level is: operation count, operand sizes and which operators appear."""

    num_ops: tuple[int, int]
    start_digits: tuple[int, int]
    operand_digits: tuple[int, int]
    ops: str
    max_factor: int


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec(num_ops=(1, 2), start_digits=(1, 2), operand_digits=(1, 2), ops="+-", max_factor=1),
    2: LevelSpec(num_ops=(2, 3), start_digits=(2, 2), operand_digits=(1, 2), ops="+-*", max_factor=5),
    3: LevelSpec(num_ops=(3, 3), start_digits=(2, 3), operand_digits=(2, 2), ops="+-*", max_factor=9),
    4: LevelSpec(num_ops=(4, 4), start_digits=(3, 3), operand_digits=(2, 3), ops="+-*/", max_factor=9),
    5: LevelSpec(num_ops=(5, 5), start_digits=(3, 4), operand_digits=(2, 3), ops="+-*/", max_factor=12),
}

NAMES = ("Ava", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kai", "Lena",
         "Mia", "Nico", "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wes", "Yara", "Zoe")
ITEMS = ("apples", "marbles", "coins", "stickers", "books", "shells", "cards", "pencils",
         "stamps", "beads", "cookies", "tokens")

ADD_TEMPLATES = (
    "Then {name} buys {x} more {items}.",
    "Then {name} finds {x} more {items}.",
    "Then a friend gives {name} {x} {items}.",
    "Then {name} wins {x} {items}.",
)
SUB_TEMPLATES = (
    "Then {name} gives away {x} {items}.",
    "Then {name} loses {x} {items}.",
    "Then {name} sells {x} {items}.",
    "Then {name} uses {x} {items}.",
)
MUL_TEMPLATES = (
    "Then the number of {items} {name} has becomes {x} times as large.",
    "Then {name} ends up with {x} times as many {items}.",
)
DIV_TEMPLATES = (
    "Then {name} splits the {items} into {x} equal groups and keeps one group.",
    "Then {name} shares the {items} equally among {x} people, {name} included, and keeps one share.",
)
TEMPLATES = {"+": ADD_TEMPLATES, "-": SUB_TEMPLATES, "*": MUL_TEMPLATES, "/": DIV_TEMPLATES}


def apply_op(a: int, op: str, b: int) -> int:
    """Return ``a op b`` for the four ARITH operators; division must be exact.

    Raises:
        ValueError: unknown operator, division by zero or inexact division.
    """
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact integer division")
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def _number(rng: random.Random, digits: tuple[int, int]) -> int:
    n_digits = rng.randint(*digits)
    low = 1 if n_digits == 1 else 10 ** (n_digits - 1)
    return rng.randint(low, 10**n_digits - 1)


def _next_step(rng: random.Random, value: int, spec: LevelSpec) -> tuple[str, int]:
    """Pick an operator and operand that keep the value a positive integer below MAX_VALUE."""
    candidates = list(spec.ops)
    rng.shuffle(candidates)
    for op in candidates:
        if op == "+":
            operand = _number(rng, spec.operand_digits)
            if value + operand <= MAX_VALUE:
                return op, operand
        elif op == "-":
            if value > 1:
                operand = rng.randint(1, min(value - 1, 10 ** spec.operand_digits[1] - 1))
                return op, operand
        elif op == "*":
            factor = rng.randint(2, spec.max_factor)
            if value * factor <= MAX_VALUE:
                return op, factor
        elif op == "/":
            divisors = [d for d in range(2, spec.max_factor + 1) if value % d == 0]
            if divisors:
                return op, rng.choice(divisors)
    # "+ 1" is always possible: value <= MAX_VALUE - 1 is kept by every branch above.
    return "+", 1


def generate_problem(rng: random.Random, level: int, unique_id: str) -> dict:
    """Draw one problem of ``level`` from ``rng``.

    Returns a record with MATH-500's fields; ``solution`` holds one step per line and ends
    with ``\\boxed{answer}``.

    Raises:
        ValueError: ``level`` is not one of ``ARITH_LEVELS``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {ARITH_LEVELS}, got {level!r}")
    spec = LEVELS[level]
    name = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    value = _number(rng, spec.start_digits)
    sentences = [f"{name} has {value} {items}."]
    steps = []
    for _ in range(rng.randint(*spec.num_ops)):
        op, operand = _next_step(rng, value, spec)
        template = rng.choice(TEMPLATES[op])
        sentences.append(template.format(name=name, x=operand, items=items))
        result = apply_op(value, op, operand)
        steps.append(f"{value} {op} {operand} = {result}")
        value = result
    sentences.append(f"How many {items} does {name} have now?")
    answer = str(value)
    return {
        "problem": " ".join(sentences),
        "solution": "\n".join([*steps, f"\\boxed{{{answer}}}"]),
        "answer": answer,
        "subject": SUBJECT,
        "level": level,
        "unique_id": unique_id,
    }


def arith500(seed: int = ARITH500_SEED, size: int = ARITH500_SIZE) -> list[dict]:
    """The fixed ARITH-500 test split: ``size`` problems, levels cycling 1..5, from ``seed``."""
    rng = random.Random(seed)
    return [
        generate_problem(rng, ARITH_LEVELS[i % len(ARITH_LEVELS)], f"arith500/{i:04d}")
        for i in range(size)
    ]


def iter_train_problems(seed: int = ARITH_TRAIN_SEED, exclude: set[str] | None = None) -> Iterator[dict]:
    """An endless stream of training problems, uniform over levels, skipping ``exclude`` texts.

    ``exclude`` defaults to the ARITH-500 problem texts, so no test problem is trained on.
    """
    if exclude is None:
        exclude = {record["problem"] for record in arith500()}
    rng = random.Random(seed)
    index = 0
    while True:
        record = generate_problem(rng, rng.choice(ARITH_LEVELS), f"arith-train-{seed}/{index}")
        index += 1
        if record["problem"] not in exclude:
            yield record


def to_jsonl(records: list[dict]) -> str:
    """Serialise records as JSON Lines with a fixed key order (the form hashed for identity)."""
    return "".join(json.dumps(r, sort_keys=False, ensure_ascii=True) + "\n" for r in records)


def sha256_of(records: list[dict]) -> str:
    """SHA-256 of :func:`to_jsonl` of ``records``."""
    return hashlib.sha256(to_jsonl(records).encode("utf-8")).hexdigest()


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write ``records`` to ``path`` as JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(records), encoding="utf-8")
    return path


def slip(value: int, rng: random.Random) -> int:
    """A plausible arithmetic slip of ``value``: one digit off by one (a carry error) or
    replaced by another digit. Always returns a different integer of the same sign."""
    if value < 0:  # a slip upstream can drive a subtraction below zero
        return -slip(-value, rng)
    digits = list(str(value))
    while True:
        position = rng.randrange(len(digits))
        old = int(digits[position])
        if rng.random() < 0.6:
            new = (old + rng.choice((-1, 1))) % 10
        else:
            new = rng.choice([d for d in range(10) if d != old])
        if position == 0 and new == 0 and len(digits) > 1:
            continue
        candidate = digits.copy()
        candidate[position] = str(new)
        return int("".join(candidate))


def noisy_solution(solution: str, rng: random.Random, slip_prob: float) -> str:
    """Re-derive a reference ``solution`` with each step's result slipping with ``slip_prob``.

    Later steps continue from the slipped value (an inexact division then rounds down), so
    after a slip the final answer is almost always wrong, as with a real model's mistakes
    (rarely a later division or slip lands back on the right value).
    With ``slip_prob=0`` the reference comes back unchanged.
    """
    from tts_ray.testbed.steps import parse_step, split_steps

    lines = []
    value: int | None = None
    for line in split_steps(solution)[:-1]:
        step = parse_step(line)
        if step is None:
            raise ValueError(f"not an ARITH step: {line!r}")
        left = step.left if value is None else value
        result = left // step.right if step.op == "/" else apply_op(left, step.op, step.right)
        if rng.random() < slip_prob:
            result = slip(result, rng)
        lines.append(f"{left} {step.op} {step.right} = {result}")
        value = result
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines)
