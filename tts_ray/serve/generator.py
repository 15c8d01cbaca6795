"""Generator replicas: ray.serve.llm's ``LLMServer`` (vLLM with target + draft) plus one
method that runs a single branch and says which replica ran it."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from typing import Any

from ray import serve
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from tts_ray.config import GeneratorPoolConfig, resolve_model_source
from tts_ray.engines.cpu_dtype import with_cpu_dtype


class GeneratorServer(LLMServer):
    """An ``LLMServer`` whose extra ``generate_branch`` returns a plain dict per branch.

    Everything else (OpenAI chat/completions, health, engine lifecycle) is ray.serve.llm's.
    """

    async def generate_branch(self, request: Any, deadline_unix_s: float | None = None) -> dict[str, Any]:
        """Run one completion request (n=1) and summarise it.

        The branch goes straight to the replica's vLLM engine (``AsyncLLM.generate`` with
        delta outputs): no OpenAI response objects or SSE lines per token, which on a fast GPU
        cost more than the decode step itself. At ``deadline_unix_s`` (a ``time.time()``
        instant) the branch stops where it is: the engine request is aborted and the partial
        text comes back with ``finish_reason="deadline"``. A caller that cancels this call
        aborts the engine request the same way.

        Returns ``{"text", "num_tokens", "finish_reason", "stop_reason", "replica",
        "spec_accepted_tokens", "spec_verify_steps", "engine_s"}``; the spec fields come from
        vLLM's per-request speculative-decoding metrics (None without speculation or when
        stopped); ``engine_s`` is the time from handing the request to the engine to its last
        output (what the replica adds around it is the call's time minus this).

        Raises:
            RuntimeError: the engine answered with an error, or the replica has no engine.
        """
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        client = self._engine_client()
        if client is None:
            raise RuntimeError("generator error: the replica's vLLM engine is not running")
        tokenizer = client.get_tokenizer()
        if inspect.isawaitable(tokenizer):  # a coroutine in older vLLM releases
            tokenizer = await tokenizer
        prompt_ids = tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens
                                      if request.add_special_tokens is not None else True)
        stop = request.stop if request.stop is None or isinstance(request.stop, list) else [request.stop]
        params = SamplingParams(n=1, temperature=request.temperature if request.temperature is not None else 1.0,
                                max_tokens=request.max_tokens, stop=stop, seed=request.seed,
                                output_kind=RequestOutputKind.DELTA)
        request_id = f"branch-{uuid.uuid4().hex}"
        submitted = time.perf_counter()
        stream = client.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)
        texts: list[str] = []
        result: dict[str, Any] = {"num_tokens": 0, "finish_reason": None, "stop_reason": None,
                                  "spec_accepted_tokens": None, "spec_verify_steps": None}
        finished = False
        try:
            while not finished:
                timeout_s = None if deadline_unix_s is None else deadline_unix_s - time.time()
                if timeout_s is not None and timeout_s <= 0:
                    break
                try:
                    # On timeout wait_for cancels the pending read, which aborts the engine request.
                    output = await asyncio.wait_for(stream.__anext__(), timeout_s)
                except StopAsyncIteration:
                    finished = True
                    break
                except TimeoutError:
                    break
                for completion in output.outputs:
                    texts.append(completion.text)
                    result["num_tokens"] += len(completion.token_ids)
                    if completion.finish_reason is not None:
                        result["finish_reason"] = completion.finish_reason
                        result["stop_reason"] = (completion.stop_reason
                                                 if isinstance(completion.stop_reason, str) else None)
                        metrics = getattr(completion, "spec_decode_metrics", None)
                        if metrics is not None:
                            summary = metrics.to_dict()
                            result["spec_accepted_tokens"] = summary.get("num_accepted_draft_tokens")
                            result["spec_verify_steps"] = summary.get("num_spec_steps")
                finished = output.finished
        finally:
            await _close(stream)
            if not finished:
                await client.abort(request_id)
        if not finished:
            result["finish_reason"] = "deadline"
        result["engine_s"] = time.perf_counter() - submitted
        return {**result, "text": "".join(texts), "replica": serve.get_replica_context().replica_id.unique_id}

    async def num_unfinished_requests(self) -> int:
        """Requests the engine holds (waiting or running): 0 once every branch has ended."""
        client = self._engine_client()
        return client.get_num_unfinished_requests() if client is not None else 0

    def _engine_client(self) -> Any:
        """ray.serve.llm's vLLM ``AsyncLLM`` inside this replica (None before it starts)."""
        return getattr(self.engine, "_engine_client", None)


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except RuntimeError:  # already closed or running: nothing left to abort
            pass


def supports_per_request_spec_metrics() -> bool:
    """Whether the installed vLLM reports speculative acceptance per request (the engine
    argument ``per_request_spec_decode_metrics``; vLLM 0.26 rejects it). Without it branches
    report no acceptance and the keeper's tokens-per-step stays unknown."""
    try:
        from vllm.config import ObservabilityConfig
    except Exception:  # noqa: BLE001 - no vLLM here: nothing to ask for
        return False
    return "per_request_spec_decode_metrics" in getattr(ObservabilityConfig, "__dataclass_fields__", {})


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
        if supports_per_request_spec_metrics():
            # Per-request acceptance in each response (n=1, as every branch is).
            engine_kwargs["per_request_spec_decode_metrics"] = "summary"
    engine_kwargs.update(pool.engine_kwargs)
    engine_kwargs = with_cpu_dtype(engine_kwargs, on_cpu=pool.accelerator_type is None)
    deployment_config: dict[str, Any] = {"max_ongoing_requests": pool.max_ongoing_requests,
                                         "graceful_shutdown_timeout_s": pool.graceful_shutdown_timeout_s}
    if pool.autoscaling is not None:
        deployment_config["autoscaling_config"] = pool.autoscaling.model_dump()
    else:
        deployment_config["num_replicas"] = pool.num_replicas
    kwargs: dict[str, Any] = {}
    placement: dict[str, Any] | None = None
    if pool.accelerator_type is None:
        # CPU: one CPU bundle per engine worker, so ray.serve.llm does not ask for a GPU.
        placement = {"bundles": [{"CPU": 1}] * pool.tensor_parallel_size}
    else:
        kwargs["accelerator_type"] = pool.accelerator_type
        if pool.placement_strategy is not None or pool.num_gpus is not None:
            # ray.serve.llm's own GPU bundles (one GPU per rank, or the pool's share of one),
            # only with another strategy or a GPU share.
            placement = {"bundle_per_worker": {"GPU": pool.num_gpus or 1}}
    if placement is not None:
        if pool.placement_strategy is not None:
            placement["strategy"] = pool.placement_strategy
        kwargs["placement_group_config"] = placement
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
