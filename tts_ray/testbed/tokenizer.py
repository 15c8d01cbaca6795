"""The testbed's character-level tokenizer, written as Hugging Face files that vLLM loads.

One token per character keeps digits apart, which small models need to learn arithmetic,
and keeps the vocabulary tiny (128 ids). Special tokens mark chat roles, and the PRM's
step tag and its good/bad labels. ``write_tokenizer`` is deterministic: the files it writes
are committed next to each model and a test checks they regenerate byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from tts_ray.constants import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    MAX_MODEL_LEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_TOKEN,
    TOKENIZER_CHARS,
    UNK_TOKEN,
    USER_TOKEN,
    VOCAB_SIZE,
)

# Roles render as <|role|>content\n; the generation prompt ends with <|assistant|>, and an
# assistant turn ends with </s>. The BOS token comes from the template so that vLLM's chat
# path (which tokenizes the rendered text without adding special tokens) matches training.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM_TOKEN + "{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}" + USER_TOKEN + "{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT_TOKEN + "{{ message['content'] }}"
    + EOS_TOKEN + "\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_TOKEN + "{% endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens first, then one id per character, padded to VOCAB_SIZE."""
    tokens = list(SPECIAL_TOKENS) + list(TOKENIZER_CHARS)
    tokens += [f"<|unused{i}|>" for i in range(VOCAB_SIZE - len(tokens))]
    return {token: i for i, token in enumerate(tokens)}


def token_id(token: str) -> int:
    """The id of one token of :func:`vocabulary`; KeyError for an unknown token."""
    return vocabulary()[token]


def build_tokenizer():
    """A ``tokenizers.Tokenizer``: character split, word-level ids, BOS added on encode."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def tokenizer_config() -> dict:
    """The ``tokenizer_config.json`` that makes ``AutoTokenizer`` build a fast tokenizer."""
    vocab = vocabulary()
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS
                                      if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN)],
        "added_tokens_decoder": {
            str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}
            for t in SPECIAL_TOKENS
        },
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_MODEL_LEN,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer(out_dir: str | Path) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / "tokenizer.json"), pretty=True)
    config = tokenizer_config()
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special_map = {key: config[key] for key in ("bos_token", "eos_token", "pad_token", "unk_token",
                                                "additional_special_tokens")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return out


def prompt_text(problem: str) -> str:
    """The completion prompt for one problem: the chat template's rendering less its BOS.

    Encoding it with special tokens on (vLLM's default for completions) adds the BOS back,
    so completions and chat requests reach the model as the same token ids.
    """
    return f"{USER_TOKEN}{problem}\n{ASSISTANT_TOKEN}"
