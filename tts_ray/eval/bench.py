"""``tts-ray bench``: tts_ray against what a user would otherwise run, side by side in one run.

Every system answers the same problems with the same models, one problem at a time (the
latency regime test-time scaling is about), so ratios measured in one run hold on a noisy
machine. The systems (each a curve of accuracy against mean per-problem latency):

1. ``one sample``: the target alone, greedy and at the sampling temperature;
2. ``vLLM n=B + majority``: plain in-process vLLM, ``n = B`` samples in one request and a
   majority vote, no Ray;
3. ``sequential best-of-N (PRM)``: the search-and-learn recipe on one engine, no fan-out:
   N samples generated one after another, all scored by the PRM, the best kept;
4. ``tts_ray <method>``: this service with fixed branches B (its pool's draft length k);
5. ``tts_ray auto``: this service with ``tts: {"branches": "auto"}`` (the planner); recorded
   as skipped, with the router's reason, when the router refuses ``auto``.

Peers 1-3 run first on in-process engines configured as the service's first generator pool
(target, draft model, k, context length) and its reward model, and are shut down before the
service starts: on a small machine both at once would compete for the same cores. The router
overhead figure is measured apart, once the service is up: the peers' engine is started again
beside it and the two answer each problem in alternation (see
:func:`run_interleaved_overhead`); separate passes drift too much on a small machine. The same
prompt reaches every system (the target's chat template, tokenized without extra special
tokens, as the router sends it). Engines start child processes: call :func:`run_bench` only
under ``if __name__ == "__main__":`` (the CLI does).

Writes ``bench.json`` (the headline ratios, every curve, skipped peers) and ``bench.png``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tts_ray.constants import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, REPO_DIR
from tts_ray.eval.datasets import Problem, load_dataset
from tts_ray.eval.plot import CurvePoint, dominance_violations, plot_curves
from tts_ray.eval.stats import percentile, wilson_interval
from tts_ray.grading import extract_answer, is_equivalent

ONE_SAMPLE = "one sample"
PLAIN_VLLM = "vLLM n=B + majority"
SEQUENTIAL_BON = "sequential best-of-N (PRM)"
SERVICE_PREFIX = "tts_ray "
SERVICE_AUTO = "tts_ray auto"


class BenchConfig(BaseModel):
    """One ``tts-ray bench`` run."""

    dataset: str = Field("arith500", description="Dataset (the bundled models know only ARITH).")
    limit: int = Field(50, ge=1, description="Problems: the first N of the dataset (ARITH-500 cycles "
                                             "through levels 1-5, so the first 5m hold m of each level).")
    branches: list[int] = Field([1, 4, 16], min_length=1, description="B values (and N of best-of-N).")
    service_methods: list[str] = Field(["majority", "weighted_majority", "best_of_n"], min_length=1,
                                       description="Service methods run at each B > 1.")
    config: Path = Field(REPO_DIR / "deployments" / "local.yaml", description="Serve config of the service.")
    url: str | None = Field(None, description="Use this running service instead of starting one in-process.")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, description="Sampling temperature of every sampler.")
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="Tokens per sample.")
    warmup: int = Field(8, ge=0, description="Untimed requests per system before it is measured "
                                          "(compiled shapes, caches and handles warm).")
    skip_peers: bool = Field(False, description="Measure only the service (no ratios against peers).")
    auto_budget_s: float | None = Field(None, gt=0, description="tts.latency_budget_s sent with branches=auto.")
    out_dir: Path = Field(REPO_DIR / "bench" / "results", description="Where bench.json and bench.png go.")
    progress: bool = Field(True, description="Show progress bars.")


class Measured(BaseModel):
    """One configuration of one system over the benchmark's problems."""

    system: str
    label: str
    num_problems: int
    num_correct: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    latency_mean_s: float
    latency_p50_s: float
    latency_p90_s: float
    tokens_per_problem: float | None = None
    num_errors: int = 0
    settings: dict[str, Any] = Field(default_factory=dict)

    def point(self) -> CurvePoint:
        return CurvePoint(label=self.label, latency_s=self.latency_mean_s, accuracy=self.accuracy)


