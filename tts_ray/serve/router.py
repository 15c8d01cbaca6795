"""The router ingress: OpenAI-compatible endpoints that fan a request out into branches over
the generator replicas, score them with the reward deployment, and merge them.

Each branch (or search step) is its own request to a generator deployment, so Serve spreads
branches over replicas and each can be cancelled alone; the prompt is shared through
vLLM's prefix cache. Client errors (malformed JSON, wrong types, unknown method or model,
limits) become 4xx answers with OpenAI-style bodies; they never reach the engines.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve

from tts_ray.config import AppConfig, resolve_model_source
from tts_ray.engines.base import Completion
from tts_ray.methods import METHODS, SCORED_METHODS, MethodContext, MethodError, MethodResult
from tts_ray.methods.base import speculation_summary
from tts_ray.planner.early_stop import EarlyStopRule
from tts_ray.planner.planner import PlanRequest
from tts_ray.serve.budget import observations_of
from tts_ray.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequestBody,
    validation_message,
)

# Backstop after the deadline in case a method overruns it (it should stop its branches first).
HARD_DEADLINE_GRACE_S = 0.2

app = FastAPI(title="tts_ray", description="Latency-aware test-time scaling over vLLM")


class HandleGenerator:
    """The ``Generator`` protocol over a generator deployment's handle."""

    def __init__(self, handle, model_id: str, seed: int | None = None) -> None:
        self.handle, self.model_id = handle, model_id
        self._seed = seed

    async def generate(self, prompt: str, *, max_tokens: int, temperature: float,
                       stop: list[str] | None = None, add_special_tokens: bool = True,
                       deadline_s: float | None = None) -> Completion:
        from ray.serve.llm.openai_api_models import CompletionRequest

        started = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if self._seed is not None:
            kwargs["seed"] = self._seed
            self._seed += 1
        request = CompletionRequest(model=self.model_id, prompt=prompt, max_tokens=max_tokens,
                                    temperature=temperature, stop=stop or None, n=1,
                                    add_special_tokens=add_special_tokens, **kwargs)
        # Cancelling this await (deadline, client gone) cancels the replica call, which
        # aborts the engine request.
        result = await self.handle.generate_branch.remote(request, deadline_s)
        return Completion(text=result["text"], num_tokens=result["num_tokens"],
                          finish_reason=result["finish_reason"], stop_reason=result["stop_reason"],
                          replica=result["replica"], spec_accepted_tokens=result["spec_accepted_tokens"],
                          spec_verify_steps=result["spec_verify_steps"],
                          elapsed_s=time.perf_counter() - started)


class HandleScorer:
    """The ``StepScorer`` protocol over the reward deployment's handle."""

    def __init__(self, handle, prompt_for_reward: str) -> None:
        self.handle, self.prompt_for_reward = handle, prompt_for_reward

    async def score(self, prompt: str, solutions: list[str]) -> list[list[float]]:
        # The reward model reads its own rendering of the prompt (no BOS text: its tokenizer adds it).
        return await self.handle.score.remote(self.prompt_for_reward, solutions)


def _error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers=headers)


