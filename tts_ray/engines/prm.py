"""Step-level PRMs: how a solution is shown to one (each step followed by a step tag), and
the vLLM engine arguments that serve a Math-Shepherd-style PRM on the pooling runner.

Training (``tts_ray.testbed``), the offline benchmark and the reward deployment all use
these two functions, so the format a PRM was trained on and the one it is served with
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tts_ray.config import RewardConfig, resolve_model_source
from tts_ray.engines.cpu_dtype import with_cpu_dtype


def split_solution(solution: str, separator: str = "\n") -> list[str]:
    """The non-empty steps of ``solution``, stripped."""
    return [step.strip() for step in solution.split(separator) if step.strip()]


def tag_steps(prompt: str, steps: list[str], step_tag: str, separator: str = "\n") -> str:
    """``prompt`` then every step followed by ``step_tag`` and ``separator``: the PRM's input."""
    return prompt + "".join(step + step_tag + separator for step in steps)


def step_tag_id(config: RewardConfig) -> int:
    """The token id of ``config``'s step tag in the PRM's tokenizer."""
    from transformers import AutoTokenizer

    source = resolve_model_source(config.model_source)
    return AutoTokenizer.from_pretrained(source).convert_tokens_to_ids(config.step_tag)


def vllm_prm_args(config: RewardConfig) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` / ``AsyncEngineArgs`` that serve ``config``'s PRM.

    With ``two_way_tokens`` the LM head is reduced to ``logit(true) - logit(false)`` (vLLM's
    ``from_2_way_softmax``, token list ``[false_token, true_token]``); STEP pooling keeps only
    the step-tag positions, so a request returns one score per step,
    ``P(good) / (P(good) + P(bad))`` for the testbed PRM (vLLM 0.26 ignores STEP for this
    model class and returns every token's score: read outputs with
    :func:`step_scores_from_output`).
    """
    source = resolve_model_source(config.model_source)
    tag_id = step_tag_id(config)
    hf_overrides: dict[str, Any] = {}
    if config.architecture:
        hf_overrides["architectures"] = [config.architecture]
    if config.two_way_tokens:
        hf_overrides.update(classifier_from_token=list(config.two_way_tokens), method="from_2_way_softmax")
    return {
        "model": source,
        "runner": "pooling",
        "hf_overrides": hf_overrides,
        "pooler_config": {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": tag_id},
        "max_model_len": config.max_model_len,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        **with_cpu_dtype(config.engine_kwargs, on_cpu=config.accelerator_type is None),
    }


def engine_step_tag_id(engine: Any) -> int | None:
    """The ``step_tag_id`` a vLLM ``LLM`` or ``AsyncLLM`` was configured with (its pooler
    config), or None if it has none or the engine does not expose it."""
    pooler_config = getattr(getattr(engine, "model_config", None), "pooler_config", None)
    tag = getattr(pooler_config, "step_tag_id", None)
    return tag if isinstance(tag, int) else None


def step_scores_from_output(data: Any, prompt_token_ids: Sequence[int] | None,
                            step_tag: int | None) -> list[float]:
    """One PRM request's output (``PoolingRequestOutput.outputs.data``) as its step scores.

    vLLM's STEP pooling is meant to return one row per step-tag position. vLLM 0.26 does not do
    that for ``*ForSequenceClassification`` models (the testbed PRM, loaded with
    ``from_2_way_softmax``): ``DispatchPooler.for_seq_cls`` hard-wires ``AllPool`` for
    ``token_classify`` and ignores ``tok_pooling_type=STEP``, so every prompt token gets a row
    (fixed upstream by vllm-project/vllm#55307, in the CPU build's 0.32). Taking the last row
    then scores the separator after the last tag, not the last step. Detected by shape, not by
    version: a result with one row per prompt token (and not one per tag) is cut to the rows
    at the tag positions here; a result already pooled passes unchanged. With as many tags as
    tokens the two readings coincide.

    ``data``: a tensor (or nested list) of shape ``[rows]`` or ``[rows, labels]``. Returns the
    flattened scores as floats (one per step for a single-label head).
    """
    if hasattr(data, "float"):
        data = data.float()
    rows = data.tolist() if hasattr(data, "tolist") else list(data)
    if step_tag is not None and prompt_token_ids is not None:
        ids = list(prompt_token_ids)
        tag_positions = [i for i, t in enumerate(ids) if t == step_tag]
        if len(rows) == len(ids) and len(rows) != len(tag_positions):
            rows = [rows[i] for i in tag_positions]
    flat: list[float] = []
    for row in rows:
        if isinstance(row, (list, tuple)):
            flat.extend(float(x) for x in row)
        else:
            flat.append(float(row))
    return flat
