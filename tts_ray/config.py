"""Configuration of a tts_ray application: generator pools, the reward model, the router.

These pydantic models are the boundary between a deployment file (``deployments/*.yaml``,
the ``args`` of a Ray Serve application) and the code. Every field says what it means.
A model source ``testbed:target`` / ``testbed:draft`` / ``testbed:prm`` names a bundled
testbed model; anything else is a local path or a Hugging Face model id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tts_ray.constants import (
    BAD_TOKEN,
    CPU_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    GOOD_TOKEN,
    MAX_MODEL_LEN,
    STEP_TAG_TOKEN,
)

TESTBED_PREFIX = "testbed:"
MethodName = Literal["single", "majority", "weighted_majority", "best_of_n", "beam_search", "dvts"]
Aggregate = Literal["last", "min", "prod", "mean"]


def resolve_model_source(source: str) -> str:
    """Map ``testbed:ROLE`` to the bundled model's path; return anything else unchanged.

    Raises:
        ValueError: an unknown testbed role.
    """
    if source.startswith(TESTBED_PREFIX):
        from tts_ray.testbed.models import model_dir

        return str(model_dir(source.removeprefix(TESTBED_PREFIX)))
    return source


def resolve_data_source(source: str | None) -> Path | None:
    """Map ``testbed:NAME`` to the bundled planner file ``NAME.json`` (speed profile or
    calibration of the testbed); return any other source as a path; None stays None."""
    if source is None:
        return None
    if source.startswith(TESTBED_PREFIX):
        from tts_ray.constants import TESTBED_PLANNER_DIR

        return TESTBED_PLANNER_DIR / f"{source.removeprefix(TESTBED_PREFIX)}.json"
    return Path(source)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# How long a replica being stopped (app deleted or redeployed, replica scaled down) waits for its
# in-flight requests before Serve kills it: Serve's default is 20 s, shorter than the default
# budget of a request (RouterConfig.default_latency_budget_s, 60 s), so the default here is that
# budget plus room to merge and answer. Generators and the reward model drain as long as the
# router, since a draining router's requests still run branches and scoring on them.
DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 75.0


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of a deployment's replicas."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(1, ge=1, description="Most replicas started under load.")
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica that autoscaling aims at.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class SpeculativeConfig(_Strict):
    """Speculative decoding inside a generator's vLLM engine (vLLM ``speculative_config``)."""

    method: Literal["draft_model", "ngram", "eagle", "eagle3"] = Field(
        "draft_model", description="vLLM speculation method.")
    model_source: str | None = Field(
        None, description="Draft model (draft_model) or speculator head (eagle/eagle3).")
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="Draft length k.")
    prompt_lookup_min: int | None = Field(None, ge=1, description="ngram: shortest match.")
    prompt_lookup_max: int | None = Field(None, ge=1, description="ngram: longest match.")

    @model_validator(mode="after")
    def _needs_model(self) -> SpeculativeConfig:
        if self.method != "ngram" and not self.model_source:
            raise ValueError(f"speculative method {self.method!r} needs model_source")
        return self

    def to_vllm(self) -> dict[str, Any]:
        """The ``speculative_config`` dict vLLM takes."""
        config: dict[str, Any] = {"method": self.method,
                                  "num_speculative_tokens": self.num_speculative_tokens}
        if self.model_source:
            config["model"] = resolve_model_source(self.model_source)
        for key in ("prompt_lookup_min", "prompt_lookup_max"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config


class GeneratorPoolConfig(_Strict):
    """A pool of generator replicas: one vLLM engine each, target plus optional draft."""

    name: str = Field("target", pattern=r"^[A-Za-z0-9_-]+$",
                      description="Pool name, unique in the app (also the deployment name).")
    model_id: str = Field(..., description="Model name clients send in `model`.")
    model_source: str = Field(..., description="Target model: path, HF id or testbed:ROLE.")
    speculative: SpeculativeConfig | None = Field(None, description="Speculative decoding, if any.")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is off.")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscaling instead of a fixed count.")
    max_ongoing_requests: int = Field(256, ge=1, description="Concurrent branches per replica.")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type (e.g. H100); None runs on CPU.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism (GPUs per replica).")
    num_gpus: float | None = Field(
        None, gt=0, le=1,
        description="Share of a GPU each engine worker reserves in Ray when accelerator_type is set: "
                    "below 1 puts several engines on one GPU (their gpu_memory_utilization, or "
                    "kv_cache_memory_bytes in engine_kwargs, must then leave room for each other); "
                    "None: one whole GPU per tensor-parallel rank.")
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] | None = Field(
        None, description="Ray placement-group strategy of a replica's engine workers (one bundle per "
                          "tensor-parallel rank): STRICT_PACK keeps them on one node (one pod on "
                          "Kubernetes), so tensor parallelism stays on NVLink; None keeps "
                          "ray.serve.llm's default (PACK: one node if it fits, else spread).")
    compute_group: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Pools naming the same group share one device (the node's CPU cores, or one GPU "
                    "split with num_gpus below 1): while several of them decode they slow each "
                    "other, so the planner multiplies a pool's profiled seconds per token by 1 + "
                    "compute_group_slowdown x the number of the group's other pools with branches "
                    "in flight. None: the pool's replicas have devices of their own.")
    compute_group_slowdown: float = Field(
        1.0, ge=0, le=1,
        description="How much each other busy pool of the compute group slows this one, as a share "
                    "of its profiled seconds per token: 1.0 when they time-share one device evenly "
                    "(engines bound to the same cores, or one GPU); less when each engine has cores "
                    "of its own and they share only memory bandwidth and the node's other work "
                    "(bench/contention.py measures it).")
    max_model_len: int = Field(MAX_MODEL_LEN, ge=16, description="Context length of the engine.")
    gpu_memory_utilization: float = Field(CPU_GPU_MEMORY_UTILIZATION, gt=0, le=1,
                                          description="vLLM memory share (KV cache size on GPU).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict,
                                          description="Further vLLM engine arguments, passed as is.")
    runtime_env: dict[str, Any] = Field(default_factory=dict,
                                        description="Ray runtime_env of the replicas (e.g. env_vars).")
    graceful_shutdown_timeout_s: float = Field(
        DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, ge=0,
        description="When a replica is stopped (redeploy, delete, downscale), Serve sends it no new "
                    "branches and waits up to this long for its running ones before killing it; "
                    "keep it at least the router's.")

    @property
    def supports_request_seeds(self) -> bool:
        """Whether per-request sampling seeds are safe on this pool's engines: on a GPU, or on
        vLLM's CPU backend with chunked prefill off (``engine_kwargs.enable_chunked_prefill:
        false``). With it on, a CPU engine dies on a seeded request whose chunked prefill is
        discarded ("CPU Generator does not use offset"), so the router drops seeds there."""
        return self.accelerator_type is not None or self.engine_kwargs.get("enable_chunked_prefill") is False


