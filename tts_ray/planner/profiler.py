"""``tts-ray profile``: measure each generator pool's decode speed against concurrency and draft
length k with in-process vLLM engines, plus the reward model's scoring time, and write the
profile file the planner loads.

Per engine configuration (target, draft, k) and concurrency c: c prompts decode together for
``num_tokens`` tokens with ``ignore_eos`` (so every sequence lives the whole run) and once for
one token; per-sequence seconds per token = (t(num_tokens) - t(1)) / (num_tokens - 1).
Acceptance comes from vLLM's speculative-decoding counters over a natural (EOS-stopped) run,
because text generated past EOS is not what a draft sees in service.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Sequence

from tts_ray.config import AppConfig, GeneratorPoolConfig, resolve_model_source
from tts_ray.constants import DEFAULT_TEMPERATURE
from tts_ray.engines.cpu_dtype import with_cpu_dtype
from tts_ray.planner.profile import ClusterProfile, PoolProfile, ScoringCurve, SpeedCurve

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_DRAFT_LENGTHS = (0, 2, 4)


def device_name() -> str:
    """The GPU's name, or a CPU description."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    import os

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _timed(llm, prompts: Sequence[str], params) -> float:
    started = time.perf_counter()
    llm.generate(list(prompts), params, use_tqdm=False)
    return time.perf_counter() - started


def measure_curve(llm, prompts: Sequence[str], k: int, concurrency: Sequence[int], num_tokens: int,
                  repeats: int = 2) -> SpeedCurve:
    """Measure one engine (already started with draft length ``k``)."""
    from vllm import SamplingParams

    from tts_ray.engines.vllm_offline import spec_decode_counters

    long = SamplingParams(max_tokens=num_tokens, temperature=DEFAULT_TEMPERATURE, ignore_eos=True)
    short = SamplingParams(max_tokens=1, temperature=DEFAULT_TEMPERATURE)
    _timed(llm, prompts[:2], long)  # warm-up: first calls compile kernels
    spt, prefill = [], 0.0
    for c in concurrency:
        batch = [prompts[i % len(prompts)] for i in range(c)]
        t_long = statistics.median(_timed(llm, batch, long) for _ in range(repeats))
        t_short = statistics.median(_timed(llm, batch, short) for _ in range(repeats))
        if c == concurrency[0]:
            prefill = t_short
        spt.append(max(t_long - t_short, 1e-6) / (num_tokens - 1))
    tokens_per_step, acceptance = 1.0, None
    if k > 0:
        before = spec_decode_counters(llm)
        natural = SamplingParams(max_tokens=num_tokens * 4, temperature=DEFAULT_TEMPERATURE)
        llm.generate(list(prompts), natural, use_tqdm=False)
        after = spec_decode_counters(llm)
        drafts = after.get("num_drafts", 0) - before.get("num_drafts", 0)
        proposed = after.get("num_draft_tokens", 0) - before.get("num_draft_tokens", 0)
        accepted = after.get("num_accepted_tokens", 0) - before.get("num_accepted_tokens", 0)
        if drafts:
            tokens_per_step = 1 + accepted / drafts
            acceptance = accepted / proposed if proposed else None
    return SpeedCurve(num_speculative_tokens=k, concurrency=list(concurrency), seconds_per_token=spt,
                      tokens_per_step=tokens_per_step, acceptance_rate=acceptance, prefill_s=prefill)


def _chat_prompts(model_source: str, problems: Sequence[str]) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_source)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in problems]


