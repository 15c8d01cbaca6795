"""ARITH generator: determinism, correctness of reference solutions, slips, train/test split."""

import itertools
import random

import pytest

from tts_ray.testbed.arith import (
    LEVELS,
    apply_op,
    arith500,
    generate_problem,
    iter_train_problems,
    noisy_solution,
    sha256_of,
    slip,
)
from tts_ray.testbed.steps import label_steps, parse_boxed, parse_step, split_steps

# sha256 of ARITH-500's JSONL as first generated; any change to the generator shows up here.
ARITH500_SHA256 = "27f8eb7135251e839a01b63f0efb64c9ea3addc05f70447d2bcd642b22c547ca"


def test_arith500_is_bit_identical_across_runs():
    first, second = arith500(), arith500()
    assert first == second
    assert sha256_of(first) == sha256_of(second) == ARITH500_SHA256


def test_arith500_shape():
    records = arith500()
    assert len(records) == 500
    assert {r["level"] for r in records} == {1, 2, 3, 4, 5}
    assert all(sum(r["level"] == lvl for r in records) == 100 for lvl in range(1, 6))
    assert len({r["unique_id"] for r in records}) == 500
    assert set(records[0]) == {"problem", "solution", "answer", "subject", "level", "unique_id"}


def test_reference_solutions_are_exact_chains():
    for record in arith500():
        lines = split_steps(record["solution"])
        steps = [parse_step(line) for line in lines[:-1]]
        assert all(s is not None and s.holds() for s in steps), record
        for prev, nxt in itertools.pairwise(steps):
            assert nxt.left == prev.result
        assert parse_boxed(lines[-1]) == steps[-1].result == int(record["answer"])
        lo, hi = LEVELS[record["level"]].num_ops
        assert lo <= len(steps) <= hi
        assert all(label_steps(record["solution"], record["solution"]))


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError):
        generate_problem(random.Random(0), 6, "x")


def test_apply_op_rejects_inexact_division():
    assert apply_op(12, "/", 4) == 3
    with pytest.raises(ValueError):
        apply_op(13, "/", 4)
    with pytest.raises(ValueError):
        apply_op(1, "%", 4)


def test_training_stream_excludes_test_problems():
    test_texts = {r["problem"] for r in arith500()}
    train = list(itertools.islice(iter_train_problems(), 3000))
    assert not test_texts & {r["problem"] for r in train}
    assert {r["level"] for r in train} == {1, 2, 3, 4, 5}


def test_slip_changes_value_and_keeps_sign():
    rng = random.Random(0)
    for value in [0, 7, 10, 99, 1000, 98765, -42]:
        for _ in range(50):
            slipped = slip(value, rng)
            assert slipped != value
            assert (slipped < 0) == (value < 0)


def test_noisy_solution_without_slips_is_the_reference():
    rng = random.Random(0)
    for record in arith500()[:100]:
        assert noisy_solution(record["solution"], rng, 0.0) == record["solution"]


def test_noisy_solution_with_certain_slips_is_wrong_from_the_first_step():
    rng = random.Random(0)
    records = arith500()[:200]
    wrong_answers = 0
    for record in records:
        noisy = noisy_solution(record["solution"], rng, 1.0)
        labels = label_steps(record["solution"], noisy)
        assert labels == [False] * len(split_steps(record["solution"]))
        wrong_answers += parse_boxed(split_steps(noisy)[-1]) != int(record["answer"])
    # a later slip or a rounding division can land back on the answer, but rarely
    assert wrong_answers >= 0.95 * len(records)
