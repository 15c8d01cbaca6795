"""Grading: final-answer extraction and equivalence (see :mod:`tts_ray.grading.answers`)."""

from tts_ray.grading.answers import extract_answer, is_equivalent, normalize_answer

__all__ = ["extract_answer", "is_equivalent", "normalize_answer"]
