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

from tts_ray.config import RewardConfig
from tts_ray.engines.prm import split_solution, step_scores_from_output, tag_steps, vllm_prm_args


class RewardServer:
    """Scores solutions step by step. One vLLM engine per replica; calls run concurrently and
    vLLM batches them."""

    def __init__(self, config: dict[str, Any]) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from tts_ray.engines.vllm_offline import prepare_cpu_env

        prepare_cpu_env()
        self.config = RewardConfig.model_validate(config)
        args = vllm_prm_args(self.config)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        # the tag the engine pools on: vLLM 0.26 returns every token's score for this PRM, and
        # the scores at these positions are the step scores (step_scores_from_output)
        self.step_tag_id = args["pooler_config"]["step_tag_id"]

    def reward_input(self, prompt: str, solution: str) -> str:
        """``prompt`` then each step of ``solution`` followed by the step tag and separator."""
        sep = self.config.step_separator
        return tag_steps(prompt, split_solution(solution, sep), self.config.step_tag, sep)

    async def _score_one(self, text: str) -> list[float]:
        from vllm.pooling_params import PoolingParams

        final = None
        async for output in self.engine.encode(text, PoolingParams(task="token_classify"),
                                               request_id=f"prm-{uuid.uuid4().hex}"):
            final = output
        if final is None:
            return []
        return step_scores_from_output(final.outputs.data, getattr(final, "prompt_token_ids", None),
                                       self.step_tag_id)

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
                               "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
                               "ray_actor_options": {"num_cpus": 1}}
    if config.accelerator_type is not None:
        options["ray_actor_options"] = {"num_gpus": config.num_gpus or 1,
                                        "accelerator_type": config.accelerator_type}
    if config.runtime_env:
        options["ray_actor_options"]["runtime_env"] = config.runtime_env
    return serve.deployment(RewardServer).options(**options).bind(config.model_dump())
