"""``build_app``: the Ray Serve application builder (``import_path: tts_ray.app:build_app``)."""

from __future__ import annotations

from typing import Any

from tts_ray.config import AppConfig


def build_app(args: dict[str, Any]):
    """Build the tts_ray application from its config (the Serve config's ``args``).

    Raises:
        pydantic.ValidationError: invalid config.
    """
    from tts_ray.serve.budget import build_budget
    from tts_ray.serve.generator import build_generator
    from tts_ray.serve.reward import build_reward
    from tts_ray.serve.router import Router

    config = AppConfig.model_validate(args)
    generators = [build_generator(pool) for pool in config.generators]
    reward = build_reward(config.reward) if config.reward is not None else None
    return Router.options(**router_options(config)).bind(
        config.model_dump(), generators, build_budget(config), reward)


def router_options(config: AppConfig) -> dict[str, Any]:
    """The router deployment's Serve options: replicas and bounded queues (past
    ``max_queued_requests`` waiting requests Serve answers 503 with ``Retry-After`` at once)."""
    router = config.router
    return {"num_replicas": router.num_replicas, "max_ongoing_requests": router.max_ongoing_requests,
            "max_queued_requests": router.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": router.backpressure_retry_after_s},
            # a stopped replica finishes the requests it is answering (their budgets) first
            "graceful_shutdown_timeout_s": router.graceful_shutdown_timeout_s}
