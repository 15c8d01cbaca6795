"""Answer extraction and equivalence on hand-made cases."""

from tts_ray.grading import extract_answer, is_equivalent


def test_extract_last_boxed_with_nested_braces():
    assert extract_answer("so \\boxed{3} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_answer("12 + 3 = 15\n\\boxed{15}") == "15"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("\\boxed 5") == "5"


def test_extract_missing_or_unclosed():
    assert extract_answer("no answer here") is None
    assert extract_answer("\\boxed{3") is None
    assert extract_answer(None) is None


def test_equivalences():
    assert is_equivalent("15", "15")
    assert is_equivalent(" 1,000 ", "1000")
    assert is_equivalent("0.5", "\\frac{1}{2}")
    assert is_equivalent("\\dfrac{1}{2}", "\\frac12")
    assert not is_equivalent("15", "16")
    assert not is_equivalent(None, "1")
    assert not is_equivalent("1", None)