def profile_pools(config: AppConfig, problems: Sequence[str], concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
                  draft_lengths: Sequence[int] = DEFAULT_DRAFT_LENGTHS, num_tokens: int = 64,
                  command: str = "tts-ray profile", log=print) -> ClusterProfile:
    """Profile every generator pool of ``config`` (and the reward model, if any).

    A pool with a draft model is measured at each k in ``draft_lengths`` plus its own k; a
    pool without one at k = 0. Engines shared by pools (same target, draft and k) are
    measured once.
    """
    from tts_ray.engines import vllm_offline

    measured: dict[tuple, SpeedCurve] = {}
    pools: dict[str, PoolProfile] = {}
    for pool in config.generators:
        target = resolve_model_source(pool.model_source)
        own_k = pool.speculative.num_speculative_tokens if pool.speculative else 0
        ks = sorted(set(draft_lengths) | {own_k}) if pool.speculative else [0]
        prompts = _chat_prompts(target, problems)
        curves = []
        for k in ks:
            draft = resolve_model_source(pool.speculative.model_source) if k and pool.speculative else None
            key = (target, draft, k)
            if key not in measured:
                log(f"profiling {pool.name}: k={k} ...")
                llm = _engine(pool, target, draft, k)
                measured[key] = measure_curve(llm, prompts, k, concurrency, num_tokens)
                vllm_offline.shutdown(llm)
                curve = measured[key]
                log(f"  seconds/token {[round(s * 1000, 2) for s in curve.seconds_per_token]} ms at "
                    f"{curve.concurrency}; tokens/step {curve.tokens_per_step:.2f}")
            curves.append(measured[key])
        pools[pool.name] = PoolProfile(model_id=pool.model_id, num_speculative_tokens=own_k, curves=curves)
    scoring = _profile_scoring(config, problems, log) if config.reward is not None else None
    return ClusterProfile(device=device_name(), pools=pools, scoring=scoring,
                          created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                          command=command)


def _engine(pool: GeneratorPoolConfig, target: str, draft: str | None, k: int):
    from tts_ray.engines import vllm_offline

    kwargs = {"max_model_len": pool.max_model_len, "gpu_memory_utilization": pool.gpu_memory_utilization,
              "tensor_parallel_size": pool.tensor_parallel_size, **pool.engine_kwargs}
    kwargs = with_cpu_dtype(kwargs, on_cpu=pool.accelerator_type is None)  # as the service runs it
    if draft is None:
        return vllm_offline.generator_llm(target, **kwargs)
    method = pool.speculative.method
    if method != "draft_model":
        kwargs["speculative_config"] = {**pool.speculative.to_vllm(), "num_speculative_tokens": k}
        return vllm_offline.generator_llm(target, **kwargs)
    return vllm_offline.generator_llm(target, draft=draft, num_speculative_tokens=k, **kwargs)


def _profile_scoring(config: AppConfig, problems: Sequence[str], log, repeats: int = 3) -> ScoringCurve:
    """Fit scoring time = base + per_solution x n on solutions of the testbed's typical size."""
    from tts_ray.engines import vllm_offline
    from tts_ray.engines.prm import tag_steps, vllm_prm_args

    log("profiling the reward model ...")
    from vllm import LLM

    reward = config.reward
    llm = LLM(**vllm_prm_args(reward))
    steps = ["First step of the work: 12 + 30 = 42", "Second step: 42 - 2 = 40", "The answer is \\boxed{40}"]
    sizes, times = [1, 4, 16], []
    for n in sizes:
        texts = [tag_steps(problems[i % len(problems)] + reward.step_separator, steps, reward.step_tag,
                           reward.step_separator) for i in range(n)]
        llm.encode(texts[:1], pooling_task="token_classify", use_tqdm=False)
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
            samples.append(time.perf_counter() - started)
        times.append(statistics.median(samples))
    vllm_offline.shutdown(llm)
    mean_n, mean_t = statistics.mean(sizes), statistics.mean(times)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(sizes, times)) / sum((n - mean_n) ** 2 for n in sizes)
    slope = max(slope, 0.0)
    base = max(mean_t - slope * mean_n, 0.0)
    log(f"  scoring: {base * 1000:.1f} ms + {slope * 1000:.2f} ms per solution")
    return ScoringCurve(base_s=base, per_solution_s=slope)
