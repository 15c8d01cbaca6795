"""Evaluation datasets: ARITH-500, MATH-500 (Hugging Face hub or a local JSONL), or any JSONL file.

Every loader returns :class:`Problem` records with MATH-500's fields. MATH-500 comes from the
hub (``HuggingFaceH4/MATH-500``, split ``test``) only when the optional ``datasets`` package
is installed and the hub answers a TCP connection within a short timeout; otherwise (and on
any hub error) it is read from :data:`tts_ray.constants.MATH500_PATH`, a byte-identical copy
of PRM800K's ``math_splits/test.jsonl`` kept beside the checkout, never inside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tts_ray.constants import MATH500_PATH

MATH500_HUB_ID = "HuggingFaceH4/MATH-500"
MATH500_HUB_SPLIT = "test"
# The hub's API answers in well under a second where it is reachable; where it is not (these
# machines), waiting longer only delays the local fallback.
HUB_PROBE_TIMEOUT_S = 2.0
DATASET_NAMES = ("arith500", "math500")

Source = Literal["auto", "hub", "local"]


class DatasetError(ValueError):
    """A dataset cannot be loaded: unknown name, unreadable or malformed file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file does not exist; the message names the path."""


class Problem(BaseModel):
    """One evaluation problem with MATH-500's fields."""

    model_config = ConfigDict(extra="ignore")

    unique_id: str = Field(..., description="Stable id (MATH-500: 'test/<subject>/<n>.json').")
    problem: str = Field(..., min_length=1, description="The question sent to the model.")
    answer: str = Field(..., description="Gold final answer (bare, no \\boxed).")
    solution: str = Field("", description="Reference solution, ending in \\boxed{answer}.")
    subject: str = Field("", description="Subject (MATH) or 'Arithmetic' (ARITH).")
    level: int | None = Field(None, description="Difficulty level 1-5 where known.")


class LoadedDataset(BaseModel):
    """Problems plus where they came from (recorded in evaluation summaries)."""

    name: str = Field(..., description="'arith500', 'math500', or the JSONL path.")
    source: str = Field(..., description="'generated', 'hub:<id>' or the file read.")
    problems: list[Problem]


def load_jsonl(path: str | Path) -> list[Problem]:
    """Problems from a JSONL file, one JSON object per non-empty line with at least
    ``problem`` and ``answer`` (``unique_id`` defaults to ``<file stem>/<line number>``).

    Raises:
        DatasetNotFoundError: ``path`` does not exist or is not a file.
        DatasetError: a line is not JSON or lacks a required field.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset file {str(path)!r} does not exist (or is not a file)")
    problems = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object")
            problems.append(_problem(row, default_id=f"{path.stem}/{line_no}", where=f"{path}:{line_no}"))
    if not problems:
        raise DatasetError(f"dataset file {str(path)!r} holds no problems")
    return problems


def _problem(row: dict[str, Any], default_id: str, where: str) -> Problem:
    row = dict(row)
    row.setdefault("unique_id", default_id)
    if row.get("level") is not None and not isinstance(row["level"], int):
        # MATH (not MATH-500) spells levels "Level 3"
        digits = "".join(ch for ch in str(row["level"]) if ch.isdigit())
        row["level"] = int(digits) if digits else None
    try:
        return Problem.model_validate(row)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise DatasetError(f"{where}: missing or invalid field(s): {fields}") from None


def load_arith500() -> list[Problem]:
    """The ARITH-500 test split (generated deterministically, no file needed)."""
    from tts_ray.testbed.arith import arith500

    return [Problem.model_validate(r) for r in arith500()]


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub is worth trying: not switched off (``HF_HUB_OFFLINE``,
    ``HF_DATASETS_OFFLINE``) and its API describes MATH-500 (HTTP 200) within ``timeout_s``.

    An HTTP answer is asked for rather than a TCP connection because some networks accept
    every connection and then never answer.
    """
    import httpx

    if any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
           for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        response = httpx.get(f"{endpoint}/api/datasets/{MATH500_HUB_ID}", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _load_math500_hub() -> list[Problem]:
    import datasets  # optional extra `hub`; ImportError is handled by the caller

    rows = datasets.load_dataset(MATH500_HUB_ID, split=MATH500_HUB_SPLIT)
    return [_problem(dict(row), default_id=f"math500/{i}", where=f"{MATH500_HUB_ID}[{i}]")
            for i, row in enumerate(rows)]


def load_math500(source: Source = "auto", path: str | Path | None = None) -> LoadedDataset:
    """MATH-500. ``source="auto"`` tries the hub (``datasets`` installed and the hub reachable)
    and falls back to the local JSONL; ``"hub"`` insists on the hub; ``"local"`` reads
    ``path`` (default :data:`~tts_ray.constants.MATH500_PATH`).

    Raises:
        DatasetNotFoundError: the local file is needed and missing.
        DatasetError: ``source="hub"`` and the hub or ``datasets`` is unavailable.
    """
    local = Path(path) if path is not None else MATH500_PATH
    if source in ("auto", "hub"):
        reason = None
        try:
            import datasets  # noqa: F401
        except ImportError:
            reason = "the `datasets` package is not installed (extra `hub`)"
        if reason is None and not hub_reachable():
            reason = "the Hugging Face hub is unreachable or switched off"
        if reason is None:
            try:
                return LoadedDataset(name="math500", source=f"hub:{MATH500_HUB_ID}",
                                     problems=_load_math500_hub())
            except Exception as exc:  # noqa: BLE001 - any hub, network or cache failure: fall back
                reason = f"loading from the hub failed: {exc}"
        if source == "hub":
            raise DatasetError(f"MATH-500 from the hub: {reason}")
    if not local.is_file():
        raise DatasetNotFoundError(f"MATH-500 JSONL {str(local)!r} does not exist; set TTS_RAY_SHARED_DIR "
                                   "or pass a path, or install the `hub` extra where the hub is reachable")
    return LoadedDataset(name="math500", source=str(local), problems=load_jsonl(local))


def load_dataset(name: str, limit: int | None = None, source: Source = "auto") -> LoadedDataset:
    """``arith500``, ``math500`` or a path to a ``.jsonl`` file; the first ``limit`` problems.

    Raises:
        DatasetNotFoundError: a path that does not exist.
        DatasetError: an unknown name (neither a known dataset nor a ``.jsonl`` path), a
            malformed file, or ``limit`` below 1.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be >= 1, got {limit}")
    if name == "arith500":
        loaded = LoadedDataset(name=name, source="generated", problems=load_arith500())
    elif name == "math500":
        loaded = load_math500(source)
    elif name.endswith(".jsonl") or Path(name).is_file():
        loaded = LoadedDataset(name=name, source=str(Path(name)), problems=load_jsonl(name))
    else:
        raise DatasetError(f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)} "
                           "or a path to a .jsonl file")
    if limit is not None:
        loaded.problems = loaded.problems[:limit]
    return loaded
