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
import logging
import math
import os
import time
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

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
from tts_ray.serve.security import APIKeys, Guard, GuardMiddleware, parse_json_body, read_body_limited

logger = logging.getLogger("ray.serve")

# Backstop after the deadline in case a method overruns it (it should stop its branches first).
HARD_DEADLINE_GRACE_S = 0.2
# Errors that say a replica (not the request) failed: the branch may run again elsewhere.
REPLICA_FAILURES: tuple[type[BaseException], ...] = (
    RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)
# A branch is re-run on another pool only if at least this much of its deadline is left.
MIN_RETRY_S = 0.5

app = FastAPI(title="tts_ray", description="Latency-aware test-time scaling over vLLM")


def _replica_guard() -> Guard | None:
    """The guard of the Router this Serve replica runs (None outside a replica or before it is
    constructed, which the middleware answers with 503)."""
    try:
        return getattr(serve.get_replica_context().servable_object, "guard", None)
    except Exception:  # noqa: BLE001 - not inside a replica
        return None


# API keys and the body-size limit in front of every route (added before serve.ingress
# freezes the app). /health stays open.
app.add_middleware(GuardMiddleware, guard=_replica_guard)


class HandleGenerator:
    """The ``Generator`` protocol over a generator deployment's handle. ``fallbacks`` are the
    handles of other pools serving the same model: a branch whose replica fails (dies, is
    unreachable, sheds it) runs again on the next of them while its deadline leaves
    ``MIN_RETRY_S``; ``retried`` counts those re-runs."""

    def __init__(self, handle, model_id: str, seed: int | None = None, fallbacks: list | None = None) -> None:
        self.handle, self.model_id = handle, model_id
        self._seed = seed
        self.fallbacks = list(fallbacks or [])
        self.retried = 0

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
        handles = [self.handle, *self.fallbacks]
        for attempt, handle in enumerate(handles):
            try:
                result = await handle.generate_branch.remote(request, deadline_s)
                break
            except REPLICA_FAILURES:
                time_left = None if deadline_s is None else deadline_s - time.time()
                if attempt == len(handles) - 1 or (time_left is not None and time_left < MIN_RETRY_S):
                    raise
                self.retried += 1
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
        # ("CPU Generator does not use offset"): seeds go to GPU pools and to CPU pools with
        # chunked prefill off only.
        self.seeds_supported = {pool.name: pool.supports_request_seeds for pool in self.config.generators}
        self._background: set[asyncio.Task] = set()
        # Requests answered whose release the keeper may not have had yet (it is sent in the
        # background): each admission names them, so the keeper does not count them in flight.
        self._answered: set[str] = set()
        router = self.config.router
        # Read by GuardMiddleware on every request (keys from the env var and/or key file).
        self.guard = Guard(APIKeys(router.api_keys_env,
                                   router.api_keys_file or os.environ.get("TTS_RAY_API_KEYS_FILE") or None,
                                   required=router.require_api_keys), router.max_body_bytes)
        # The shortest context of each model's pools: prompt + max_tokens must fit any of them.
        self.context_len: dict[str, int] = {}
        for pool in self.config.generators:
            self.context_len[pool.model_id] = min(pool.max_model_len,
                                                  self.context_len.get(pool.model_id, pool.max_model_len))

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
        admitted = await self._admit(request_id, options["plan_request"])
        if "infeasible" in admitted:
            info = admitted["infeasible"]
            retry_after = str(math.ceil(info["retry_after_s"]))
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
        timed_out = False
        try:
            started = time.perf_counter()
            # The methods stop their branches before the deadline; this is only the backstop.
            hard_limit_s = max(0.0, options["budget_s"] - (started - received)) + HARD_DEADLINE_GRACE_S
            result = await asyncio.wait_for(METHODS[plan["method"]](ctx, options["prompt"]), timeout=hard_limit_s)
        except TimeoutError:
            timed_out = True
            return _error_response(APIError(
                408, f"no answer within latency_budget_s={options['budget_s']}", type="timeout_error",
                param="tts.latency_budget_s", code="deadline_exceeded"))
        except MethodError as error:
            return _error_response(APIError(400, str(error), param="tts.method"))
        except Exception as error:  # noqa: BLE001 - every branch failed (replicas died or erred)
            logger.warning("request %s: no branch answered: %r", request_id, error)
            return _error_response(APIError(
                503, f"no branch could be answered ({type(error).__name__}); retry shortly",
                type="service_unavailable_error", code="branches_failed"), headers={"Retry-After": "1"})
        finally:
            self._release(request_id, plan, result, time.perf_counter() - received, ctx, timed_out)
        result.timings_s["queue"] = started - received
        result.timings_s["total"] = time.perf_counter() - received
        payload = self._response(result, plan, ctx, options, chat)
        if body.stream:
            return StreamingResponse(self._stream(payload, chat), media_type="text/event-stream")
        return JSONResponse(payload)

    async def _admit(self, request_id: str, plan_request: dict[str, Any]) -> dict[str, Any]:
        """Ask the keeper to plan and reserve. If the client leaves meanwhile, the call still
        completes and whatever it reserved is released, so no branch stays booked."""
        call = asyncio.ensure_future(self._send_admit(request_id, plan_request))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda _: self._spawn(self._send_release(request_id, [], None, None)))
            raise

    async def _send_admit(self, request_id: str, plan_request: dict[str, Any]) -> dict[str, Any]:
        return await self.budget.admit.remote(request_id, plan_request, sorted(self._answered))

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _release(self, request_id: str, plan: dict[str, Any], result: MethodResult | None,
                 elapsed_s: float, ctx: MethodContext | None = None, timed_out: bool = False) -> None:
        """Tell the keeper the request's branches are free (in the background: the answer
        does not wait for the ledger), whether the deadline cut it (its branches stopped, or
        the backstop ``timed_out``), and, when branches were stopped, how long the answer
        took from the margin's start (what the keeper's learned margin follows)."""
        observations = observations_of(result.branches) if result is not None else []
        actual_s = elapsed_s if result is not None and not result.partial else None
        needed_margin_s = None
        stopped = ctx is not None and ctx.deadline_s is not None and bool(ctx.stats.stopped or ctx.stats.cancelled)
        if stopped:
            needed_margin_s = time.time() - (ctx.deadline_s - ctx.merge_margin_s)
        self._answered.add(request_id)
        self._spawn(self._send_release(request_id, observations, plan.get("predicted_s"), actual_s,
                                       needed_margin_s, stopped or timed_out))

    async def _send_release(self, request_id, observations, predicted_s, actual_s,
                            needed_margin_s=None, cut=False) -> None:
        try:
            await self.budget.release.remote(request_id, observations, predicted_s, actual_s, needed_margin_s, cut)
        finally:
            self._answered.discard(request_id)

    async def _parse(self, request: Request, model):
        router = self.config.router
        # GuardMiddleware refused bodies announced too large; this bounds chunked ones.
        raw = await read_body_limited(request.stream(), router.max_body_bytes)
        data = parse_json_body(raw, router.max_json_depth)
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
            try:
                prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - e.g. a template that demands alternating roles
                raise APIError(400, f"messages do not fit the model's chat template: {exc}",
                               param="messages") from None
            add_special_tokens = False
            bos = tokenizer.bos_token or ""
            reward_prompt = prompt[len(bos):] if bos and prompt.startswith(bos) else prompt
        else:
            prompt = reward_prompt = body.prompt
            add_special_tokens = True
        prompt_tokens = self._check_prompt_length(tokenizer, prompt, add_special_tokens, max_tokens,
                                                  model_id or self.default_model, chat)
        early_stop = tts.early_stop if tts and tts.early_stop is not None else router.early_stop
        k = tts.num_speculative_tokens if tts else None
        plan_request = asdict(PlanRequest(
            budget_s=budget_s, max_tokens=max_tokens, model_id=model_id,
            method=None if method == "auto" else method, branches=None if branches == "auto" else branches,
            num_speculative_tokens=None if k in (None, "auto") else k,
            max_branches=router.max_branches, scored_available=self.reward is not None,
            default_method=router.default_method if router.default_method != "auto" else "majority",
            default_branches=router.default_branches,
            early_stop_window=router.early_stop_window if early_stop else None))
        return {"plan_request": plan_request, "prompt": prompt, "reward_prompt": reward_prompt,
                "add_special_tokens": add_special_tokens, "budget_s": budget_s, "max_tokens": max_tokens,
                "prompt_tokens": prompt_tokens,
                "early_stop": early_stop, "seed": tts.seed if tts and tts.seed is not None else None}

    def _check_prompt_length(self, tokenizer, prompt: str, add_special_tokens: bool, max_tokens: int,
                             model_id: str, chat: bool) -> int:
        """The prompt's length in tokens.

        Raises:
            APIError: 400 when it is above ``router.max_prompt_tokens``, or when it plus
                ``max_tokens`` does not fit the model's context (its pools' ``max_model_len``).
        """
        param = "messages" if chat else "prompt"
        limit = self.config.router.max_prompt_tokens
        # A prompt with more characters than the limit allows tokens cannot be shorter than the
        # limit with a character-level tokenizer, but a BPE one packs several characters per
        # token; only an absurd length is refused before tokenizing, to keep that cheap.
        if len(prompt) > 32 * limit:
            raise APIError(400, f"the prompt is longer than the limit of {limit} tokens",
                           param=param, code="prompt_too_long")
        count = len(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
        if count > limit:
            raise APIError(400, f"the prompt has {count} tokens, above the limit of {limit}",
                           param=param, code="prompt_too_long")
        context = self.context_len[model_id]
        if count + max_tokens > context:
            raise APIError(400, f"the prompt ({count} tokens) plus max_tokens ({max_tokens}) is more than "
                                f"the model's context of {context} tokens", param=param,
                           code="context_length_exceeded")
        return count

    def _context(self, body, options: dict[str, Any], plan: dict[str, Any], deadline_s: float) -> MethodContext:
        router = self.config.router
        pool, handle = self.pools[plan["pool"]]
        seed = options["seed"]
        seed_applied = seed is not None and self.seeds_supported[pool.name]
        options["seed_applied"] = seed_applied if seed is not None else None
        scoring = (plan.get("predicted_parts_s") or {}).get("score")
        # a seeded branch re-runs only where seeds are safe too (a CPU engine with chunked
        # prefill on would die of it)
        fallbacks = [other_handle for other, other_handle in self.pools.values()
                     if other.model_id == pool.model_id and other.name != pool.name
                     and (not seed_applied or self.seeds_supported[other.name])]
        return MethodContext(
            generator=HandleGenerator(handle, pool.model_id, seed if seed_applied else None, fallbacks),
            scorer=HandleScorer(self.reward, options["reward_prompt"]) if self.reward is not None else None,
            num_branches=plan["num_branches"], max_tokens=options["max_tokens"],
            temperature=body.temperature if body.temperature is not None else router.default_temperature,
            aggregate=self.config.reward.aggregate if self.config.reward else "last",
            beam_width=router.beam_width, max_search_steps=router.max_search_steps,
            step_separator=self.config.reward.step_separator if self.config.reward else "\n",
            add_special_tokens=options["add_special_tokens"],
            deadline_s=deadline_s, merge_margin_s=plan.get("merge_margin_s") or router.merge_margin_s,
            score_reserve_s=scoring if scoring is not None else router.score_reserve_s,
            early_stop=(EarlyStopRule(router.early_stop_window, router.early_stop_confidence,
                                      router.early_stop_criterion)
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
                                                "num_speculative_tokens", "predicted_s", "planned_s",
                                                "latency_correction", "expected_accuracy", "auto",
                                                "fair_share")},
            "search_steps": result.search_steps,
            "seed_applied": options.get("seed_applied"),
            # What went wrong and how the answer coped: branches whose replica failed (after any
            # re-run elsewhere: the merge used the survivors), branches re-run on another pool,
            # and a merge that fell back (e.g. to a plain majority when the reward model failed).
            "faults": {"failed_branches": ctx.stats.failed,
                       "retried_branches": getattr(ctx.generator, "retried", 0),
                       "merged_survivors": ctx.stats.failed > 0,
                       "degraded": result.degraded},
        }
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-tts-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": plan["model_id"],
            "choices": [choice],
            "usage": {"prompt_tokens": options["prompt_tokens"], "completion_tokens": result.num_tokens,
                      "total_tokens": options["prompt_tokens"] + result.num_tokens},
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