def measured(system: str, label: str, correct: Sequence[bool], latencies_s: Sequence[float],
             tokens: Sequence[int] | None = None, num_errors: int = 0, **settings: Any) -> Measured:
    """Aggregate per-problem outcomes of one configuration."""
    n = len(correct)
    k = sum(bool(c) for c in correct)
    return Measured(system=system, label=label, num_problems=n, num_correct=k, accuracy=k / n,
                    accuracy_ci95=wilson_interval(k, n), latency_mean_s=sum(latencies_s) / n,
                    latency_p50_s=percentile(latencies_s, 50), latency_p90_s=percentile(latencies_s, 90),
                    tokens_per_problem=sum(tokens) / len(tokens) if tokens else None,
                    num_errors=num_errors, settings=settings)


def _app_config(config_path: Path):
    from tts_ray.config import AppConfig
    from tts_ray.serve.local import read_serve_config

    return AppConfig.model_validate(read_serve_config(config_path)["applications"][0]["args"])


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# --- peers 1-3: in-process vLLM, no Ray -------------------------------------------------------

def _peer_engine(problems: Sequence[Problem], config: BenchConfig):
    """The in-process ``vllm.LLM`` of the peers, configured as the service's first generator
    pool (target, draft model, k, context length), and the prompts the router would send for
    ``problems``: token ids of the chat template's rendering (no special tokens added on top)
    and the same text without BOS for the PRM. Returns ``(llm, prompts, reward_prompts)``."""
    from tts_ray.config import resolve_model_source
    from tts_ray.engines import vllm_offline

    pool = _app_config(config.config).generators[0]
    engine_kwargs = {"max_model_len": pool.max_model_len, "gpu_memory_utilization": pool.gpu_memory_utilization,
                     **pool.engine_kwargs}
    if pool.speculative is not None:
        engine_kwargs["speculative_config"] = pool.speculative.to_vllm()
    llm = vllm_offline.generator_llm(resolve_model_source(pool.model_source), **engine_kwargs)
    tokenizer = llm.get_tokenizer()
    prompts, reward_prompts = [], []
    for p in problems:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p.problem}], tokenize=False,
                                             add_generation_prompt=True)
        prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        bos = tokenizer.bos_token or ""
        reward_prompts.append(text[len(bos):] if bos and text.startswith(bos) else text)
    return llm, prompts, reward_prompts


