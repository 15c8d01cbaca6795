"""The reward deployment: a step-level PRM on vLLM's pooling runner, scoring many branches per call.

ray.serve.llm's ``LLMServer`` exposes chat, completions, embeddings and score, but not the
token-level pooling a PRM needs (one score per step tag), so this deployment wraps vLLM's
``AsyncLLM`` directly (recorded in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ray import serve

from tts_ray.config import RewardConfig, resolve_model_source


class RewardServer:
    """Scores solutions step by step. One vLLM engine per replica; calls run concurrently and
    vLLM batches them."""

    def __init__(self, config: dict[str, Any]) -> None:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from tts_ray.engines.vllm_offline import prepare_cpu_env

        prepare_cpu_env()
        self.config = RewardConfig.model_validate(config)
        source = resolve_model_source(self.config.model_source)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        tag_id = self.tokenizer.convert_tokens_to_ids(self.config.step_tag)
        hf_overrides: dict[str, Any] = {}
        if self.config.architecture:
            hf_overrides["architectures"] = [self.config.architecture]
        if self.config.two_way_tokens:
            hf_overrides.update(classifier_from_token=list(self.config.two_way_tokens),
                                method="from_2_way_softmax")
        args = AsyncEngineArgs(
            model=source, runner="pooling", hf_overrides=hf_overrides,
            pooler_config={"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": tag_id},
            max_model_len=self.config.max_model_len,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            **self.config.engine_kwargs,
        )
        self.engine = AsyncLLM.from_engine_args(args)

    def reward_input(self, prompt: str, solution: str) -> str:
        """``prompt`` then each step of ``solution`` followed by the step tag and separator."""
        sep = self.config.step_separator
        steps = [s.strip() for s in solution.split(sep) if s.strip()]
        return prompt + "".join(step + self.config.step_tag + sep for step in steps)

    async def _score_one(self, text: str) -> list[float]:
        from vllm.pooling_params import PoolingParams

        final = None
        async for output in self.engine.encode(text, PoolingParams(task="token_classify"),
                                               request_id=f"prm-{uuid.uuid4().hex}"):
            final = output
        return final.outputs.data.float().flatten().tolist() if final is not None else []

    async def score(self, prompt: str, solutions: list[str]) -> list[list[float]]:
        """Per-step scores in [0, 1] for every solution of ``prompt`` (one list per solution)."""
        return list(await asyncio.gather(*[self._score_one(self.reward_input(prompt, s))
                                           for s in solutions]))

    async def check_health(self) -> None:
        await self.engine.check_health()


def build_reward(config: RewardConfig):
    """A bound reward deployment for ``config``."""
    options: dict[str, Any] = {"name": "reward", "num_replicas": config.num_replicas,
                               "max_ongoing_requests": config.max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": 1}}
    if config.accelerator_type is not None:
        options["ray_actor_options"] = {"num_gpus": 1, "accelerator_type": config.accelerator_type}
    if config.runtime_env:
        options["ray_actor_options"]["runtime_env"] = config.runtime_env
    return serve.deployment(RewardServer).options(**options).bind(config.model_dump())
