"""The engine dtype of CPU pools (tts_ray.engines.cpu_dtype)."""

from tts_ray.engines import cpu_dtype
from tts_ray.engines.cpu_dtype import cpu_has_native_bf16, with_cpu_dtype

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx avx2\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_native_bfloat16_is_read_from_the_cpu_flags():
    assert not cpu_has_native_bf16(AVX2_ONLY)
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS)
    assert cpu_has_native_bf16("flags : avx512f avx512_bf16\n")
    assert not cpu_has_native_bf16("")  # no flags line: nothing native claimed


def test_cpu_pools_without_native_bfloat16_get_float32_unless_they_name_a_dtype(monkeypatch):
    monkeypatch.setattr(cpu_dtype, "cpu_engine_dtype", lambda: "float32")
    kwargs = {"max_model_len": 1024}
    assert with_cpu_dtype(kwargs, on_cpu=True) == {"max_model_len": 1024, "dtype": "float32"}
    assert kwargs == {"max_model_len": 1024}  # a new dict: the pool's own is left alone
    assert with_cpu_dtype({"dtype": "bfloat16"}, on_cpu=True) == {"dtype": "bfloat16"}
    assert with_cpu_dtype(kwargs, on_cpu=False) == kwargs  # a GPU pool keeps the model's dtype
    monkeypatch.setattr(cpu_dtype, "cpu_engine_dtype", lambda: None)  # native bfloat16
    assert with_cpu_dtype(kwargs, on_cpu=True) == kwargs


def test_generator_pools_and_the_reward_model_get_the_cpu_dtype(monkeypatch):
    from tts_ray.config import GeneratorPoolConfig, RewardConfig
    from tts_ray.engines.prm import vllm_prm_args
    from tts_ray.serve.generator import llm_config

    monkeypatch.setattr(cpu_dtype, "cpu_engine_dtype", lambda: "float32")
    pool = {"name": "p", "model_id": "m", "model_source": "testbed:target"}
    assert llm_config(GeneratorPoolConfig(**pool)).engine_kwargs["dtype"] == "float32"
    gpu = GeneratorPoolConfig(**pool, accelerator_type="H100")
    assert "dtype" not in llm_config(gpu).engine_kwargs
    assert vllm_prm_args(RewardConfig(model_source="testbed:prm"))["dtype"] == "float32"
    assert "dtype" not in vllm_prm_args(RewardConfig(model_source="testbed:prm", accelerator_type="H100"))