def run_offline_peers(problems: Sequence[Problem], config: BenchConfig) -> list[Measured]:
    """Measure the one-sample, plain-vLLM and sequential best-of-N peers (engines started
    and shut down here)."""
    from vllm import SamplingParams

    from tts_ray.engines import vllm_offline
    from tts_ray.engines.prm import split_solution, tag_steps
    from tts_ray.methods.base import aggregate_score
    from tts_ray.methods.voting import best_of_n, majority_vote

    app = _app_config(config.config)
    llm, prompts, reward_prompts = _peer_engine(problems, config)

    def timed(prompt, params):
        started = time.perf_counter()
        out = llm.generate([prompt], params, use_tqdm=False)[0]
        return out, time.perf_counter() - started

    sampled = SamplingParams(n=1, temperature=config.temperature, max_tokens=config.max_tokens)
    for prompt in prompts[: config.warmup]:
        timed(prompt, sampled)

    results: list[Measured] = []
    for label, temperature in (("greedy", 0.0), (f"T={config.temperature:g}", config.temperature)):
        params = SamplingParams(n=1, temperature=temperature, max_tokens=config.max_tokens)
        correct, latencies, tokens = [], [], []
        for p, prompt in _progress(list(zip(problems, prompts)), f"{ONE_SAMPLE} {label}", config.progress):
            out, latency_s = timed(prompt, params)
            correct.append(is_equivalent(extract_answer(out.outputs[0].text), p.answer))
            latencies.append(latency_s)
            tokens.append(len(out.outputs[0].token_ids))
        results.append(measured(ONE_SAMPLE, label, correct, latencies, tokens, temperature=temperature))

    for b in config.branches:
        params = SamplingParams(n=b, temperature=config.temperature, max_tokens=config.max_tokens)
        correct, latencies, tokens = [], [], []
        for p, prompt in _progress(list(zip(problems, prompts)), f"{PLAIN_VLLM} B={b}", config.progress):
            out, latency_s = timed(prompt, params)
            vote = majority_vote([extract_answer(c.text) for c in out.outputs], is_equivalent)
            correct.append(is_equivalent(vote.answer, p.answer))
            latencies.append(latency_s)
            tokens.append(sum(len(c.token_ids) for c in out.outputs))
        results.append(measured(PLAIN_VLLM, f"B={b}", correct, latencies, tokens, branches=b,
                                temperature=config.temperature))

    if app.reward is None:
        vllm_offline.shutdown(llm)
        return results
    reward = app.reward
    from vllm import LLM

    from tts_ray.engines.prm import vllm_prm_args

    vllm_offline.prepare_cpu_env()
    prm = LLM(**vllm_prm_args(reward))  # exactly as the reward deployment serves it
    max_n = max(config.branches)
    # Sequential best-of-N at N is the first N samples of a sequential run, so one run of
    # max(N) samples per problem gives every N: generation time is the sum of the first N
    # sample times; the PRM scores those N (timed for each N) and the best is kept.
    per_n: dict[int, tuple[list[bool], list[float], list[int]]] = {n: ([], [], []) for n in config.branches}
    warm = [tag_steps(reward_prompts[0], split_solution("1 + 1 = 2\n\\boxed{2}"), reward.step_tag)]
    vllm_offline.score_steps(prm, warm)
    for p, prompt, reward_prompt in _progress(list(zip(problems, prompts, reward_prompts)), SEQUENTIAL_BON,
                                              config.progress):
        texts, times, counts = [], [], []
        for _ in range(max_n):
            out, latency_s = timed(prompt, sampled)
            texts.append(out.outputs[0].text)
            times.append(latency_s)
            counts.append(len(out.outputs[0].token_ids))
        for n in config.branches:
            inputs = [tag_steps(reward_prompt, split_solution(t, reward.step_separator), reward.step_tag,
                                reward.step_separator) for t in texts[:n]]
            started = time.perf_counter()
            rows = vllm_offline.score_steps(prm, inputs)
            scores = [aggregate_score(row, reward.aggregate) for row in rows]
            vote = best_of_n([extract_answer(t) for t in texts[:n]], scores)
            score_s = time.perf_counter() - started
            correct, latencies, tokens = per_n[n]
            correct.append(is_equivalent(vote.answer, p.answer))
            latencies.append(sum(times[:n]) + score_s)
            tokens.append(sum(counts[:n]))
    for n in config.branches:
        correct, latencies, tokens = per_n[n]
        results.append(measured(SEQUENTIAL_BON, f"N={n}", correct, latencies, tokens, branches=n,
                                temperature=config.temperature, aggregate=reward.aggregate))
    vllm_offline.shutdown(prm)
    vllm_offline.shutdown(llm)
    return results


# --- peers 4-5: the service -------------------------------------------------------------------

def _service_runs(config: BenchConfig, num_speculative_tokens: int | None = None
                  ) -> list[tuple[str, str, dict[str, Any]]]:
    """(system, label, request fields) of every fixed-B service configuration; with
    ``num_speculative_tokens`` every run is pinned to the pool of that draft length k."""
    runs = _fixed_runs(config)
    if num_speculative_tokens is not None:
        runs = [(system, label, {**fields, "num_speculative_tokens": num_speculative_tokens})
                for system, label, fields in runs]
    return runs


def _fixed_runs(config: BenchConfig) -> list[tuple[str, str, dict[str, Any]]]:
    runs = [(f"{SERVICE_PREFIX}single", "greedy B=1", {"method": "single", "branches": 1, "temperature": 0.0})]
    for method in config.service_methods:
        for b in config.branches:
            if b == 1:
                # one branch is the plain sample whatever the merge: measured once, shared by the curves
                if method == config.service_methods[0]:
                    runs.append((f"{SERVICE_PREFIX}single", f"T={config.temperature:g} B=1",
                                 {"method": "single", "branches": 1}))
                continue
            runs.append((f"{SERVICE_PREFIX}{method}", f"B={b}", {"method": method, "branches": b}))
    return runs