@serve.deployment(name="router", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class Router:
    """The ingress deployment. ``generators`` are bound generator deployments in the order of
    ``config.generators``; ``budget`` is the bound budget deployment (the cluster-wide ledger
    and planner); ``reward`` is the bound reward deployment or None."""

    def __init__(self, config: dict[str, Any], generators: list, budget, reward=None) -> None:
        from transformers import AutoTokenizer

        self.config = AppConfig.model_validate(config)
        # Pools by name; several pools may serve one model (e.g. with different draft lengths).
        self.pools = {pool.name: (pool, handle) for pool, handle in zip(self.config.generators, generators)}
        self.models = list(dict.fromkeys(pool.model_id for pool in self.config.generators))
        self.default_model = self.models[0]
        self.budget, self.reward = budget, reward
        self.tokenizers = {}
        for pool in self.config.generators:
            if pool.model_id not in self.tokenizers:
                self.tokenizers[pool.model_id] = AutoTokenizer.from_pretrained(
                    resolve_model_source(pool.model_source))
        # vLLM's CPU backend crashes on per-request seeds when a chunked prefill is discarded
        # ("CPU Generator does not use offset"), so seeds are passed to GPU pools only.
        self.seeds_supported = {pool.name: pool.accelerator_type is not None for pool in self.config.generators}
        self._background: set[asyncio.Task] = set()

    # --- endpoints -----------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": model_id, "object": "model", "owned_by": "tts_ray", "created": 0}
            for model_id in self.models]}

    @app.get("/v1/tts/status")
    async def tts_status(self) -> dict[str, Any]:
        """The budget keeper's view: branches in flight per pool, live speed factors, and the
        latency model's recent prediction error."""
        return await self.budget.status.remote()

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._handle(request, chat=False)

    # --- request handling ----------------------------------------------------------------

    async def _handle(self, request: Request, chat: bool):
        received, received_unix = time.perf_counter(), time.time()
        try:
            body = await self._parse(request, ChatRequest if chat else CompletionRequestBody)
            if body.model is not None and body.model not in self.models:
                raise APIError(404, f"model {body.model!r} does not exist; see GET /v1/models",
                               param="model", code="model_not_found")
            options = self._options(body, chat)
        except APIError as error:
            return _error_response(error)
        request_id = uuid.uuid4().hex
        admitted = await self.budget.admit.remote(request_id, options["plan_request"])
        if "infeasible" in admitted:
            info = admitted["infeasible"]
            retry_after = str(int(math.ceil(info["retry_after_s"])))
            return _error_response(APIError(
                429, f"{info['message']}; retry after {retry_after}s or with a larger latency_budget_s",
                type="rate_limit_error", param="tts.latency_budget_s", code="budget_infeasible"),
                headers={"Retry-After": retry_after})
        if "error" in admitted:
            return _error_response(APIError(400, admitted["error"], param="tts.num_speculative_tokens"
                                            if options["plan_request"]["num_speculative_tokens"] is not None
                                            else "model"))
        plan = admitted["plan"]
        ctx = self._context(body, options, plan, deadline_s=received_unix + options["budget_s"])
        result: MethodResult | None = None
        try:
            started = time.perf_counter()
            # The methods stop their branches before the deadline; this is only the backstop.
            hard_limit_s = max(0.0, options["budget_s"] - (started - received)) + HARD_DEADLINE_GRACE_S
            result = await asyncio.wait_for(METHODS[plan["method"]](ctx, options["prompt"]), timeout=hard_limit_s)
        except asyncio.TimeoutError:
            return _error_response(APIError(
                408, f"no answer within latency_budget_s={options['budget_s']}", type="timeout_error",
                param="tts.latency_budget_s", code="deadline_exceeded"))
        except MethodError as error:
            return _error_response(APIError(400, str(error), param="tts.method"))
        finally:
            self._release(request_id, plan, result, time.perf_counter() - received)
        result.timings_s["queue"] = started - received
        result.timings_s["total"] = time.perf_counter() - received
        payload = self._response(result, plan, ctx, options, chat)
        if body.stream:
            return StreamingResponse(self._stream(payload, chat), media_type="text/event-stream")
        return JSONResponse(payload)

    def _release(self, request_id: str, plan: dict[str, Any], result: MethodResult | None,
                 elapsed_s: float) -> None:
        """Tell the keeper the request's branches are free (in the background: the answer
        does not wait for the ledger)."""
        observations = observations_of(result.branches) if result is not None else []
        actual_s = elapsed_s if result is not None and not result.partial else None
        task = asyncio.get_running_loop().create_task(self._send_release(
            request_id, observations, plan.get("predicted_s"), actual_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_release(self, request_id, observations, predicted_s, actual_s) -> None:
        await self.budget.release.remote(request_id, observations, predicted_s, actual_s)

    async def _parse(self, request: Request, model):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise APIError(400, message, param=param) from None

    def _options(self, body, chat: bool) -> dict[str, Any]:
        """Validate the request against the router's limits and build the prompt and what is
        left to the planner.

        Raises:
            APIError: a limit is exceeded or the method needs a missing reward model.
        """
        router = self.config.router
        tts = body.tts
        method = tts.method if tts and tts.method else None
        branches = tts.branches if tts and tts.branches else None
        auto = method == "auto" or branches == "auto"
        if method is None:
            method = router.default_method
        if branches is None:
            branches = "auto" if tts and tts.method == "auto" else router.default_branches
        if branches != "auto" and branches > router.max_branches:
            raise APIError(400, f"tts.branches={branches} is above the limit of {router.max_branches}",
                           param="tts.branches")
        budget_s = tts.latency_budget_s if tts and tts.latency_budget_s else router.default_latency_budget_s
        if budget_s > router.max_latency_budget_s:
            raise APIError(400, f"tts.latency_budget_s={budget_s} is above the limit of "
                                f"{router.max_latency_budget_s}", param="tts.latency_budget_s")
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens or router.default_max_tokens
        if max_tokens > router.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} is above the limit of {router.max_tokens_limit}",
                           param="max_tokens")
        if method in SCORED_METHODS and self.reward is None:
            raise APIError(400, f"method {method!r} needs a reward model, and none is configured",
                           param="tts.method")
        # An unnamed model lets an auto plan pick the tier; otherwise the default model.
        model_id = body.model or (None if auto else self.default_model)
        tokenizer = self.tokenizers[model_id or self.default_model]
        if chat:
            messages = [{"role": m.role, "content": m.content} for m in body.messages]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            add_special_tokens = False
            bos = tokenizer.bos_token or ""
            reward_prompt = prompt[len(bos):] if bos and prompt.startswith(bos) else prompt
        else:
            prompt = reward_prompt = body.prompt
            add_special_tokens = True
        early_stop = tts.early_stop if tts and tts.early_stop is not None else router.early_stop
        k = tts.num_speculative_tokens if tts else None
        plan_request = asdict(PlanRequest(
            budget_s=budget_s, max_tokens=max_tokens, model_id=model_id,
            method=None if method == "auto" else method, branches=None if branches == "auto" else branches,
            num_speculative_tokens=None if k in (None, "auto") else k,
            max_branches=router.max_branches, scored_available=self.reward is not None,
            default_method=router.default_method if router.default_method != "auto" else "majority",
            default_branches=router.default_branches))
        return {"plan_request": plan_request, "prompt": prompt, "reward_prompt": reward_prompt,
                "add_special_tokens": add_special_tokens, "budget_s": budget_s, "max_tokens": max_tokens,
                "early_stop": early_stop, "seed": tts.seed if tts and tts.seed is not None else None}

    def _context(self, body, options: dict[str, Any], plan: dict[str, Any], deadline_s: float) -> MethodContext:
        router = self.config.router
        pool, handle = self.pools[plan["pool"]]
        seed = options["seed"]
        seed_applied = seed is not None and self.seeds_supported[pool.name]
        options["seed_applied"] = seed_applied if seed is not None else None
        scoring = (plan.get("predicted_parts_s") or {}).get("score")
        return MethodContext(
            generator=HandleGenerator(handle, pool.model_id, seed if seed_applied else None),
            scorer=HandleScorer(self.reward, options["reward_prompt"]) if self.reward is not None else None,
            num_branches=plan["num_branches"], max_tokens=options["max_tokens"],
            temperature=body.temperature if body.temperature is not None else router.default_temperature,
            aggregate=self.config.reward.aggregate if self.config.reward else "last",
            beam_width=router.beam_width, max_search_steps=router.max_search_steps,
            step_separator=self.config.reward.step_separator if self.config.reward else "\n",
            add_special_tokens=options["add_special_tokens"],
            deadline_s=deadline_s, merge_margin_s=router.merge_margin_s,
            score_reserve_s=scoring if scoring is not None else router.score_reserve_s,
            early_stop=(EarlyStopRule(router.early_stop_window, router.early_stop_confidence)
                        if options["early_stop"] else None),
        )

    def _response(self, result: MethodResult, plan: dict[str, Any], ctx: MethodContext,
                  options: dict[str, Any], chat: bool) -> dict[str, Any]:
        winner_finish = "deadline" if result.partial else "stop"
        if not result.partial:
            for branch in result.branches:
                if branch.text == result.text:
                    winner_finish = branch.finish_reason or "stop"
                    break
        choice: dict[str, Any] = {"index": 0, "finish_reason": winner_finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        tts_block = {
            "method": result.method,
            "answer": result.answer,
            "votes": result.votes,
            "num_branches": len(result.branches),
            "branch_counts": ctx.stats.as_dict(),
            "partial": result.partial,
            "branches": [b.as_dict() for b in result.branches],
            "replicas": sorted({b.replica for b in result.branches if b.replica}),
            "timings_s": result.timings_s,
            "speculation": speculation_summary(result.branches),
            "latency_budget_s": options["budget_s"],
            "early_stop": ctx.early_stop is not None,
            "plan": {key: plan[key] for key in ("pool", "model_id", "method", "num_branches",
                                                "num_speculative_tokens", "predicted_s",
                                                "expected_accuracy", "auto", "fair_share")},
            "search_steps": result.search_steps,
            "seed_applied": options.get("seed_applied"),
        }
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-tts-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": plan["model_id"],
            "choices": [choice],
            "usage": {"prompt_tokens": 0, "completion_tokens": result.num_tokens,
                      "total_tokens": result.num_tokens},
            "tts": tts_block,
        }

    async def _stream(self, payload: dict[str, Any], chat: bool):
        """Server-sent events of the merged answer: OpenAI chunk objects, then [DONE]."""
        choice = payload["choices"][0]
        base = {"id": payload["id"], "created": payload["created"], "model": payload["model"],
                "object": "chat.completion.chunk" if chat else "text_completion"}
        if chat:
            chunks = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                      {"index": 0, "delta": {"content": choice["message"]["content"]}, "finish_reason": None},
                      {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]
        else:
            chunks = [{"index": 0, "text": choice["text"], "finish_reason": None, "logprobs": None},
                      {"index": 0, "text": "", "finish_reason": choice["finish_reason"], "logprobs": None}]
        for i, chunk in enumerate(chunks):
            event = {**base, "choices": [chunk]}
            if i == len(chunks) - 1:
                event["tts"] = payload["tts"]
                event["usage"] = payload["usage"]
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"
