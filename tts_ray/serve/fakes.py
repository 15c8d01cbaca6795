"""Stand-ins for the generator and reward deployments (no engines), so the real router's
reliability paths (backpressure, replica failures, reward failure, fuzzing) run in seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from tts_ray.config import AppConfig

# What a fake branch answers: two steps and a boxed answer, as the testbed target writes them.
FAKE_SOLUTION = "3 + 4 = 7\nThe answer is \\boxed{7}"
MODES = ("ok", "block", "fail_odd", "fail")


class FakeGenerator:
    """A generator replica without an engine. Modes: ``ok`` answers at once; ``block`` holds
    every branch until the mode changes (SignalActor-style) or its deadline passes;
    ``fail_odd`` raises on every other call and ``fail`` on every call, as a failing engine
    would."""

    def __init__(self, pool: str) -> None:
        self.pool, self.mode = pool, "ok"
        self.calls = self.inflight = 0
        self.released = asyncio.Event()
        self.released.set()

    async def set_mode(self, mode: str) -> None:
        """Switch the mode (one of :data:`MODES`); leaving ``block`` releases held branches.

        Raises:
            ValueError: an unknown mode.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        self.mode = mode
        if mode == "block":
            self.released.clear()
        else:
            self.released.set()

    async def generate_branch(self, request: Any, deadline_unix_s: float | None = None) -> dict[str, Any]:
        """The same contract as ``GeneratorServer.generate_branch``."""
        self.calls += 1
        self.inflight += 1
        try:
            if self.mode == "fail" or (self.mode == "fail_odd" and self.calls % 2):
                raise RuntimeError("generator error: fake engine failure")
            timeout_s = None if deadline_unix_s is None else max(0.0, deadline_unix_s - time.time())
            finish = "stop"
            try:
                await asyncio.wait_for(self.released.wait(), timeout_s)
            except TimeoutError:
                finish = "deadline"
            text = FAKE_SOLUTION if finish == "stop" else ""
            return {"text": text, "num_tokens": len(text), "finish_reason": finish, "stop_reason": None,
                    "replica": f"{self.pool}:{serve.get_replica_context().replica_id.unique_id}",
                    "spec_accepted_tokens": None, "spec_verify_steps": None}
        finally:
            self.inflight -= 1

    async def num_unfinished_requests(self) -> int:
        """Branches held or running now."""
        return self.inflight


class FakeReward:
    """A reward replica without an engine: every step scores 0.5 (mode ``ok``), or every call
    raises (mode ``fail``)."""

    def __init__(self) -> None:
        self.mode = "ok"

    async def set_mode(self, mode: str) -> None:
        self.mode = mode

    async def score(self, prompt: str, solutions: list[str]) -> list[list[float]]:
        if self.mode == "fail":
            raise RuntimeError("reward error: fake PRM failure")
        return [[0.5] * max(1, len([s for s in text.split("\n") if s.strip()])) for text in solutions]


def build_fake_app(args: dict[str, Any]):
    """The real router and budget keeper over fake generator pools (``generator-<pool>``) and a
    fake reward deployment (when ``args`` has a reward section); same config as ``build_app``."""
    from tts_ray.app import router_options
    from tts_ray.serve.budget import build_budget
    from tts_ray.serve.router import Router

    config = AppConfig.model_validate(args)
    generators = [serve.deployment(FakeGenerator, name=f"generator-{pool.name}", max_ongoing_requests=10_000,
                                   graceful_shutdown_timeout_s=pool.graceful_shutdown_timeout_s,
                                   ray_actor_options={"num_cpus": 0}).bind(pool.name)
                  for pool in config.generators]
    reward = (serve.deployment(FakeReward, name="reward", max_ongoing_requests=10_000,
                               graceful_shutdown_timeout_s=config.reward.graceful_shutdown_timeout_s,
                               ray_actor_options={"num_cpus": 0}).bind()
              if config.reward is not None else None)
    return Router.options(**router_options(config)).bind(config.model_dump(), generators, build_budget(config),
                                                         reward)
