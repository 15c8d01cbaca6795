"""The engine dtype for CPU pools: float32 where the CPU has no native bfloat16.

vLLM's CPU backend runs a bfloat16 model (the testbed's, most checkpoints') in bfloat16. On a
CPU without AVX512-BF16 or AMX-BF16 its oneDNN linear cannot be built ("Failed to create
oneDNN linear, fallback to torch linear") and the matmuls are emulated: on a 2-core AVX2 EPYC
the testbed target decoded 32 sequences at 68 ms a step in bfloat16 and 24 ms in float32
(8 sequences: 18 against 11 ms; one: 6.3 against 7.8 ms). So a CPU pool whose engine
arguments name no dtype gets float32 there, and the model's own dtype elsewhere.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 matmuls
FALLBACK_CPU_DTYPE = "float32"


def cpu_has_native_bf16(cpuinfo: str) -> bool:
    """Whether ``cpuinfo`` (the text of /proc/cpuinfo) lists a native bfloat16 flag."""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


@lru_cache(maxsize=1)
def cpu_engine_dtype() -> str | None:
    """``FALLBACK_CPU_DTYPE`` on a Linux CPU without native bfloat16, else None (keep the
    model's dtype; also where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpuinfo = f.read()
    except OSError:
        return None
    return None if cpu_has_native_bf16(cpuinfo) else FALLBACK_CPU_DTYPE


def with_cpu_dtype(engine_kwargs: dict[str, Any], on_cpu: bool) -> dict[str, Any]:
    """``engine_kwargs`` with ``dtype`` set to :func:`cpu_engine_dtype` when the engine runs
    on the CPU (``on_cpu``), names no dtype, and the CPU lacks native bfloat16; otherwise
    unchanged. Returns a new dict."""
    out = dict(engine_kwargs)
    dtype = cpu_engine_dtype() if on_cpu and "dtype" not in out else None
    if dtype is not None:
        out["dtype"] = dtype
    return out
