"""App config: the shipped deployment file validates with Ray's schema and ours; bad configs fail."""

import pytest
from pydantic import ValidationError

from tts_ray.config import AppConfig, SpeculativeConfig, load_app_config, resolve_model_source
from tts_ray.constants import REPO_DIR
from tts_ray.methods.base import aggregate_score
from tts_ray.testbed.models import model_dir

LOCAL = REPO_DIR / "deployments" / "local.yaml"


def test_local_deployment_validates_with_ray_and_app_schema():
    from tts_ray.serve.local import read_serve_config

    data = read_serve_config(LOCAL)  # ServeDeploySchema
    assert data["applications"][0]["import_path"] == "tts_ray.app:build_app"
    config = load_app_config(LOCAL)
    assert config.generators[0].speculative.to_vllm() == {
        "method": "draft_model", "num_speculative_tokens": 4, "model": str(model_dir("draft"))}


def test_seeds_are_applied_on_gpu_pools_and_cpu_pools_without_chunked_prefill():
    from tts_ray.config import GeneratorPoolConfig

    def pool(**fields):
        return GeneratorPoolConfig(model_id="m", model_source="testbed:target", **fields)

    assert not pool().supports_request_seeds  # CPU, vLLM's default chunked prefill: a seed can crash it
    assert not pool(engine_kwargs={"enable_chunked_prefill": True}).supports_request_seeds
    assert pool(engine_kwargs={"enable_chunked_prefill": False}).supports_request_seeds
    assert pool(accelerator_type="H100").supports_request_seeds
    # the shipped CPU pools run seeded (the planner benchmark's rows share samples through it)
    assert all(p.supports_request_seeds for p in load_app_config(LOCAL).generators)


def test_testbed_sources_resolve_and_others_pass_through():
    assert resolve_model_source("testbed:prm") == str(model_dir("prm"))
    assert resolve_model_source("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    with pytest.raises(ValueError):
        resolve_model_source("testbed:nothing")


def _pool(**extra):
    return {"model_id": "m", "model_source": "testbed:target", **extra}


@pytest.mark.parametrize("bad", [
    {"generators": []},
    {"generators": [_pool(), _pool()]},  # duplicate pool names
    {"generators": [_pool(num_replicas=0)]},
    {"generators": [_pool(autoscaling={"min_replicas": 3, "max_replicas": 1})]},
    {"generators": [_pool(speculative={"method": "draft_model"})]},  # no draft model
    {"generators": [_pool()], "router": {"default_branches": 100, "max_branches": 64}},
    {"generators": [_pool(typo=1)]},
])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValidationError):
        AppConfig.model_validate(bad)


def test_ngram_needs_no_model():
    assert SpeculativeConfig(method="ngram", prompt_lookup_max=4).to_vllm() == {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}


def test_aggregates():
    assert aggregate_score([0.9, 0.2, 0.5], "last") == 0.5
    assert aggregate_score([0.9, 0.2, 0.5], "min") == 0.2
    assert aggregate_score([0.5, 0.5], "prod") == 0.25
    assert aggregate_score([0.5, 1.0], "mean") == 0.75
    assert aggregate_score([], "last") == 0.0


def test_reward_defaults_read_the_testbed_prm_as_it_was_trained():
    from tts_ray.config import RewardConfig
    from tts_ray.constants import BAD_TOKEN, GOOD_TOKEN, STEP_TAG_TOKEN
    from tts_ray.engines.prm import split_solution, tag_steps
    from tts_ray.testbed.prm_format import prm_text_for_solution
    from tts_ray.testbed.tokenizer import prompt_text

    config = RewardConfig(model_source="testbed:prm")
    assert config.step_tag == STEP_TAG_TOKEN and config.two_way_tokens == (BAD_TOKEN, GOOD_TOKEN)
    problem, solution = "Ava has 3 apples.", "3 + 4 = 7\n\n\\boxed{7}\n"
    served = tag_steps(prompt_text(problem), split_solution(solution, config.step_separator),
                       config.step_tag, config.step_separator)
    assert served == prm_text_for_solution(problem, solution)[0]
    assert served.count(STEP_TAG_TOKEN) == 2
