"""Shapes and on-disk layout of the three testbed models (target, draft, PRM), all Llama.

The models are written as plain Hugging Face checkpoints (``config.json``,
``model.safetensors`` and the shared tokenizer files), so vLLM, transformers and any other
loader read them like a hub model. ``config.json`` is written here rather than by
transformers so that the files do not depend on the transformers version that trained them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_ray.constants import (
    BOS_TOKEN,
    DRAFT_MODEL_NAME,
    EOS_TOKEN,
    MAX_MODEL_LEN,
    PAD_TOKEN,
    PRM_MODEL_NAME,
    TARGET_MODEL_NAME,
    TESTBED_MODELS_DIR,
    VOCAB_SIZE,
)
from tts_ray.testbed.tokenizer import token_id, write_tokenizer

ROLES = ("target", "draft", "prm")


@dataclass(frozen=True)
class ModelShape:
    """The size of one Llama model. ``head_dim`` is hidden_size / num_heads (keep it >= 32:
    vLLM's CPU attention kernel rejects 16)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_parameters(self) -> int:
        """Parameter count with tied input/output embeddings."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        return VOCAB_SIZE * h + self.num_layers * per_layer + h


SHAPES: dict[str, ModelShape] = {
    "target": ModelShape(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=4, intermediate_size=768),
    # At least 4x smaller than the target (here about 9x), same tokenizer, for speculation.
    "draft": ModelShape(hidden_size=128, num_layers=4, num_heads=2, num_kv_heads=2, intermediate_size=384),
    # The PRM starts from the target's weights, so it has the target's shape.
    "prm": ModelShape(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=4, intermediate_size=768),
}
NAMES = {"target": TARGET_MODEL_NAME, "draft": DRAFT_MODEL_NAME, "prm": PRM_MODEL_NAME}


def model_dir(role: str, root: str | Path | None = None) -> Path:
    """Where the model of ``role`` lives (the bundled copy unless ``root`` is given).

    Raises:
        ValueError: ``role`` is not one of ``ROLES``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return Path(root or TESTBED_MODELS_DIR) / NAMES[role]


def llama_config(shape: ModelShape) -> dict:
    """The ``config.json`` contents of a Llama model of ``shape`` with the testbed tokenizer."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_MODEL_LEN,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": token_id(BOS_TOKEN),
        "eos_token_id": token_id(EOS_TOKEN),
        "pad_token_id": token_id(PAD_TOKEN),
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }


def write_model_files(out_dir: str | Path, shape: ModelShape, state_dict: dict, meta: dict) -> Path:
    """Write a complete checkpoint: config, bf16 safetensors weights, tokenizer, and
    ``testbed.json`` (how it was trained: ``meta`` plus the shape).

    ``state_dict`` holds transformers' LlamaForCausalLM names; the tied ``lm_head.weight``
    is dropped.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().to(torch.bfloat16).contiguous().cpu()
        for name, tensor in state_dict.items()
        if name != "lm_head.weight"
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llama_config(shape), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": token_id(BOS_TOKEN),
        "eos_token_id": token_id(EOS_TOKEN),
        "pad_token_id": token_id(PAD_TOKEN),
    }, indent=2) + "\n")
    write_tokenizer(out)
    (out / "testbed.json").write_text(json.dumps({**meta, "shape": asdict(shape)}, indent=2) + "\n")
    return out
