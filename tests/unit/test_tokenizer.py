"""The character tokenizer: round trips, special tokens, chat template, committed files."""

import json
import tempfile
from pathlib import Path

from tts_ray.constants import ASSISTANT_TOKEN, BOS_TOKEN, EOS_TOKEN, STEP_TAG_TOKEN, VOCAB_SIZE
from tts_ray.testbed.arith import arith500
from tts_ray.testbed.models import ROLES, model_dir
from tts_ray.testbed.prm_format import prm_text
from tts_ray.testbed.tokenizer import build_tokenizer, prompt_text, token_id, vocabulary, write_tokenizer


def test_vocabulary_is_small_and_unique():
    vocab = vocabulary()
    assert len(vocab) == VOCAB_SIZE
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))


def test_round_trip_of_problems_and_solutions():
    tok = build_tokenizer()
    for record in arith500()[:100]:
        text = prompt_text(record["problem"]) + record["solution"] + EOS_TOKEN
        ids = tok.encode(text).ids
        assert ids[0] == token_id(BOS_TOKEN)
        assert tok.decode(ids, skip_special_tokens=False) == BOS_TOKEN + text
        # one id per character, special tokens one id each
        assert len(ids) == 1 + len(record["problem"]) + 1 + len(record["solution"]) + 3


def test_special_tokens_are_single_ids():
    tok = build_tokenizer()
    ids = tok.encode(prm_text("p", ["1 + 1 = 2"]), add_special_tokens=False).ids
    assert ids.count(token_id(STEP_TAG_TOKEN)) == 1
    assert token_id(ASSISTANT_TOKEN) in ids


def test_hf_tokenizer_of_bundled_models_matches_and_renders_chat():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir("target")))
    problem = arith500()[0]["problem"]
    chat = tok.apply_chat_template([{"role": "user", "content": problem}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == BOS_TOKEN + prompt_text(problem)
    # chat (no special tokens added) and completion (BOS added) reach the same ids
    assert tok(chat, add_special_tokens=False).input_ids == tok(prompt_text(problem)).input_ids
    assert tok.decode(tok(problem).input_ids, skip_special_tokens=True) == problem


def test_committed_tokenizer_files_regenerate_identically():
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(tmp)
        for role in ROLES:
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                assert (Path(tmp) / name).read_text() == (model_dir(role) / name).read_text(), (role, name)
        assert json.loads((Path(tmp) / "tokenizer_config.json").read_text())["chat_template"]
