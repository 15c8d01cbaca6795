"""The evaluation runner: send every problem to a tts_ray service (or any OpenAI-compatible
server), grade the answers, and write per-problem results and a summary.

Requests go out concurrently (``concurrency`` in flight) over one ``httpx.AsyncClient``;
a tqdm bar shows live accuracy. Outputs in the run folder: ``results.jsonl`` (one
:class:`~tts_ray.eval.stats.ProblemResult` per problem, in dataset order), ``summary.json``
and ``summary.csv`` (:class:`~tts_ray.eval.stats.EvalSummary`).
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tts_ray.constants import EVAL_SEED_STRIDE, MAX_EVAL_SEED
from tts_ray.eval.datasets import Problem, Source, load_dataset
from tts_ray.eval.stats import EvalSummary, ProblemResult, summarize
from tts_ray.grading import extract_answer, is_equivalent

RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
HEALTH_TIMEOUT_S = 10.0
# Statuses a client may retry after the wait the service names in Retry-After: 429 (the
# latency budget cannot be met under today's load) and 503 (shed by back-pressure).
RETRYABLE_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 30.0  # a Retry-After above this is waited only this long


class ServiceUnavailableError(ConnectionError):
    """The service at the given URL does not answer its health check."""


def default_api_key(environ: dict[str, str] | None = None) -> str | None:
    """The key an evaluation sends when none is given: ``$TTS_RAY_API_KEY``, else the first key
    of the service's own key file ``$TTS_RAY_API_KEYS_FILE`` (the evaluation RayJob mounts the
    service's key Secret there), else None."""
    from tts_ray.serve.security import parse_keys

    environ = os.environ if environ is None else environ
    if environ.get("TTS_RAY_API_KEY", "").strip():
        return environ["TTS_RAY_API_KEY"].strip()
    path = environ.get("TTS_RAY_API_KEYS_FILE")
    if path:
        try:
            keys = parse_keys(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        return keys[0] if keys else None
    return None


class EvalRequest(BaseModel):
    """What each request asks of the service (None leaves a field to the service's defaults)."""

    method: str | None = Field(None, description="tts.method, passed through as given (e.g. 'auto').")
    branches: int | Literal["auto"] | None = Field(None, description="tts.branches: an int >= 1 or 'auto'.")
    latency_budget_s: float | None = Field(None, gt=0, description="tts.latency_budget_s.")
    seed: int | None = Field(
        None, ge=0, lt=MAX_EVAL_SEED,
        description="Base sampling seed: problem P is sent tts.seed = seed + crc32(P's unique_id) x "
                    "2**20, so every run with this seed samples P's branches alike (pools with "
                    "seeds applied: GPU pools, CPU pools with chunked prefill off); None: unseeded.")
    num_speculative_tokens: int | Literal["auto"] | None = Field(
        None, description="tts.num_speculative_tokens: run on the pool with this draft length k.")
    early_stop: bool | None = Field(None, description="tts.early_stop: stop sampling once the vote is settled.")
    model: str | None = Field(None, description="Served model id; None: the service's default.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens per branch.")
    temperature: float | None = Field(None, ge=0, description="Branch sampling temperature.")
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="POST /v1/chat/completions (problem as the user message) or /v1/completions.")
    request_timeout_s: float = Field(900.0, gt=0, description="Client-side timeout of one request.")
    max_attempts: int = Field(
        1, ge=1, description="Attempts per problem: after a 429 or 503 the client waits the "
                             "Retry-After seconds (1 s without the header, at most 30 s) and sends the "
                             "problem again, up to this many attempts in all; 1: no retry, the "
                             "rejection is the problem's result.")
    api_key: str | None = Field(
        default_factory=lambda: default_api_key(), exclude=True, repr=False,
        description="Bearer key for a service with API keys on (default: $TTS_RAY_API_KEY, else the "
                    "first key in the file $TTS_RAY_API_KEYS_FILE); never written to the outputs.")

    @field_validator("branches")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("branches must be >= 1 or 'auto'")
        return value

    def problem_seed(self, problem_id: str) -> int | None:
        """``tts.seed`` for the problem with this ``unique_id`` (None without a base seed)."""
        if self.seed is None:
            return None
        return self.seed + zlib.crc32(problem_id.encode("utf-8")) * EVAL_SEED_STRIDE

    def tts_options(self, problem_id: str | None = None) -> dict[str, Any]:
        """The request's ``tts`` object for the problem ``problem_id`` (fields left None are
        omitted; without ``problem_id`` the base seed is sent as is)."""
        seed = self.seed if problem_id is None else self.problem_seed(problem_id)
        tts = {"method": self.method, "branches": self.branches,
               "latency_budget_s": self.latency_budget_s, "seed": seed,
               "num_speculative_tokens": self.num_speculative_tokens, "early_stop": self.early_stop}
        return {k: v for k, v in tts.items() if v is not None}

    def body(self, problem: str, problem_id: str | None = None) -> dict[str, Any]:
        """The JSON body for one problem (``problem_id`` picks its seed: :meth:`problem_seed`)."""
        body: dict[str, Any] = {}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": problem}]
        else:
            body["prompt"] = problem
        for key in ("model", "max_tokens", "temperature"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        tts = self.tts_options(problem_id)
        if tts:
            body["tts"] = tts
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


def grade_response(problem: Problem, status: int | None, payload: Any, latency_s: float,
                   error: str | None = None) -> ProblemResult:
    """One :class:`ProblemResult` from an HTTP outcome.

    A 200 answer is graded on ``tts.answer`` when the service sends a ``tts`` block, else on
    the last ``\\boxed{}`` of choice 0 (so any OpenAI-compatible server can be evaluated).
    Anything else is wrong, with the error body's message kept.
    """
    base = {"id": problem.unique_id, "level": problem.level, "gold": problem.answer,
            "latency_s": latency_s, "status": status}
    if status != 200 or not isinstance(payload, dict):
        if error is None and isinstance(payload, dict):
            error = str((payload.get("error") or {}).get("message", payload))[:500]
        return ProblemResult(**base, correct=False, error=error or f"HTTP {status}")
    tts = payload.get("tts") if isinstance(payload.get("tts"), dict) else None
    choice = (payload.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    answer = tts.get("answer") if tts is not None else extract_answer(text or "")
    usage = payload.get("usage") or {}
    speculation = (tts or {}).get("speculation") or {}
    branches = [b for b in (tts or {}).get("branches") or [] if isinstance(b, dict)]
    return ProblemResult(
        **base, answer=answer, correct=is_equivalent(answer, problem.answer),
        num_branches=(tts or {}).get("num_branches"), tokens=usage.get("completion_tokens"),
        votes=(tts or {}).get("votes"), method=(tts or {}).get("method"),
        server_total_s=((tts or {}).get("timings_s") or {}).get("total"),
        spec_accepted_per_step=speculation.get("accepted_per_step"),
        plan=(tts or {}).get("plan"),
        branch_answers=[b.get("answer") for b in branches] if branches else None,
        branch_tokens=[int(b.get("num_tokens") or 0) for b in branches] if branches else None,
        finish_reason=choice.get("finish_reason"), seed_applied=(tts or {}).get("seed_applied"),
    )


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form; None when absent or
    not a non-negative number (the HTTP-date form is not used by the service)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 and math.isfinite(seconds) else None


async def check_health(client, url: str) -> None:
    """Raise :class:`ServiceUnavailableError` unless ``GET {url}/health`` answers 200."""
    import httpx

    try:
        response = await client.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"no service at {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise ServiceUnavailableError(f"{url}/health answered HTTP {response.status_code}")


async def evaluate(problems: Sequence[Problem], url: str, request: EvalRequest, concurrency: int = 8,
                   progress: bool = True, desc: str = "eval") -> tuple[list[ProblemResult], float]:
    """Send every problem (``concurrency`` at a time), grade the answers; return the results
    in dataset order and the wall time in seconds. A problem answered 429 or 503 is sent
    again after the Retry-After wait, up to ``request.max_attempts`` attempts; its result is
    the last attempt's (``latency_s`` is that attempt's time, the waits are in
    ``retry_wait_s``).

    Raises:
        ValueError: ``concurrency`` below 1 or no problems.
        ServiceUnavailableError: the service fails its health check before the run.
    """
    import httpx
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not problems:
        raise ValueError("no problems to evaluate")
    url = url.rstrip("/")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[ProblemResult | None] = [None] * len(problems)
    semaphore = asyncio.Semaphore(concurrency)
    counts = {"done": 0, "correct": 0, "errors": 0}
    bar = None

    async def one(index: int, problem: Problem, client: httpx.AsyncClient) -> None:
        async with semaphore:
            waited_s = 0.0
            for attempt in range(1, request.max_attempts + 1):
                started = time.perf_counter()
                status, payload, error, retry_after_s = None, None, None, None
                try:
                    response = await client.post(f"{url}{request.path}",
                                                 json=request.body(problem.problem, problem.unique_id),
                                                 timeout=request.request_timeout_s)
                    status = response.status_code
                    retry_after_s = retry_after_seconds(response.headers.get("Retry-After"))
                    try:
                        payload = response.json()
                    except ValueError:
                        error = f"HTTP {status}: body is not JSON: {response.text[:200]!r}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                latency_s = time.perf_counter() - started
                if status not in RETRYABLE_STATUSES or attempt == request.max_attempts:
                    break
                # A well-behaved client: the slot stays this client's while it waits, so the
                # load offered never exceeds ``concurrency`` requests.
                wait_s = min(retry_after_s if retry_after_s is not None else 1.0, MAX_RETRY_WAIT_S)
                await asyncio.sleep(wait_s)
                waited_s += wait_s
            # math-verify may take a moment on odd answers: keep the event loop free meanwhile.
            # Graded inside the slot: grading the last answer while the next request is timed
            # would take CPU from the service under test (a whole core of two, here).
            result = await asyncio.to_thread(grade_response, problem, status, payload, latency_s, error)
            result.attempts, result.retry_wait_s = attempt, round(waited_s, 3)
        results[index] = result
        counts["done"] += 1
        counts["correct"] += result.correct
        counts["errors"] += result.status != 200
        bar.set_postfix(acc=f"{counts['correct'] / counts['done']:.1%}", errors=counts["errors"], refresh=False)
        bar.update(1)

    headers = {"Authorization": f"Bearer {request.api_key}"} if request.api_key else None
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:
        await check_health(client, url)
        bar = tqdm(total=len(problems), desc=desc, unit="problem", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        started = time.perf_counter()
        try:
            await asyncio.gather(*(one(i, p, client) for i, p in enumerate(problems)))
        finally:
            bar.close()
        wall_s = time.perf_counter() - started
    return [r for r in results if r is not None], wall_s


def write_outputs(out_dir: str | Path, results: Sequence[ProblemResult], summary: EvalSummary) -> dict[str, Path]:
    """Write ``results.jsonl``, ``summary.json`` and ``summary.csv`` into ``out_dir`` (created);
    return their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / RESULTS_FILE, "summary_json": out / SUMMARY_JSON, "summary_csv": out / SUMMARY_CSV}
    with paths["results"].open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(result.model_dump_json() + "\n")
    paths["summary_json"].write_text(summary.model_dump_json(indent=2) + "\n")
    row = summary.model_dump()
    with paths["summary_csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    return paths


class EvalConfig(BaseModel):
    """One ``tts-ray eval`` run."""

    dataset: str = Field("arith500", description="'arith500', 'math500' or a .jsonl path.")
    dataset_source: Source = Field("auto", description="MATH-500: 'auto' (hub, else local), 'hub', 'local'.")
    limit: int | None = Field(None, ge=1, description="First N problems only.")
    url: str | None = Field(None, description="Base URL of a running service; None starts one in-process.")
    config: Path = Field(Path("deployments/local.yaml"), description="Serve config for the in-process service.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    request: EvalRequest = Field(default_factory=EvalRequest, description="What each request asks.")
    out: Path = Field(..., description="Folder for results.jsonl, summary.json, summary.csv.")
    progress: bool = Field(True, description="Show the tqdm progress bar.")


def run_eval(config: EvalConfig) -> EvalSummary:
    """Load the dataset, evaluate it against ``config.url`` (or a service started in-process
    from ``config.config`` and shut down afterwards), write the outputs, return the summary.

    Raises:
        DatasetError / DatasetNotFoundError: the dataset cannot be loaded.
        ServiceUnavailableError: the service is not reachable.
    """
    dataset = load_dataset(config.dataset, limit=config.limit, source=config.dataset_source)
    url, started_here = config.url, False
    if url is None:
        from tts_ray.serve.local import start_app

        print(f"starting the service from {config.config} (engine start-up takes minutes on CPU)...",
              file=sys.stderr, flush=True)
        url, started_here = start_app(config.config, quiet=True), True
    try:
        results, wall_s = asyncio.run(evaluate(dataset.problems, url, config.request, config.concurrency,
                                               progress=config.progress, desc=dataset.name))
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    summary = summarize(results, wall_s=wall_s, dataset=dataset.name, dataset_source=dataset.source,
                        concurrency=config.concurrency, method=config.request.method,
                        branches=config.request.branches, latency_budget_s=config.request.latency_budget_s,
                        url=url)
    write_outputs(config.out, results, summary)
    return summary