async def _probe(url: str, request) -> tuple[int | None, str | None]:
    """Send one request; return its status and error message (None when it succeeded)."""
    import httpx

    api_key = getattr(request, "api_key", None)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with httpx.AsyncClient(headers=headers) as client:
        try:
            response = await client.post(f"{url}{request.path}", json=request.body("1 + 1"),
                                         timeout=request.request_timeout_s)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
    if response.status_code == 200:
        return 200, None
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    return response.status_code, message


def run_service(problems: Sequence[Problem], config: BenchConfig
                ) -> tuple[list[Measured], dict[str, str], dict[str, Any] | None]:
    """Measure the service's fixed-B configurations and ``branches: auto``, and, unless
    ``config.skip_peers``, the router overhead interleaved with the in-process engine
    (:func:`run_interleaved_overhead`); returns the measurements, the skipped systems with
    their reasons, and the interleaved figures (None when skipped). Starts the app
    in-process unless ``config.url`` is set (and shuts it down afterwards). A non-200 answer
    during the interleaved measurement leaves it out (listed in the skipped systems): the
    separate passes still give the ratio."""
    import httpx

    from tts_ray.eval.runner import EvalRequest, evaluate

    url, started_here = config.url, False
    if url is None:
        from tts_ray.serve.local import start_app

        print(f"starting the service from {config.config}...", file=sys.stderr, flush=True)
        url, started_here = start_app(config.config, quiet=True), True
    results: list[Measured] = []
    skipped: dict[str, str] = {}
    interleaved = None
    try:
        base = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        warm = EvalRequest(**base, method="single", branches=1)
        if config.warmup:
            asyncio.run(evaluate(problems[: config.warmup], url, warm, concurrency=1, progress=False))
        # fixed (B, k): k pinned to the first pool's draft length, the engine the peers ran
        pool = _app_config(config.config).generators[0]
        k = pool.speculative.num_speculative_tokens if pool.speculative else 0
        if not config.skip_peers:
            try:
                interleaved = run_interleaved_overhead(problems, config, url, num_speculative_tokens=k)
            except httpx.HTTPStatusError as error:  # the separate passes still give the ratio
                skipped["router overhead, interleaved"] = f"the service answered {error.response.status_code}"
        for system, label, fields in _service_runs(config, k):
            request = EvalRequest(**{**base, **fields})
            rows, _ = asyncio.run(evaluate(problems, url, request, concurrency=1, progress=config.progress,
                                           desc=f"{system} {label}"))
            results.append(_from_rows(system, label, rows, request))
        auto = EvalRequest(**base, branches="auto", latency_budget_s=config.auto_budget_s)
        status, message = asyncio.run(_probe(url, auto))
        if status != 200:
            skipped[SERVICE_AUTO] = f"router answered {status} to tts.branches='auto': {message}"
        else:
            rows, _ = asyncio.run(evaluate(problems, url, auto, concurrency=1, progress=config.progress,
                                           desc=SERVICE_AUTO))
            results.append(_from_rows(SERVICE_AUTO, "branches=auto", rows, auto))
    finally:
        if started_here:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    return results, skipped, interleaved


