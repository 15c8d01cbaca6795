"""Issue #8's GPU measurement pieces that run without a GPU: the random-weight model folders,
the step-time arithmetic, the configs the GPU run deploys, GPU shares in Ray placement, and the
pinned wheel list for the GPU machine."""

import json
import re
from pathlib import Path

import pytest

from tts_ray.config import GeneratorPoolConfig, RewardConfig, load_app_config
from tts_ray.constants import REPO_DIR
from tts_ray.eval import gpu

GPU_BENCH_CONFIGS = sorted((REPO_DIR / "bench" / "gpu").glob("*.yaml"))


def test_dummy_models_have_the_public_qwen_shapes_and_a_tokenizer_for_every_id(tmp_path: Path):
    from tokenizers import Tokenizer

    big = gpu.write_dummy_model(tmp_path, "qwen2.5-3b-dummy")
    small = gpu.write_dummy_model(tmp_path, "qwen2.5-0.5b-dummy")
    cfg = json.loads((big / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"]) == (2048, 36, 16, 2, 11008, 151936)
    assert cfg["tie_word_embeddings"] is True and cfg["rope_theta"] == 1e6
    assert cfg["max_position_embeddings"] == 32768 and cfg["architectures"] == ["Qwen2ForCausalLM"]
    draft = json.loads((small / "config.json").read_text())
    assert (draft["hidden_size"], draft["num_hidden_layers"], draft["num_attention_heads"],
            draft["num_key_value_heads"], draft["intermediate_size"]) == (896, 24, 14, 2, 4864)
    assert draft["vocab_size"] == cfg["vocab_size"] and draft["tie_word_embeddings"] is True
    assert not list(big.glob("*.safetensors")), "no weights: vLLM loads them with load_format=dummy"
    tokenizer = Tokenizer.from_file(str(big / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 151936
    assert tokenizer.decode([151935, 40], skip_special_tokens=False) == "<|x151935|>="
    # the testbed's own tokens keep their ids, so the eos id in the configs is the tokenizer's
    assert tokenizer.token_to_id("</s>") == cfg["eos_token_id"]
    assert json.loads((big / "generation_config.json").read_text())["eos_token_id"] == cfg["eos_token_id"]
    assert "chat_template" in json.loads((big / "tokenizer_config.json").read_text())


def test_step_time_is_the_slope_between_two_lengths_and_ratios_are_over_one_branch():
    assert gpu.step_time(0.2, 1.4, 64, 320) == pytest.approx(1.2 / 256)
    with pytest.raises(ValueError):
        gpu.step_time(1.0, 2.0, 64, 64)
    assert gpu.ratios({1: 0.003, 16: 0.0033, 64: 0.0036}) == pytest.approx({"16/1": 1.1, "64/1": 1.2})


def test_figures_compare_the_service_with_plain_vllm():
    document = {"plain": {"step_s": {"1": 0.003, "16": 0.0033}, "step_ratio": {"16/1": 1.1},
                          "request_s_b1_long": 1.0},
                "service": {"step_s": {"1": 0.0031, "16": 0.0034}, "step_ratio": {"16/1": 34 / 31},
                            "request_s_b1_long": 1.05}}
    out = gpu.figures(document)
    assert out["router_overhead_b1"] == pytest.approx(1.05)
    assert out["service_step_ratio"] == {"16/1": 34 / 31} and out["plain_step_ratio"] == {"16/1": 1.1}
    assert out["router_overhead_b1_per_step"]["1"] == pytest.approx(0.0031 / 0.003)
    assert gpu.figures({"service": document["service"]}) == {"service_step_ratio": {"16/1": 34 / 31}}


def test_gpu_slug():
    assert gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu.gpu_slug("cpu: x86_64, 2 cores") == "cpu-x86-64-2-cores"


def test_overrides_set_the_gpu_type_and_the_profile(tmp_path: Path):
    out = gpu.with_overrides(REPO_DIR / "deployments" / "testbed-gpu.yaml", tmp_path / "c.yaml",
                             accelerator_type="H200", profile_source="/x/profile.json")
    config = load_app_config(out)
    assert {p.accelerator_type for p in config.generators} == {"H200"}
    assert config.reward.accelerator_type == "H200"
    assert config.router.profile_source == "/x/profile.json"


@pytest.mark.parametrize("path", GPU_BENCH_CONFIGS, ids=lambda p: p.name)
def test_gpu_bench_configs_validate_and_use_random_weights(path: Path):
    from tts_ray.serve.local import read_serve_config

    read_serve_config(path)
    config = load_app_config(path)
    for pool in config.generators:
        assert pool.engine_kwargs["load_format"] == "dummy"
        assert pool.accelerator_type and pool.max_ongoing_requests >= 256
    assert config.router.max_branches == 64
    assert config.generators[0].speculative is None  # the plain pool is the one measured through the service
    assert sum(p.num_gpus or 1 for p in config.generators) <= 1


def test_the_testbed_gpu_deployment_fits_its_engines_on_one_gpu():
    config = load_app_config(REPO_DIR / "deployments" / "testbed-gpu.yaml")
    shares = [p.num_gpus for p in config.generators] + [config.reward.num_gpus]
    assert all(s is not None and 0 < s < 1 for s in shares) and sum(shares) <= 1
    assert all("kv_cache_memory_bytes" in p.engine_kwargs for p in config.generators)
    assert {p.speculative.num_speculative_tokens if p.speculative else 0 for p in config.generators} == {0, 4}


def test_a_gpu_share_becomes_a_fractional_bundle_and_vllms_per_worker_gpus():
    from tts_ray.serve.generator import llm_config

    pool = GeneratorPoolConfig.model_validate({"model_id": "m", "model_source": "testbed:target",
                                               "accelerator_type": "H100", "num_gpus": 0.3})
    engine = llm_config(pool).get_engine_config()
    assert [b["GPU"] for b in engine.placement_bundles] == [0.3]
    assert engine.get_runtime_env_with_local_env_vars()["env_vars"]["VLLM_RAY_PER_WORKER_GPUS"] == "0.3"
    whole = GeneratorPoolConfig.model_validate({"model_id": "m", "model_source": "testbed:target",
                                                "accelerator_type": "H100"})
    assert llm_config(whole).placement_group_config is None  # ray.serve.llm's default: one GPU
    with pytest.raises(ValueError):
        GeneratorPoolConfig.model_validate({"model_id": "m", "model_source": "x", "num_gpus": 1.5})


def test_the_reward_replica_reserves_its_gpu_share():
    from tts_ray.serve.reward import build_reward

    def actor_options(**fields):
        app = build_reward(RewardConfig(model_source="testbed:prm", **fields))
        return app._bound_deployment.ray_actor_options

    assert actor_options(accelerator_type="H100", num_gpus=0.3)["num_gpus"] == 0.3
    assert actor_options(accelerator_type="H100")["num_gpus"] == 1
    assert "num_gpus" not in actor_options()


def test_the_ray_wheel_list_is_pinned_and_does_not_repeat_the_vllm_list():
    lines = [line.strip() for line in (REPO_DIR / "bench" / "gpu" / "ray-2.60.0-cp312-wheels.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9_.]*", line) for line in lines), lines
    names = [line.split("==")[0].lower().replace("-", "_") for line in lines]
    assert len(names) == len(set(names)) and "ray" in names
    assert {"math_verify", "latex2sympy2_extended", "antlr4_python3_runtime"} <= set(names)  # tts_ray's own
    vllm_list = REPO_DIR.parent / "shared" / "gpu" / "vllm-0.26.0-cp312-wheels.txt"
    if vllm_list.exists():
        theirs = {line.split("==")[0].lower().replace("-", "_") for line in vllm_list.read_text().splitlines()
                  if "==" in line}
        assert set(names) & theirs <= {"fastapi"}  # the one deliberate override (see the file)
