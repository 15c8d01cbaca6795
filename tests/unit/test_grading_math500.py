"""Grading against MATH-500: every gold solution's boxed answer must be judged equal to its
``answer`` field, answers of other problems must mostly not be, and hand-made equivalences
of the kinds MATH answers come in (LaTeX spellings, units, degrees, percent, choices)."""

import json
import logging

import pytest

from tts_ray.constants import MATH500_PATH
from tts_ray.grading import extract_answer, is_equivalent

needs_math500 = pytest.mark.skipif(not MATH500_PATH.is_file(),
                                   reason=f"MATH-500 JSONL not present at {MATH500_PATH}")


@pytest.fixture(scope="module")
def math500():
    return [json.loads(line) for line in MATH500_PATH.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _quiet_math_verify():
    # math-verify warns on every call that its (SIGALRM) timeouts are off, as we ask it to
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@needs_math500
def test_gold_solutions_grade_equal_to_their_answers(math500):
    disagreements = []
    for row in math500:
        extracted = extract_answer(row["solution"])
        if not is_equivalent(extracted, row["answer"]):
            disagreements.append(f"{row['unique_id']}: extracted {extracted!r}, answer {row['answer']!r}")
    print(f"{len(math500) - len(disagreements)}/{len(math500)} gold solutions judged equal; "
          f"{len(disagreements)} disagreements:", *disagreements, sep="\n  ")
    assert len(math500) == 500
    agreement = 1 - len(disagreements) / len(math500)
    assert agreement >= 0.99, f"{agreement:.1%} agreement; disagreements:\n" + "\n".join(disagreements)


@needs_math500
def test_other_problems_answers_are_not_judged_equal(math500):
    """The check above cannot pass by judging everything equal: a problem's answer against
    the next problem's is equal only when they really are the same value."""
    false_matches = []
    for row, other in zip(math500, math500[1:] + math500[:1]):
        if is_equivalent(other["answer"], row["answer"]):
            false_matches.append((row["answer"], other["answer"]))
    # MATH-500 has a few consecutive problems with the same answer ("7" and "7"); those are real.
    assert len(false_matches) <= 5, false_matches


@pytest.mark.parametrize(("predicted", "gold"), [
    ("\\dfrac{3}{4}", "\\frac34"),
    ("0.75", "\\frac{3}{4}"),
    ("1/2", "0.5"),
    ("10{,}000", "10000"),
    ("1,000,000", "1000000"),
    ("30^\\circ", "30"),
    ("30^{\\circ}", "30"),
    ("5\\text{ cm}", "5"),
    ("4 \\text{ dollars}", "4"),
    ("\\$18.90", "18.90"),
    ("10\\%", "10"),
    ("\\text{(C)}", "C"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\mbox{Monday}", "Monday"),
    ("x = 3", "3"),
    ("3\\sqrt{2}", "\\sqrt{18}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
    ("[1,2)", "[1, 2)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("10.0", "10"),
])
def test_equivalent(predicted, gold):
    assert is_equivalent(predicted, gold)


@pytest.mark.parametrize(("predicted", "gold"), [
    ("5", "6"),
    ("-5", "5"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("(1,2)", "[1,2]"),
    ("\\pi", "3.14159"),
    ("90^\\circ", "\\frac{\\pi}{2}"),
    ("x^2+1", "(x+1)^2"),
    ("", "3"),
])
def test_not_equivalent(predicted, gold):
    assert not is_equivalent(predicted, gold)


def test_extract_answer_from_whole_solutions():
    solution = "We have $r = 3$.  Therefore the point is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
    assert extract_answer(solution) == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert extract_answer("first \\boxed{1}, finally \\boxed{\\text{(B)}}") == "\\text{(B)}"
    assert extract_answer("12 + 3 = 15\n\\boxed{15}") == "15"
