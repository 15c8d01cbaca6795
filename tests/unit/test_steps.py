"""Exact step labels on hand-made cases."""

from tts_ray.testbed.steps import label_steps, parse_boxed, parse_step

REFERENCE = "42 - 7 = 35\n35 * 3 = 105\n105 / 5 = 21\n\\boxed{21}"


def test_parse_step_and_boxed():
    step = parse_step("35 * 3 = 105")
    assert (step.left, step.op, step.right, step.result) == (35, "*", 3, 105)
    assert step.holds()
    assert parse_step("35 * 3 = 106").holds() is False
    assert parse_step("the answer is 5") is None
    assert parse_boxed("\\boxed{21}") == 21
    assert parse_boxed("\\boxed{x}") is None


def test_correct_solution_is_all_true():
    assert label_steps(REFERENCE, REFERENCE) == [True, True, True, True]


def test_commutative_operands_allowed_for_times_not_minus():
    assert label_steps(REFERENCE, "42 - 7 = 35\n3 * 35 = 105\n105 / 5 = 21\n\\boxed{21}") == [True] * 4
    assert label_steps(REFERENCE, "7 - 42 = -35")[0] is False


def test_arithmetic_slip_marks_the_step_and_everything_after():
    candidate = "42 - 7 = 35\n35 * 3 = 115\n115 / 5 = 23\n\\boxed{23}"
    assert label_steps(REFERENCE, candidate) == [True, False, False, False]


def test_right_result_from_wrong_operation_is_wrong():
    # 100 + 5 = 105 has the right result but is not the reference's operation
    candidate = "42 - 7 = 35\n100 + 5 = 105\n105 / 5 = 21\n\\boxed{21}"
    assert label_steps(REFERENCE, candidate) == [True, False, False, False]


def test_wrong_final_box_only():
    assert label_steps(REFERENCE, "42 - 7 = 35\n35 * 3 = 105\n105 / 5 = 21\n\\boxed{20}") == [
        True, True, True, False]


def test_extra_missing_and_garbage_lines():
    assert label_steps(REFERENCE, "42 - 7 = 35\n35 * 3 = 105") == [True, True]
    assert label_steps(REFERENCE, REFERENCE + "\n1 + 1 = 2") == [True, True, True, True, False]
    assert label_steps(REFERENCE, "hello\n42 - 7 = 35") == [False, False]
    assert label_steps(REFERENCE, "") == []
