"""In-process vLLM engines for the testbed: a generator (target + optional draft) and a
step-level PRM scorer, plus readers for vLLM's speculative-decoding counters.

vLLM is imported lazily. Engines start child processes, so callers must construct them under
``if __name__ == "__main__":`` or inside a Ray actor. On CPU the KV cache size comes from
``VLLM_CPU_KVCACHE_SPACE`` (GiB), set here to a small default unless the caller set it.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from tts_ray.constants import (
    CPU_GPU_MEMORY_UTILIZATION,
    CPU_KVCACHE_SPACE_GIB,
    MAX_MODEL_LEN,
)


def prepare_cpu_env() -> None:
    """Set vLLM's CPU KV-cache size if the caller has not chosen one."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_SPACE_GIB)


def generator_llm(target: str | Path, draft: str | Path | None = None, num_speculative_tokens: int = 4,
                  **engine_kwargs):
    """A ``vllm.LLM`` for the target, speculating with ``draft`` when given.

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``dtype``, ``seed``, ``max_num_seqs``).
    """
    prepare_cpu_env()
    from vllm import LLM

    kwargs = {"gpu_memory_utilization": CPU_GPU_MEMORY_UTILIZATION, "max_model_len": MAX_MODEL_LEN,
              "disable_log_stats": False}
    if draft is not None:
        kwargs["speculative_config"] = {"method": "draft_model", "model": str(draft),
                                        "num_speculative_tokens": num_speculative_tokens}
    kwargs.update(engine_kwargs)
    return LLM(str(target), **kwargs)


def prm_llm(prm: str | Path, **engine_kwargs):
    """A ``vllm.LLM`` serving the step PRM at ``prm`` on vLLM's pooling runner, configured as
    the reward deployment configures it (:func:`tts_ray.engines.prm.vllm_prm_args` with
    :class:`~tts_ray.config.RewardConfig`'s defaults); ``engine_kwargs`` override."""
    prepare_cpu_env()
    from vllm import LLM

    from tts_ray.config import RewardConfig
    from tts_ray.engines.prm import vllm_prm_args

    args = vllm_prm_args(RewardConfig(model_source=str(prm)))
    args.update(engine_kwargs)
    return LLM(**args)


def score_steps(llm, texts: list[str]) -> list[list[float]]:
    """Per-step scores in [0, 1] for each PRM input text (one score per step tag), also where
    vLLM returns a score for every token (0.26: :func:`tts_ray.engines.prm.step_scores_from_output`)."""
    from tts_ray.engines.prm import engine_step_tag_id, step_scores_from_output

    outputs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
    tag = engine_step_tag_id(llm)
    return [step_scores_from_output(out.outputs.data, getattr(out, "prompt_token_ids", None), tag)
            for out in outputs]


def spec_decode_counters(llm) -> dict[str, float]:
    """vLLM's cumulative speculative-decoding counters (drafts, draft and accepted tokens).

    Returns an empty dict for an engine without speculation.
    """
    counters = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode_") and hasattr(metric, "value"):
            counters[metric.name.removeprefix("vllm:spec_decode_")] = float(metric.value)
    return counters


def shutdown(llm) -> None:
    """Stop an engine's background processes and free its memory."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
