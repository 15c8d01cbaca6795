"""Step-level PRMs: how a solution is shown to one (each step followed by a step tag), and
the vLLM engine arguments that serve a Math-Shepherd-style PRM on the pooling runner.

Training (``tts_ray.testbed``), the offline benchmark and the reward deployment all use
these two functions, so the format a PRM was trained on and the one it is served with
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from tts_ray.config import RewardConfig, resolve_model_source


def split_solution(solution: str, separator: str = "\n") -> list[str]:
    """The non-empty steps of ``solution``, stripped."""
    return [step.strip() for step in solution.split(separator) if step.strip()]


def tag_steps(prompt: str, steps: list[str], step_tag: str, separator: str = "\n") -> str:
    """``prompt`` then every step followed by ``step_tag`` and ``separator``: the PRM's input."""
    return prompt + "".join(step + step_tag + separator for step in steps)


def vllm_prm_args(config: RewardConfig) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` / ``AsyncEngineArgs`` that serve ``config``'s PRM.

    With ``two_way_tokens`` the LM head is reduced to ``logit(true) - logit(false)`` (vLLM's
    ``from_2_way_softmax``, token list ``[false_token, true_token]``); STEP pooling keeps only
    the step-tag positions, so a request returns one score per step,
    ``P(good) / (P(good) + P(bad))`` for the testbed PRM.
    """
    from transformers import AutoTokenizer

    source = resolve_model_source(config.model_source)
    tag_id = AutoTokenizer.from_pretrained(source).convert_tokens_to_ids(config.step_tag)
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
        **config.engine_kwargs,
    }