class RewardConfig(_Strict):
    """The process reward model deployment.

    The default reads a Math-Shepherd-style causal LM: each step followed by ``step_tag``,
    scored as P(good)/(P(good)+P(bad)) at the tag, served on vLLM's pooling runner. A
    classification PRM such as Qwen2.5-Math-PRM-7B (``Qwen2ForProcessRewardModel``, step
    separator ``<extra_0>``) sets ``architecture`` to its own class and ``two_way_tokens`` to
    None, so vLLM uses the model's own reward head.
    """

    model_id: str = Field("prm", description="Name of the reward model.")
    model_source: str = Field(..., description="PRM: path, HF id or testbed:prm.")
    step_tag: str = Field(STEP_TAG_TOKEN, description="Token placed after every step.")
    step_separator: str = Field("\n", description="What separates steps in a solution.")
    architecture: str | None = Field(
        "LlamaForSequenceClassification",
        description="Architecture vLLM loads the PRM as (None: the checkpoint's own).")
    two_way_tokens: tuple[str, str] | None = Field(
        (BAD_TOKEN, GOOD_TOKEN),
        description="(false token, true token) whose logit difference is the step score.")
    aggregate: Aggregate = Field("last", description="How step scores become a solution score.")
    num_replicas: int = Field(1, ge=1, description="Reward replicas.")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent scoring calls per replica.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type; None runs on CPU.")
    num_gpus: float | None = Field(
        None, gt=0, le=1, description="Share of a GPU the replica reserves in Ray when accelerator_type "
                                      "is set (below 1: it shares the GPU with other engines); None: 1.")
    max_model_len: int = Field(MAX_MODEL_LEN, ge=16, description="Context length of the engine.")
    gpu_memory_utilization: float = Field(CPU_GPU_MEMORY_UTILIZATION, gt=0, le=1,
                                          description="vLLM memory share.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Further vLLM engine arguments.")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env of the replicas.")
    graceful_shutdown_timeout_s: float = Field(
        DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, ge=0,
        description="How long a stopped reward replica waits for its running scoring calls before "
                    "Serve kills it; keep it at least the router's.")


