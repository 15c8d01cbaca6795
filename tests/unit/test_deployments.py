"""Deployment files: every deployments/*.yaml is a valid Ray Serve config and a valid tts_ray app
config; the GPU ones autoscale and place tensor-parallel replicas on one node; pools map to
ray.serve.llm placement groups as configured."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from tts_ray.config import AppConfig, GeneratorPoolConfig, load_app_config
from tts_ray.constants import REPO_DIR

DEPLOYMENTS = sorted((REPO_DIR / "deployments").glob("*.yaml"))
GPU_DEPLOYMENTS = [p for p in DEPLOYMENTS if p.name.startswith("gpu-")]


def test_the_expected_deployment_files_exist():
    assert {p.name for p in DEPLOYMENTS} >= {"local.yaml", "gpu-3b.yaml", "gpu-32b.yaml"}


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_deployment_validates_with_ray_and_app_schema(path: Path):
    from tts_ray.serve.local import read_serve_config

    data = read_serve_config(path)  # raises unless ray.serve.schema.ServeDeploySchema accepts it
    assert [app["import_path"] for app in data["applications"]] == ["tts_ray.app:build_app"]
    config = load_app_config(path)
    assert config == AppConfig.model_validate(data["applications"][0]["args"])


@pytest.mark.parametrize("path", GPU_DEPLOYMENTS, ids=lambda p: p.name)
def test_gpu_deployments_autoscale_on_gpus_and_keep_tensor_parallel_ranks_together(path: Path):
    config = load_app_config(path)
    for pool in config.generators:
        assert pool.accelerator_type, f"{pool.name} must run on a GPU"
        scaling = pool.autoscaling
        assert scaling is not None and scaling.max_replicas > scaling.min_replicas, pool.name
        assert scaling.target_ongoing_requests <= pool.max_ongoing_requests, pool.name
        if pool.tensor_parallel_size > 1:
            assert pool.placement_strategy == "STRICT_PACK", pool.name
        if pool.speculative is not None:
            assert pool.speculative.method == "draft_model" and pool.speculative.model_source
    assert config.reward is not None and config.reward.accelerator_type
    # A classification PRM (Qwen2.5-Math-PRM) is read through its own head at <extra_0> tags,
    # one probability per step (column 1 of its two-class output).
    assert config.reward.two_way_tokens is None and config.reward.step_tag == "<extra_0>"
    assert config.reward.engine_kwargs["pooler_config"]["returned_token_ids"] == [1]
    # The policy's steps are paragraphs, not tags: step-level search stops at the separator.
    assert config.reward.step_separator == "\n\n"
    assert config.router.default_max_tokens <= config.router.max_tokens_limit < config.generators[0].max_model_len


def test_32b_deployment_uses_tensor_parallelism_over_several_gpus():
    config = load_app_config(REPO_DIR / "deployments" / "gpu-32b.yaml")
    assert {p.model_source for p in config.generators} == {"Qwen/Qwen2.5-32B-Instruct"}
    assert all(p.tensor_parallel_size == 4 for p in config.generators)


def test_placement_strategy_is_optional_and_checked():
    pool = {"model_id": "m", "model_source": "testbed:target"}
    assert GeneratorPoolConfig.model_validate(pool).placement_strategy is None
    assert GeneratorPoolConfig.model_validate({**pool, "placement_strategy": "STRICT_PACK"}).placement_strategy \
        == "STRICT_PACK"
    with pytest.raises(ValidationError):
        GeneratorPoolConfig.model_validate({**pool, "placement_strategy": "TIGHT"})


def _engine_config(**pool):
    from tts_ray.serve.generator import llm_config

    config = llm_config(GeneratorPoolConfig.model_validate(
        {"model_id": "m", "model_source": "Qwen/Qwen2.5-32B-Instruct", **pool}))
    return config, config.get_engine_config()


def test_gpu_pool_with_strict_pack_puts_one_gpu_bundle_per_rank_in_one_strict_group():
    _, engine = _engine_config(accelerator_type="H100", tensor_parallel_size=4, placement_strategy="STRICT_PACK")
    assert engine.placement_strategy == "STRICT_PACK"
    assert [b["GPU"] for b in engine.placement_bundles] == [1, 1, 1, 1]
    assert all(b["accelerator_type:H100"] > 0 for b in engine.placement_bundles)


def test_gpu_pool_without_strategy_keeps_ray_serve_llm_defaults():
    config, engine = _engine_config(accelerator_type="H100", tensor_parallel_size=2)
    assert config.placement_group_config is None
    assert engine.placement_strategy == "PACK"
    assert [b["GPU"] for b in engine.placement_bundles] == [1, 1]


def test_cpu_pool_keeps_cpu_bundles_and_takes_a_strategy():
    _, engine = _engine_config(tensor_parallel_size=2)
    assert engine.placement_strategy == "PACK"
    assert [(b.get("CPU"), b.get("GPU", 0)) for b in engine.placement_bundles] == [(1, 0), (1, 0)]
    _, engine = _engine_config(tensor_parallel_size=2, placement_strategy="STRICT_PACK")
    assert engine.placement_strategy == "STRICT_PACK"
    assert [(b.get("CPU"), b.get("GPU", 0)) for b in engine.placement_bundles] == [(1, 0), (1, 0)]


@pytest.mark.parametrize("path", DEPLOYMENTS, ids=lambda p: p.name)
def test_stopped_replicas_drain_requests_of_the_default_budget(path: Path):
    """Serve waits graceful_shutdown_timeout_s for a stopped replica's in-flight requests (its
    own default, 20 s, is shorter than a request's default budget); the engines drain at least
    as long as the router whose requests run on them."""
    from tts_ray.app import router_options
    from tts_ray.serve.generator import llm_config

    config = load_app_config(path)
    router_drain = router_options(config)["graceful_shutdown_timeout_s"]
    assert router_drain == config.router.graceful_shutdown_timeout_s > config.router.default_latency_budget_s
    for pool in config.generators:
        assert llm_config(pool).deployment_config["graceful_shutdown_timeout_s"] >= router_drain, pool.name
    if config.reward is not None:
        assert config.reward.graceful_shutdown_timeout_s >= router_drain


def test_speculating_pools_ask_for_per_request_acceptance_where_vllm_has_it():
    from tts_ray.config import load_app_config
    from tts_ray.serve.generator import llm_config, supports_per_request_spec_metrics

    config = load_app_config(REPO_DIR / "deployments" / "local.yaml")
    for pool in config.generators:
        kwargs = llm_config(pool).engine_kwargs
        wanted = pool.speculative is not None and supports_per_request_spec_metrics()
        assert (kwargs.get("per_request_spec_decode_metrics") == "summary") == wanted, pool.name
    assert supports_per_request_spec_metrics()  # vLLM 0.32 here has it (0.26 does not)