def run_interleaved_overhead(problems: Sequence[Problem], config: BenchConfig, url: str,
                             num_speculative_tokens: int | None = None) -> dict[str, Any]:
    """Router overhead measured in alternation: the peers' in-process engine (started here,
    beside the running service, and shut down after) and the service answer each problem
    greedily with one branch, one right after the other, the order swapped every problem.
    Both see the same moment of the machine, so the engine's own pass-to-pass drift (20%
    between two passes on two shared cores, ``bench/overhead.py``) cancels out of the ratio.
    Only one of them works at a time: the service's engines are idle while the in-process one
    runs, and the other way round. ``num_speculative_tokens`` pins the service's requests to the
    pool with that draft length k (the in-process engine's), so both run the same engine.

    Returns ``{"pairs", "in_process_mean_s", "service_mean_s", "ratio_of_means",
    "median_pair_ratio", "same_answer_share", "in_process_tokens_per_problem",
    "service_tokens_per_problem"}`` (``same_answer_share``: problems where both extracted the
    same answer, a check that they did the same work).

    Raises:
        httpx.HTTPStatusError: the service did not answer 200.
    """
    import httpx
    from vllm import SamplingParams

    from tts_ray.engines import vllm_offline
    from tts_ray.eval.runner import EvalRequest

    llm, prompts, _ = _peer_engine(problems, config)
    request = EvalRequest(method="single", branches=1, temperature=0.0, max_tokens=config.max_tokens,
                          num_speculative_tokens=num_speculative_tokens)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=config.max_tokens)
    headers = {"Authorization": f"Bearer {request.api_key}"} if request.api_key else None

    def in_process(index: int) -> tuple[float, str | None, int]:
        started = time.perf_counter()
        out = llm.generate([prompts[index]], params, use_tqdm=False)[0].outputs[0]
        return time.perf_counter() - started, extract_answer(out.text), len(out.token_ids)

    try:
        with httpx.Client(headers=headers, timeout=request.request_timeout_s) as client:
            def service(index: int) -> tuple[float, str | None, int]:
                started = time.perf_counter()
                response = client.post(f"{url.rstrip('/')}{request.path}", json=request.body(problems[index].problem))
                latency_s = time.perf_counter() - started
                response.raise_for_status()
                payload = response.json()
                text = payload["choices"][0]["message"]["content"]
                return latency_s, extract_answer(text), payload.get("usage", {}).get("completion_tokens", 0)

            for index in range(min(config.warmup, len(problems))):
                in_process(index), service(index)
            ours, theirs = [], []
            for index in _progress(range(len(problems)), "router overhead, interleaved", config.progress,
                                   total=len(problems)):
                first, second = (service, in_process) if index % 2 == 0 else (in_process, service)
                a, b = first(index), second(index)
                ours.append(a if first is service else b)
                theirs.append(b if first is service else a)
    finally:
        vllm_offline.shutdown(llm)
    ours_s, theirs_s = [o[0] for o in ours], [t[0] for t in theirs]
    ratios = sorted(o / t for o, t in zip(ours_s, theirs_s))
    return {"pairs": len(ours), "in_process_mean_s": sum(theirs_s) / len(theirs_s),
            "service_mean_s": sum(ours_s) / len(ours_s),
            "ratio_of_means": sum(ours_s) / sum(theirs_s), "median_pair_ratio": percentile(ratios, 50),
            "same_answer_share": sum(o[1] == t[1] for o, t in zip(ours, theirs)) / len(ours),
            "in_process_tokens_per_problem": sum(t[2] for t in theirs) / len(theirs),
            "service_tokens_per_problem": sum(o[2] for o in ours) / len(ours)}


def _from_rows(system: str, label: str, rows, request) -> Measured:
    branches = [r.num_branches for r in rows if r.num_branches is not None]
    return measured(system, label, [r.correct for r in rows], [r.latency_s for r in rows],
                    [r.tokens for r in rows if r.tokens is not None],
                    num_errors=sum(r.status != 200 for r in rows),
                    **request.tts_options(), temperature=request.temperature,
                    mean_branches_run=sum(branches) / len(branches) if branches else None)


# --- the figures ---------------------------------------------------------------------------

def _find(results: Sequence[Measured], system: str, label: str) -> Measured | None:
    return next((m for m in results if m.system == system and m.label == label), None)


def _speedups(results: Sequence[Measured], service: Sequence[Measured]) -> dict[str, dict[str, Any]]:
    """For each sequential best-of-N point: the fastest of ``service`` at least as accurate,
    and the latency ratio (None where no service configuration is that accurate)."""
    speedups = {}
    for m in (r for r in results if r.system == SEQUENTIAL_BON):
        as_good = [s for s in service if s.accuracy >= m.accuracy]
        best = min(as_good, key=lambda s: s.latency_mean_s) if as_good else None
        speedups[m.label] = {
            "sequential_accuracy": m.accuracy, "sequential_latency_s": m.latency_mean_s,
            "service_config": f"{best.system} {best.label}" if best else None,
            "service_accuracy": best.accuracy if best else None,
            "service_latency_s": best.latency_mean_s if best else None,
            "speedup": m.latency_mean_s / best.latency_mean_s if best else None}
    return speedups


