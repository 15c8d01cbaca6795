"""The bundled models' files: shapes, sizes and the constraints vLLM on CPU needs."""

import json

from safetensors import safe_open

from tts_ray.testbed.models import ROLES, SHAPES, llama_config, model_dir

MAX_TOTAL_BYTES = 40 * 1024 * 1024


def test_configs_match_declared_shapes():
    for role in ROLES:
        config = json.loads((model_dir(role) / "config.json").read_text())
        assert config == llama_config(SHAPES[role])
        assert config["head_dim"] >= 32  # vLLM's CPU attention rejects 16


def test_weights_match_shapes_and_size_budget():
    total = 0
    for role in ROLES:
        path = model_dir(role) / "model.safetensors"
        total += path.stat().st_size
        with safe_open(str(path), "pt") as f:
            count = sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 - safe_open is no dict
        assert count == SHAPES[role].num_parameters(), role
    assert total <= MAX_TOTAL_BYTES


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_draft_is_at_least_four_times_smaller():
    assert SHAPES["target"].num_parameters() >= 4 * SHAPES["draft"].num_parameters()


def test_training_provenance_is_recorded():
    for role in ROLES:
        meta = json.loads((model_dir(role) / "testbed.json").read_text())
        assert meta["role"] == role and meta["recipe"] == "tts_ray.testbed.train"
    target = json.loads((model_dir("target") / "testbed.json").read_text())["training"]["selected"]
    assert 0.3 <= target["single_accuracy"] <= 0.7
