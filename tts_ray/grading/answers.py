"""Final-answer extraction (``\\boxed{...}``) and answer equivalence.

``extract_answer`` finds the last ``\\boxed{...}`` (or ``\\fbox{...}``) in a solution,
braces balanced. ``is_equivalent`` first compares normalised strings (exact, and enough
for ARITH), then asks ``math-verify`` for symbolic equivalence. math-verify's own timeout
uses SIGALRM, which works only in a main thread; Ray Serve runs user code in other threads,
so it is called here with its timeouts off (``parsing_timeout=None``, ``timeout_seconds=None``).
"""

from __future__ import annotations

import re

_BOX_MARKERS = ("\\boxed", "\\fbox")


def extract_answer(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` in ``text``, stripped; None if there is none
    or its braces never close."""
    if not isinstance(text, str):
        return None
    start = max(text.rfind(marker) for marker in _BOX_MARKERS)
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # "\boxed 5" (no braces) as MATH sometimes writes it
        match = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return match.group(1).strip() if match else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
    return None


def normalize_answer(answer: str) -> str:
    """Cheap canonical form: no surrounding ``$``, spaces, ``\\!`` or thousands commas in numbers."""
    s = answer.strip().strip("$").strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", "").replace(" ", "")
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    return s


def is_equivalent(predicted: str | None, gold: str | None) -> bool:
    """True when ``predicted`` and ``gold`` (bare answers, no ``\\boxed``) mean the same.

    None on either side is never equivalent. Uses math-verify when installed and the cheap
    comparison fails; any math-verify error counts as not equivalent.
    """
    if predicted is None or gold is None:
        return False
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=None)
        pred_parsed = parse(f"${predicted}$", parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - math-verify raises a variety of sympy errors on odd input
        return False