def figures(results: Sequence[Measured], config: BenchConfig,
            interleaved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline ratios from the measurements (None where a needed system is missing).

    - ``router_overhead_ratio``: service greedy B=1 over in-process vLLM greedy, same prompts
      (greedy makes both produce the same tokens, so the ratio is the serving overhead): from
      the ``interleaved`` measurement when given (:func:`run_interleaved_overhead`), else
      from the two separate passes (``router_overhead_ratio_separate_passes``, always);
    - ``branch16_over_branch1_latency``: the service's first method at B=16 over its B=1
      (both at the sampling temperature);
    - ``speedup_vs_sequential_best_of_n``: sequential best-of-N at its largest N over the
      fastest service configuration at least as accurate (``..._sampled_only``: among the
      service's sampled configurations, greedy decoding left out);
    - ``dominates_peers``: at every peer point's latency, the service's best accuracy within
      that latency is at least the peer's (violations listed in ``dominance``).
    """
    service = [m for m in results if m.system.startswith(SERVICE_PREFIX)]
    peers: dict[str, list[CurvePoint]] = {}
    for m in results:
        if not m.system.startswith(SERVICE_PREFIX):
            peers.setdefault(m.system, []).append(m.point())
    out: dict[str, Any] = {}

    ours, theirs = (_find(results, f"{SERVICE_PREFIX}single", "greedy B=1"), _find(results, ONE_SAMPLE, "greedy"))
    separate = ours.latency_mean_s / theirs.latency_mean_s if ours and theirs else None
    out["router_overhead_ratio"] = interleaved["ratio_of_means"] if interleaved else separate
    out["router_overhead_ratio_separate_passes"] = separate
    sampled_ours = _find(results, f"{SERVICE_PREFIX}single", f"T={config.temperature:g} B=1")
    sampled_theirs = _find(results, PLAIN_VLLM, "B=1")
    out["router_overhead_ratio_sampled"] = (sampled_ours.latency_mean_s / sampled_theirs.latency_mean_s
                                            if sampled_ours and sampled_theirs else None)

    b16 = _find(results, f"{SERVICE_PREFIX}{config.service_methods[0]}", "B=16")
    out["branch16_over_branch1_latency"] = (b16.latency_mean_s / sampled_ours.latency_mean_s
                                            if b16 and sampled_ours else None)
    out["branch16_over_branch1_latency_by_method"] = {
        method: (m.latency_mean_s / sampled_ours.latency_mean_s)
        for method in config.service_methods
        if sampled_ours and (m := _find(results, f"{SERVICE_PREFIX}{method}", "B=16"))}

    largest = f"N={max(config.branches)}"
    speedups = _speedups(results, service)
    out["speedup_vs_sequential_best_of_n"] = speedups.get(largest, {}).get("speedup")
    out["speedup_vs_sequential_best_of_n_by_n"] = speedups
    # The same comparison among sampled service configurations only (greedy decoding left out),
    # i.e. test-time scaling against test-time scaling.
    sampled = [m for m in service if m.settings.get("temperature") != 0.0]
    sampled_speedups = _speedups(results, sampled)
    out["speedup_vs_sequential_best_of_n_sampled_only"] = sampled_speedups.get(largest, {}).get("speedup")
    out["speedup_vs_sequential_best_of_n_sampled_only_by_n"] = sampled_speedups

    if service and peers:
        violations = dominance_violations([m.point() for m in service], peers)
        fastest = min(m.latency_mean_s for m in service)
        out["dominates_peers"] = not violations
        out["dominance"] = {
            "violations": violations,
            # Below the service's fastest configuration it has no point at all: the serving
            # overhead alone decides there. Above it, the curves compare like for like.
            "dominates_above_service_min_latency": not [v for v in violations if v["latency_s"] >= fastest],
            "service_min_latency_s": fastest}
    else:
        out["dominates_peers"] = None
    return out


def plot_document(document: dict[str, Any], out: str | Path) -> Path:
    """Draw ``bench.json``'s curves as the accuracy-latency PNG at ``out`` (so the plot can be
    redrawn without measuring again). The service's sampled B=1 point starts every fixed-B
    service curve: one branch is the same request whatever the merge."""
    curves = {system: [Measured.model_validate(m) for m in ms] for system, ms in document["curves"].items()}
    temperature = document["config"]["temperature"]
    single = next((m for m in curves.get(f"{SERVICE_PREFIX}single", []) if m.label == f"T={temperature:g} B=1"),
                  None)
    plotted = {system: [m.point() for m in ms] for system, ms in curves.items()}
    for method in document["config"]["service_methods"]:
        if single is not None and f"{SERVICE_PREFIX}{method}" in plotted:
            plotted[f"{SERVICE_PREFIX}{method}"].insert(0, single.point())
    # one-sample systems hold unrelated settings (greedy, sampled): points, not a curve
    return plot_curves(plotted, out, markers_only={ONE_SAMPLE, f"{SERVICE_PREFIX}single"},
                       title=f"{document['dataset']}, first {document['num_problems']} problems: "
                             "accuracy against mean latency")


def refigure(path: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Recompute the figures of a saved ``bench.json`` from its curves (no measuring), write
    it back (to ``out_dir`` if given) with ``bench.png`` beside it, and return it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    document = json.loads(path.read_text())
    config = BenchConfig.model_validate(document["config"])
    results = [Measured.model_validate(m) for ms in document["curves"].values() for m in ms]
    for key in [k for k in document if k.startswith(("router_overhead", "branch16", "speedup", "dominance"))]:
        del document[key]
    document = {**figures(results, config, document.get("interleaved_b1")),
                **{k: v for k, v in document.items() if k != "dominates_peers"}}
    out = Path(out_dir) if out_dir is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_document(document, out / "bench.png")
    return document


def run_bench(config: BenchConfig, command: str = "tts-ray bench") -> dict[str, Any]:
    """Measure every system, write ``bench.json`` and ``bench.png`` into ``config.out_dir``,
    print the headline figures, and return the JSON document.

    Raises:
        DatasetError / DatasetNotFoundError: the dataset cannot be loaded.
    """
    problems = load_dataset(config.dataset, limit=config.limit).problems
    started = time.perf_counter()
    results: list[Measured] = []
    timings: dict[str, float] = {}
    if not config.skip_peers:
        phase = time.perf_counter()
        results += run_offline_peers(problems, config)
        timings["peers_s"] = time.perf_counter() - phase
    phase = time.perf_counter()
    service_results, skipped, interleaved = run_service(problems, config)
    results += service_results
    timings["service_s"] = time.perf_counter() - phase
    timings["total_s"] = time.perf_counter() - started

    curves: dict[str, list[Measured]] = {}
    for m in results:
        curves.setdefault(m.system, []).append(m)

    document = {
        **figures(results, config, interleaved),
        "interleaved_b1": interleaved,
        "num_problems": len(problems),
        "problem_ids": [p.unique_id for p in problems],
        "dataset": config.dataset,
        "latency": "mean per-problem wall time, one request at a time, same problems for every system",
        "curves": {system: [m.model_dump() for m in ms] for system, ms in curves.items()},
        "skipped": skipped,
        "config": json.loads(config.model_dump_json()),
        "timings_s": timings,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_document(document, config.out_dir / "bench.png")
    headline = {k: document[k] for k in ("router_overhead_ratio", "branch16_over_branch1_latency",
                                          "speedup_vs_sequential_best_of_n", "dominates_peers", "skipped")}
    print(json.dumps(headline, indent=2))
    print(f"wrote {config.out_dir / 'bench.json'} and {config.out_dir / 'bench.png'}", file=sys.stderr)
    return document
