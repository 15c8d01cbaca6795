"""Evaluation and benchmarks: datasets, the async runner against a service, statistics, plots.

``tts-ray eval`` / ``python -m tts_ray.eval`` run :func:`~tts_ray.eval.runner.run_eval`;
``tts-ray bench`` runs :mod:`tts_ray.eval.bench` (peers side by side). Heavy modules (vLLM,
Ray, matplotlib) are imported lazily by the functions that need them.
"""

from tts_ray.eval.datasets import (
    DatasetError,
    DatasetNotFoundError,
    LoadedDataset,
    Problem,
    load_arith500,
    load_dataset,
    load_jsonl,
    load_math500,
)
from tts_ray.eval.stats import EvalSummary, ProblemResult, percentile, summarize, wilson_interval

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "EvalSummary",
    "LoadedDataset",
    "Problem",
    "ProblemResult",
    "load_arith500",
    "load_dataset",
    "load_jsonl",
    "load_math500",
    "percentile",
    "summarize",
    "wilson_interval",
]
