"""In-process vLLM engines for the testbed: a generator (target + optional draft) and a
step-level PRM scorer, plus readers for vLLM's speculative-decoding counters.

vLLM is imported lazily. Engines start child processes, so callers must construct them under
``if __name__ == "__main__":`` or inside a Ray actor. On CPU the KV cache size comes from
``VLLM_CPU_KVCACHE_SPACE`` (GiB), set here to a small default unless the caller set it.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

from tts_ray.constants import (
    BAD_TOKEN,
    CPU_GPU_MEMORY_UTILIZATION,
    CPU_KVCACHE_SPACE_GIB,
    GOOD_TOKEN,
    MAX_MODEL_LEN,
    STEP_TAG_TOKEN,
)


@dataclass(frozen=True)
class StepPRMSpec:
    """How a Math-Shepherd-style PRM reads steps: a tag token after each step, and the two
    label tokens whose probabilities at the tag give the step score."""

    step_tag: str = STEP_TAG_TOKEN
    good_token: str = GOOD_TOKEN
    bad_token: str = BAD_TOKEN


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

    kwargs = dict(gpu_memory_utilization=CPU_GPU_MEMORY_UTILIZATION, max_model_len=MAX_MODEL_LEN,
                  disable_log_stats=False)
    if draft is not None:
        kwargs["speculative_config"] = {"method": "draft_model", "model": str(draft),
                                        "num_speculative_tokens": num_speculative_tokens}
    kwargs.update(engine_kwargs)
    return LLM(str(target), **kwargs)


def prm_llm(prm: str | Path, spec: StepPRMSpec = StepPRMSpec(), **engine_kwargs):
    """A ``vllm.LLM`` running the causal-LM PRM on vLLM's pooling runner.

    The LM head is reduced to ``logit(good) - logit(bad)`` (vLLM's ``from_2_way_softmax``
    conversion, whose token list is ``[false_token, true_token]``), and STEP pooling keeps
    only the positions of the step tag, so each request returns one score per step:
    ``sigmoid(logit(good) - logit(bad)) = P(good) / (P(good) + P(bad))``.
    """
    prepare_cpu_env()
    from transformers import AutoTokenizer
    from vllm import LLM

    tag_id = AutoTokenizer.from_pretrained(str(prm)).convert_tokens_to_ids(spec.step_tag)
    kwargs = dict(gpu_memory_utilization=CPU_GPU_MEMORY_UTILIZATION, max_model_len=MAX_MODEL_LEN)
    kwargs.update(engine_kwargs)
    return LLM(
        str(prm),
        runner="pooling",
        hf_overrides={"architectures": ["LlamaForSequenceClassification"],
                      "classifier_from_token": [spec.bad_token, spec.good_token],
                      "method": "from_2_way_softmax"},
        pooler_config={"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": tag_id},
        **kwargs,
    )


def score_steps(llm, texts: list[str]) -> list[list[float]]:
    """Per-step scores in [0, 1] for each PRM input text (one score per step tag)."""
    outputs = llm.encode(texts, pooling_task="token_classify", use_tqdm=False)
    return [out.outputs.data.float().flatten().tolist() for out in outputs]


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
