"""Malformed input for the ingress: hand-written bad requests and hypothesis strategies of bad
and random bodies, shared by the CI fuzz test and ``bench/bad_inputs.py`` (needs the ``dev``
extra for hypothesis)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

USER = {"role": "user", "content": "Ava has 3 apples. How many apples does Ava have now?"}
# A valid chat body that stays cheap on the real service: one short branch.
BASE_CHAT: dict[str, Any] = {"messages": [USER], "max_tokens": 16, "tts": {"method": "single"}}
BASE_COMPLETION: dict[str, Any] = {"prompt": "<|user|>Ava has 3 apples.\n<|assistant|>", "max_tokens": 16,
                                   "tts": {"method": "single"}}


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def hand_written(max_body_bytes: int = 1_048_576) -> list[tuple[str, str, bytes]]:
    """``(name, path, raw body)`` of bad requests a 4xx must answer: broken JSON, huge numbers,
    wrong types, deep nesting, invalid UTF-8, empty messages, oversized bodies, limits."""
    chat, comp = "/v1/chat/completions", "/v1/completions"
    big = "x" * (max_body_bytes + 1)
    cases = [
        ("empty body", chat, b""),
        ("truncated JSON", chat, b'{"messages": ['),
        ("trailing garbage", chat, _j(BASE_CHAT) + b"}}"),
        ("single quotes", chat, b"{'messages': []}"),
        ("bare string", chat, b'"hello"'),
        ("array body", chat, b"[1, 2]"),
        ("null body", chat, b"null"),
        ("number body", comp, b"42"),
        ("invalid UTF-8", chat, b'{"messages": "\xff\xfe"}'),
        ("invalid UTF-8 in content", chat, b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}'),
        ("lone surrogate escape", chat, b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("NaN", chat, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
        ("Infinity budget", chat, b'{"messages": [{"role": "user", "content": "x"}], "tts": {"latency_budget_s": Infinity}}'),
        ("1e999 max_tokens", chat, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e999}'),
        ("5000-digit integer", chat, b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": ' + b"9" * 5000 + b"}"),
        ("huge integer branches", chat, _j({**BASE_CHAT, "tts": {"branches": 10**30}})),
        ("huge seed", chat, _j({**BASE_CHAT, "tts": {"method": "single", "seed": 2**70}})),
        ("negative max_tokens", chat, _j({**BASE_CHAT, "max_tokens": -5})),
        ("zero max_tokens", comp, _j({**BASE_COMPLETION, "max_tokens": 0})),
        ("max_tokens above the limit", chat, _j({**BASE_CHAT, "max_tokens": 10**6})),
        ("float max_tokens", chat, _j({**BASE_CHAT, "max_tokens": 3.5})),
        ("deep nesting 64", chat, b'{"messages": ' + b"[" * 64 + b"]" * 64 + b"}"),
        ("deep nesting 100k", chat, b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("deep object nesting", comp, b'{"a": ' * 200 + b"1" + b"}" * 200),
        ("empty messages", chat, _j({"messages": []})),
        ("missing messages", chat, _j({"max_tokens": 5})),
        ("messages not a list", chat, _j({"messages": {"role": "user", "content": "x"}})),
        ("message not an object", chat, _j({"messages": ["hi"]})),
        ("empty content", chat, _j({"messages": [{"role": "user", "content": ""}]})),
        ("null content", chat, _j({"messages": [{"role": "user", "content": None}]})),
        ("content parts list", chat, _j({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})),
        ("unknown role", chat, _j({"messages": [{"role": "robot", "content": "x"}]})),
        ("missing prompt", comp, _j({"max_tokens": 5})),
        ("prompt list", comp, _j({"prompt": ["a", "b"]})),
        ("empty prompt", comp, _j({"prompt": ""})),
        ("n = 2", chat, _j({**BASE_CHAT, "n": 2})),
        ("n = 0", chat, _j({**BASE_CHAT, "n": 0})),
        ("stream string", chat, _j({**BASE_CHAT, "stream": "true"})),
        ("temperature 3", chat, _j({**BASE_CHAT, "temperature": 3})),
        ("temperature string", chat, _j({**BASE_CHAT, "temperature": "hot"})),
        ("model number", chat, _j({**BASE_CHAT, "model": 7})),
        ("unknown model", chat, _j({**BASE_CHAT, "model": "gpt-17"})),
        ("tts not an object", chat, _j({**BASE_CHAT, "tts": "fast"})),
        ("unknown tts field", chat, _j({**BASE_CHAT, "tts": {"beams": 2}})),
        ("unknown method", chat, _j({**BASE_CHAT, "tts": {"method": "telepathy"}})),
        ("branches 0", chat, _j({**BASE_CHAT, "tts": {"branches": 0}})),
        ("branches above the limit", chat, _j({**BASE_CHAT, "tts": {"branches": 100_000}})),
        ("branches string", chat, _j({**BASE_CHAT, "tts": {"branches": "many"}})),
        ("budget zero", chat, _j({**BASE_CHAT, "tts": {"latency_budget_s": 0}})),
        ("budget negative", chat, _j({**BASE_CHAT, "tts": {"latency_budget_s": -3}})),
        ("budget absurd", chat, _j({**BASE_CHAT, "tts": {"latency_budget_s": 1e300}})),
        ("draft length negative", chat, _j({**BASE_CHAT, "tts": {"num_speculative_tokens": -1}})),
        ("early_stop string", chat, _j({**BASE_CHAT, "tts": {"early_stop": "yes"}})),
        ("prompt above the token limit", comp, _j({**BASE_COMPLETION, "prompt": "1 + " * 5000})),
        ("prompt + max_tokens beyond the context", comp, _j({**BASE_COMPLETION, "prompt": "7" * 1000,
                                                            "max_tokens": 100})),
        ("oversized body", chat, _j({**BASE_CHAT, "pad": big})),
        ("oversized prompt", comp, _j({**BASE_COMPLETION, "prompt": big})),
    ]
    return cases


# JSON values of every kind, small: what a field gets when it gets the wrong thing.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)

# Values that are wrong for each field: wrong types, out of range, absurdly large.
_BAD_FIELD = {
    "messages": st.one_of(st.just([]), json_values.filter(lambda v: not isinstance(v, list)),
                          st.lists(json_values.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3),
                          st.lists(st.fixed_dictionaries({"role": st.text(max_size=8).filter(
                              lambda r: r not in ("system", "user", "assistant")), "content": st.text(max_size=8)}),
                              min_size=1, max_size=2)),
    "max_tokens": st.one_of(st.integers(max_value=0), st.integers(min_value=1025, max_value=10**30),
                            st.text(max_size=5), st.floats(min_value=0.1, max_value=0.9), st.lists(st.integers())),
    "temperature": st.one_of(st.floats(min_value=2.0001, max_value=1e300), st.floats(max_value=-0.0001),
                             st.text(min_size=1, max_size=5), st.lists(st.floats(allow_nan=False))),
    "n": st.one_of(st.integers(min_value=2, max_value=10**20), st.integers(max_value=0), st.text(max_size=3)),
    "stream": st.one_of(st.text(max_size=5), st.integers(), st.lists(st.booleans(), min_size=1)),
    "model": st.one_of(st.integers(), st.lists(st.text(max_size=4), min_size=1),
                       st.text(min_size=1, max_size=20).filter(lambda m: m != "arith-target")),
    "tts": st.one_of(
        json_values.filter(lambda v: not isinstance(v, dict) and v is not None),
        st.fixed_dictionaries({"method": st.text(max_size=10).filter(
            lambda m: m not in ("single", "majority", "weighted_majority", "best_of_n", "beam_search", "dvts",
                                "auto"))}),
        st.fixed_dictionaries({"branches": st.one_of(st.integers(max_value=0),
                                                     st.integers(min_value=65, max_value=10**25),
                                                     st.text(min_size=1, max_size=5).filter(lambda b: b != "auto"))}),
        st.fixed_dictionaries({"latency_budget_s": st.one_of(st.floats(max_value=0, allow_nan=False),
                                                             st.floats(min_value=3601, max_value=1e308),
                                                             st.text(min_size=1, max_size=4))}),
        st.fixed_dictionaries({"seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63))}),
        st.dictionaries(st.text(min_size=1, max_size=8).filter(
            lambda k: k not in ("method", "branches", "num_speculative_tokens", "early_stop", "latency_budget_s",
                                "seed")), json_values, min_size=1, max_size=2),
    ),
}


@st.composite
def bad_chat_bodies(draw) -> bytes:
    """A valid cheap chat body with one field made wrong (or dropped, for ``messages``)."""
    body = json.loads(json.dumps(BASE_CHAT))
    field = draw(st.sampled_from([*_BAD_FIELD, "drop messages"]))
    if field == "drop messages":
        del body["messages"]
    else:
        body[field] = draw(_BAD_FIELD[field])
    return json.dumps(body).encode()


@st.composite
def bad_completion_bodies(draw) -> bytes:
    """A valid cheap completion body with its prompt or one other field made wrong."""
    body = json.loads(json.dumps(BASE_COMPLETION))
    field = draw(st.sampled_from(["prompt", "max_tokens", "temperature", "n", "stream", "model", "tts"]))
    if field == "prompt":
        body["prompt"] = draw(st.one_of(st.just(""), json_values.filter(lambda v: not isinstance(v, str))))
    else:
        body[field] = draw(_BAD_FIELD[field])
    return json.dumps(body).encode()


def random_bodies() -> st.SearchStrategy[bytes]:
    """Anything: random bytes, random JSON, JSON objects with random OpenAI-ish fields (some
    of them valid requests)."""
    fields = st.fixed_dictionaries({}, optional={
        "messages": st.one_of(st.just([USER]), json_values), "prompt": st.one_of(st.text(max_size=20), json_values),
        "max_tokens": st.one_of(st.integers(min_value=1, max_value=16), json_values),
        "temperature": st.one_of(st.floats(min_value=0, max_value=2), json_values), "n": json_values,
        "stream": st.one_of(st.booleans(), json_values), "model": json_values,
        "tts": st.one_of(st.fixed_dictionaries({}, optional={
            "method": st.sampled_from(["single", "majority", "weighted_majority", "best_of_n", "auto", "x"]),
            "branches": st.one_of(st.integers(min_value=-2, max_value=8), st.just("auto"), json_values),
            "latency_budget_s": st.one_of(st.floats(min_value=-1, max_value=30, allow_nan=False), json_values),
            "early_stop": st.one_of(st.booleans(), json_values)}), json_values),
    })
    return st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode()),
                     fields.map(lambda v: json.dumps(v).encode()))