class RouterConfig(_Strict):
    """Defaults and limits the router applies to every request."""

    default_method: MethodName = Field("weighted_majority", description="Method for plain requests.")
    default_branches: int = Field(8, ge=1, description="Branches for plain requests.")
    max_branches: int = Field(64, ge=1, description="Most branches one request may ask for.")
    default_max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="max_tokens when absent.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens accepted.")
    default_temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, description="Branch sampling temperature.")
    default_latency_budget_s: float = Field(60.0, gt=0, description="Budget when the request has none.")
    max_latency_budget_s: float = Field(3600.0, gt=0, description="Largest budget accepted.")
    beam_width: int = Field(4, ge=1, description="Beam search / DVTS: candidates kept per beam.")
    max_search_steps: int = Field(12, ge=1, description="Beam search / DVTS: most step expansions.")
    num_replicas: int = Field(1, ge=1, description="Router replicas.")
    profile_source: str | None = Field(
        None, description="Speed profile from `tts-ray profile` (path or testbed:NAME); None: "
                          "no latency predictions, so no auto planning by latency and no 429.")
    calibration_source: str | None = Field(
        None, description="Accuracy calibration from `tts-ray calibrate` (path or testbed:NAME).")
    merge_margin_s: float = Field(
        0.1, ge=0, description="Time kept before the deadline to merge and answer: branches still "
                               "running then are stopped and merged as they are.")
    adaptive_merge_margin: bool = Field(
        True, description="Raise merge_margin_s to what requests cut at their deadline have needed "
                          "lately (95th percentile of the time from their generation deadline to "
                          "their answer, at most 1 s), so that answers arrive inside the budget on "
                          "a loaded machine; merge_margin_s stays the floor.")
    latency_correction: bool = Field(
        True, description="Scale each pool's predicted work (prefill and decode) by the median "
                          "of actual / predicted over its requests of the last minute (a request "
                          "its deadline cut counts as over), so the predictions the planner sizes "
                          "plans by are unbiased; the per-branch speed factors stay beneath it.")
    learn_branch_overhead: bool = Field(
        True, description="Learn each pool's serving overhead per branch: the seconds a branch takes "
                          "beyond the profile's prefill and decode, fitted over the pool's recent "
                          "finished branches as their time = overhead + factor x the profile's "
                          "decode time (least squares over branches of different lengths; used "
                          "once 30 have run in the last 60 s). Predictions add it once per branch "
                          "wave, and the speed factors learn the decode speed without it. Why: on "
                          "the CPU testbed (session 22) every fixed row's requests took 0.26 to "
                          "0.41 s more than the profile of the bare engine predicts, at 8 "
                          "sequences and at 34 alike; learned as a factor on decode speed it read "
                          "2.2 to 3.0 for one branch a request and 1.6 for four or eight, and the "
                          "planner priced four branches at the whole stream's load slower than "
                          "they ran.")
    learn_group_slowdown: bool = Field(
        True, description="Learn each pool's compute_group_slowdown from its branches: their speed "
                          "against the profile while the group's other pools decoded beside them, "
                          "over the pool's speed in the same concurrency band while they were "
                          "idle. Used once 10 such branches have run (the configured "
                          "compute_group_slowdown until then, and for pools never seen alone). "
                          "On the CPU testbed (run z1) it learned 0.75 for the speculating "
                          "pool and 1.05 for the plain one where 0.3 was configured, so a "
                          "stream split over both had been priced too cheaply.")
    speed_carry: Literal["factor", "excess"] = Field(
        "factor", description="What a concurrency band no branch has taught lately reads from the "
                              "nearest band below it that one has: \"factor\", its ratio to the "
                              "profile (the time per token scales with the machine); \"excess\", "
                              "its excess seconds per token over the profile (the serving stack "
                              "adds about the same time to each decode step, which weighs less in "
                              "a larger batch's longer steps). Either way a band above never reads "
                              "faster than the profile if the band below is slower.")
    plan_for_speed_spread: bool = Field(
        True, description="Rank plans by their expected accuracy over the spread of live decode "
                          "speed (each pool's recent branches, their speed against the "
                          "prediction, at 5 quantiles about the median) rather than at the "
                          "predicted speed alone: a plan that leaves its branches just enough "
                          "tokens loses to one with room to spare when the speed varies.")
    plan_for_inflight: bool = Field(
        False, description="(Experimental; off: on the CPU testbed it did not bring auto closer to "
                           "the best fixed plan, docs/architecture.md.) "
                           "Count against an auto plan (with a calibration) the expected accuracy "
                           "it costs the requests already in flight: its branches slow theirs (a "
                           "fuller batch on their pool, or an idle engine on their device starting "
                           "to decode), so their deadlines leave them fewer tokens. Among plans that "
                           "fit the budget the planner ranks by its own expected accuracy less that "
                           "cost; when none fits, by the cost, then the quickest. Requests still to "
                           "come are not counted.")
    auto_admission: Literal["one_branch", "fitting_plan"] = Field(
        "fitting_plan", description="When an auto request (tts.branches or tts.method \"auto\") is "
                                  "answered 429 with Retry-After. \"one_branch\": as a fixed "
                                  "request, only when one branch is predicted to miss the budget at "
                                  "the load in flight now (without the latency correction); when no "
                                  "plan fits, the quickest runs. \"fitting_plan\": also when no plan "
                                  "fits at the load now as the planner fits plans (one branch, with "
                                  "the latency correction, decoding at the slow end of the speed "
                                  "spread): the client comes back when the load has passed, rather "
                                  "than run where the deadline is expected to cut it (on the CPU "
                                  "testbed at its tightest budget, 4 points more accurate than "
                                  "\"one_branch\", docs/architecture.md).")
    auto_ranking: Literal["fit_first", "expected_accuracy", "steady_state", "steady_split"] = Field(
        "fit_first", description="How an auto plan is chosen among (pool, method, B). "
                               "\"fit_first\": the plans whose expected longest branch fits the "
                               "budget (decoding at the slow end of the speed spread) first, then "
                               "the most accurate of them; when none fits, the quickest. "
                               "\"expected_accuracy\": the plan of highest expected accuracy as "
                               "the deadline leaves it (the calibration's accuracy when the "
                               "branches the deadline cuts do not vote) among those whose typical "
                               "branch (the expected length of one) fits at the slow end, so "
                               "plans the deadline is expected to cut in part are ranked too; "
                               "fitting breaks ties; when none qualifies, as fit_first. Such "
                               "plans do not feed the latency correction. Needs a calibration; "
                               "without one, fit_first. (On the CPU testbed its plans scored as "
                               "well as the best fixed (B, k) on the problems it answered, but "
                               "it turned more requests away and was not closer overall, "
                               "docs/architecture.md; hence not the default.) "
                               "\"steady_state\": the plan a steady stream of requests planned "
                               "alike would do best with, as one would choose a fixed (pool, B): "
                               "each plan predicted as if every request in flight lately ran it on "
                               "its pool (per-branch speed factors, no latency correction), ranked "
                               "by expected accuracy as the deadline leaves it among those whose "
                               "typical branch finishes there (else the quickest), the last B held "
                               "on the pool chosen unless another is 2 points more accurate, and "
                               "admitted as a "
                               "fixed request of the chosen draft length (auto_load and "
                               "auto_admission do not apply). Needs a calibration; without one, "
                               "fit_first. "
                               "\"steady_split\": as steady_state, and the stream may also be "
                               "split between two pools decoding at once (n requests on one, the "
                               "rest on the other, each part with its own B; pools of one compute "
                               "group priced as busy beside each other): the state of highest "
                               "mean expected accuracy wins, and each request joins the part "
                               "furthest below its share. With one pool, steady_state.")
    auto_pools: Literal["profile", "live"] = Field(
        "profile", description="With auto_ranking \"steady_split\": what the pools the stream runs on "
                               "(and how many of its requests each takes) are chosen on. "
                               "\"profile\": the profile alone (tts-ray profile measured every pool "
                               "in one sitting), with the configured compute_group_slowdown and "
                               "none of what the keeper learns live; each part then runs the "
                               "profile's (method, B) while it finishes on the live speeds and "
                               "reads at most 2 points below their best, else that best. "
                               "\"live\": every choice on the live speeds, "
                               "overheads, spreads and slowdowns, which each pool learns only from "
                               "what it ran lately, so two pools' readings come from different "
                               "moments (on the CPU testbed they swung the stream between pools "
                               "from row to row, docs/architecture.md, change 15).")
    auto_load: Literal["arriving", "symmetric"] = Field(
        "arriving", description="(Experimental; \"symmetric\" is not the default: on the CPU testbed it "
                                "brought auto closer to the best fixed plan at 1 s but far from it "
                                "at 0.5 s, docs/architecture.md.) "
                                "The load an auto plan of B branches is predicted under. "
                                "\"arriving\": the branches in flight now, plus B for each request "
                                "expected to arrive (those in flight lately, less those in flight "
                                "now). \"symmetric\": at least B for every request in flight "
                                "lately, those in flight now included: the load a steady stream of "
                                "requests planned alike settles at, so a request does not take what "
                                "the others' plans leave free for the moment.")
    score_reserve_s: float = Field(
        0.3, ge=0, description="Time kept for PRM scoring before the merge margin when the profile "
                               "has no scoring curve.")
    early_stop: bool = Field(False, description="Default for tts.early_stop: sample in windows and "
                                                "stop once the vote is settled.")
    # Defaults chosen with `tts-ray tune-early-stop` on the testbed's validation samples
    # (bench/results/early_stop_tuning.json): at B = 16 they save 32% of tokens for 0.7 points.
    # Tune them on your own model's samples.
    early_stop_window: int = Field(3, ge=1, description="Branches per early-stopping window.")
    early_stop_confidence: float = Field(
        0.7, gt=0.5, lt=1, description="Probability (by early_stop_criterion) at which the vote "
                                       "counts as settled and sampling stops (0.7 with beta and "
                                       "windows of 3: three agreeing answers, or two and no "
                                       "answer, stop; 2 to 1 goes on).")
    early_stop_criterion: Literal["beta", "final_vote"] = Field(
        "beta", description="beta: the leader beats the runner-up with infinitely many samples "
                            "(Adaptive-Consistency); final_vote: the vote over all the request's "
                            "branches would still elect the leader (posterior predictive).")
    speed_ewma_alpha: float = Field(0.2, gt=0, le=1, description="Weight of each finished branch in "
                                                                 "the live speed correction.")
    # Security and limits (tts_ray/serve/security.py). Keys never live in this config: it
    # names where they are (an env var, a file such as a mounted Kubernetes Secret).
    api_keys_env: str | None = Field(
        "TTS_RAY_API_KEYS", description="Env var of the router replicas holding accepted API keys, "
                                        "comma-separated. Keys from here and from the key file are "
                                        "both accepted; with none at all, auth is off.")
    api_keys_file: str | None = Field(
        None, description="File of accepted API keys (one per line or comma-separated, '#' comments), "
                          "re-read when it changes; None: the path in the env var TTS_RAY_API_KEYS_FILE, "
                          "if set.")
    require_api_keys: bool = Field(False, description="Refuse to start without any key configured "
                                                      "(fail closed instead of serving openly).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 above).")
    max_json_depth: int = Field(32, ge=4, description="Deepest JSON nesting accepted in a body (400 above).")
    max_prompt_tokens: int = Field(8192, ge=1, description="Longest prompt accepted, in the target's "
                                                           "tokens after the chat template (400 above); "
                                                           "prompt + max_tokens must also fit the pools' "
                                                           "max_model_len.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one router replica handles at once.")
    max_queued_requests: int = Field(
        512, ge=-1, description="Requests waiting for a router replica beyond those; more get 503 with "
                                "Retry-After from Serve at once (-1: unbounded).")
    backpressure_retry_after_s: float = Field(1.0, ge=0, description="Retry-After of those 503s, seconds.")
    graceful_shutdown_timeout_s: float = Field(
        DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S, ge=0,
        description="When a router replica is stopped (app deleted or redeployed, replica scaled "
                    "down), Serve routes it no new requests and waits up to this long for the ones "
                    "it is answering, which finish within their budgets; past it Serve kills the "
                    "replica and their clients lose the connection. Keep it above the budgets "
                    "clients use (default_latency_budget_s, 60 s, plus room to merge).")

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> RouterConfig:
        if self.default_branches > self.max_branches:
            raise ValueError("default_branches must be <= max_branches")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must be <= max_tokens_limit")
        return self


class AppConfig(_Strict):
    """A whole tts_ray application: the ``args`` of ``tts_ray.app:build_app``."""

    generators: list[GeneratorPoolConfig] = Field(..., min_length=1, description="Generator pools.")
    reward: RewardConfig | None = Field(None, description="Reward model; None disables PRM methods.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Router defaults and limits.")

    @field_validator("generators")
    @classmethod
    def _unique_names(cls, pools: list[GeneratorPoolConfig]) -> list[GeneratorPoolConfig]:
        names = [p.name for p in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"generator pool names must be unique, got {names}")
        return pools


def load_app_config(path: str | Path) -> AppConfig:
    """Read an ``AppConfig`` from a YAML file: either the config itself, or a Ray Serve
    config whose first application's ``args`` hold it.

    Raises:
        pydantic.ValidationError: the config is invalid.
        ValueError: the file has neither form.
    """
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict) and "applications" in data:
        data = data["applications"][0].get("args", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no tts_ray app config")  # noqa: TRY004 - a bad file, not a bad argument
    return AppConfig.model_validate(data)
