"""Generator replicas: ray.serve.llm's ``LLMServer`` (vLLM with target + draft) plus one
method that runs a single branch and says which replica ran it."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from tts_ray.config import GeneratorPoolConfig, resolve_model_source


class GeneratorServer(LLMServer):
    """An ``LLMServer`` whose extra ``generate_branch`` returns a plain dict per branch.

    Everything else (OpenAI chat/completions, health, engine lifecycle) is ray.serve.llm's.
    """

    async def generate_branch(self, request: Any) -> dict[str, Any]:
        """Run one non-streaming completion request (n=1) and summarise it.

        Returns ``{"text", "num_tokens", "finish_reason", "stop_reason", "replica",
        "spec_accepted_tokens", "spec_verify_steps"}``; the last two come from vLLM's
        per-request speculative-decoding metrics and are None without speculation.

        Raises:
            RuntimeError: the engine answered with an error.
        """
        replica = serve.get_replica_context().replica_id.unique_id
        stream = await self.completions(request)
        response = None
        async for response in stream:
            pass
        if response is None or not hasattr(response, "choices"):
            message = getattr(getattr(response, "error", None), "message", None) or repr(response)
            raise RuntimeError(f"generator error: {message}")
        choice = response.choices[0]
        usage = response.usage
        spec = getattr(getattr(response, "metrics", None), "speculative_decoding", None)
        return {
            "spec_accepted_tokens": spec.num_accepted_draft_tokens if spec else None,
            "spec_verify_steps": spec.num_spec_steps if spec else None,
            "text": choice.text,
            "num_tokens": usage.completion_tokens if usage else 0,
            "finish_reason": choice.finish_reason,
            "stop_reason": choice.stop_reason if isinstance(choice.stop_reason, str) else None,
            "replica": replica,
        }


def llm_config(pool: GeneratorPoolConfig) -> LLMConfig:
    """The ray.serve.llm ``LLMConfig`` of a generator pool."""
    engine_kwargs: dict[str, Any] = {
        "max_model_len": pool.max_model_len,
        "gpu_memory_utilization": pool.gpu_memory_utilization,
        "tensor_parallel_size": pool.tensor_parallel_size,
        "disable_log_stats": False,
    }
    if pool.speculative is not None:
        engine_kwargs["speculative_config"] = pool.speculative.to_vllm()
        # Per-request acceptance in each response (n=1, as every branch is).
        engine_kwargs["per_request_spec_decode_metrics"] = "summary"
    engine_kwargs.update(pool.engine_kwargs)
    deployment_config: dict[str, Any] = {"max_ongoing_requests": pool.max_ongoing_requests}
    if pool.autoscaling is not None:
        deployment_config["autoscaling_config"] = pool.autoscaling.model_dump()
    else:
        deployment_config["num_replicas"] = pool.num_replicas
    kwargs: dict[str, Any] = {}
    if pool.accelerator_type is None:
        # CPU: one CPU bundle per engine worker, so ray.serve.llm does not ask for a GPU.
        kwargs["placement_group_config"] = {"bundles": [{"CPU": 1}] * pool.tensor_parallel_size}
    else:
        kwargs["accelerator_type"] = pool.accelerator_type
    return LLMConfig(
        model_loading_config={"model_id": pool.model_id,
                              "model_source": resolve_model_source(pool.model_source)},
        engine_kwargs=engine_kwargs,
        deployment_config=deployment_config,
        runtime_env=pool.runtime_env or None,
        **kwargs,
    )


def build_generator(pool: GeneratorPoolConfig):
    """A bound generator deployment for ``pool`` (named ``generator-<pool.name>``)."""
    return build_llm_deployment(
        llm_config(pool), deployment_cls=GeneratorServer,
        override_serve_options={"name": f"generator-{pool.name}"},
    )
