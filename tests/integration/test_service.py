"""The serving core against the real thing: Ray Serve + vLLM on CPU with the testbed models.

One application (deployments/local.yaml: two generator pools of one replica each, one with
speculative decoding and one without, one PRM replica, the budget keeper, the router) is
started for the whole test session (tests/integration/conftest.py).
"""

import urllib.request

import pytest

from tests.integration.conftest import TEST_API_KEY
from tests.integration.conftest import post_json as _post
from tts_ray.grading import extract_answer
from tts_ray.testbed.arith import arith500

PROBLEM = arith500()[2]  # level 3: room for the branches to disagree


def _chat(url: str, **tts):
    body = {"messages": [{"role": "user", "content": PROBLEM["problem"]}], "tts": tts}
    status, out = _post(f"{url}/v1/chat/completions", body)
    assert status == 200, out
    return out


def test_majority_returns_the_most_frequent_answer_and_votes_add_up(service_url):
    out = _chat(service_url, method="majority", branches=8, num_speculative_tokens=4)
    tts = out["tts"]
    assert tts["plan"]["pool"] == "spec"
    answers = [b["answer"] for b in tts["branches"]]
    assert len(answers) == 8
    counts = {a: answers.count(a) for a in set(answers) if a is not None}
    assert sum(tts["votes"].values()) == sum(counts.values())
    assert tts["votes"][tts["answer"]] == max(counts.values())
    assert extract_answer(out["choices"][0]["message"]["content"]) == tts["answer"]
    assert set(tts["timings_s"]) >= {"queue", "generate", "merge", "total"}
    # speculative decoding's acceptance, from vLLM's per-request counters
    spec = tts["speculation"]
    assert spec["verify_steps"] == sum(b["spec_verify_steps"] for b in tts["branches"]) > 0
    assert spec["accepted_per_step"] == pytest.approx(spec["accepted_tokens"] / spec["verify_steps"])
    assert spec["accepted_per_step"] > 1.0


def test_the_requested_draft_length_picks_the_pool(service_url):
    spec = _chat(service_url, method="majority", branches=4, num_speculative_tokens=4)["tts"]
    plain = _chat(service_url, method="majority", branches=4, num_speculative_tokens=0)["tts"]
    assert (spec["plan"]["pool"], plain["plan"]["pool"]) == ("spec", "plain")
    assert plain["speculation"] is None and spec["speculation"]["verify_steps"] > 0
    assert len(spec["replicas"]) == len(plain["replicas"]) == 1
    assert spec["replicas"] != plain["replicas"]


@pytest.mark.parametrize("k", [4, 0])
def test_a_seed_samples_the_same_branches_on_a_cpu_pool(service_url, k):
    # deployments/local.yaml turns chunked prefill off on both CPU pools, so seeds are applied
    # there; branch i samples with seed + i whatever else the engine batches with it.
    def texts(branches: int, seed: int) -> list[str]:
        tts = _chat(service_url, method="majority", branches=branches, num_speculative_tokens=k, seed=seed)["tts"]
        assert tts["seed_applied"] is True and tts["plan"]["pool"] == ("spec" if k else "plain")
        return [b["text"] for b in tts["branches"]]

    four = texts(4, 1234)
    assert texts(4, 1234) == four
    assert texts(2, 1234) == four[:2]  # the same seed's first branches: what a benchmark's rows share
    assert texts(2, 1236) == four[2:]  # branch i of seed s is branch 0 of seed s + i


@pytest.mark.parametrize("method", ["weighted_majority", "best_of_n"])
def test_prm_methods_use_step_scores(service_url, method):
    tts = _chat(service_url, method=method, branches=8)["tts"]
    for branch in tts["branches"]:
        steps = [line for line in branch["text"].split("\n") if line.strip()]
        assert len(branch["step_scores"]) == len(steps)
        assert branch["score"] == pytest.approx(branch["step_scores"][-1])  # aggregate "last"
    if method == "weighted_majority":
        expected = sum(b["score"] for b in tts["branches"] if b["answer"] == tts["answer"])
        assert tts["votes"][tts["answer"]] == pytest.approx(expected)
    else:
        best = max((b for b in tts["branches"] if b["answer"] is not None), key=lambda b: b["score"])
        assert tts["answer"] == best["answer"]


@pytest.mark.parametrize("method", ["beam_search", "dvts"])
def test_search_methods_return_a_scored_solution(service_url, method):
    out = _chat(service_url, method=method, branches=8)
    tts = out["tts"]
    text = out["choices"][0]["message"]["content"]
    winner = next(b for b in tts["branches"] if b["text"] == text)
    steps = [line for line in text.split("\n") if line.strip()]
    assert len(winner["step_scores"]) == len(steps) >= 2
    assert tts["search_steps"] >= 2
    assert extract_answer(text) == tts["answer"] is not None


def test_openai_client_chat_completions_and_streaming(service_url):
    from openai import OpenAI

    client = OpenAI(base_url=f"{service_url}/v1", api_key=TEST_API_KEY)
    models = [m.id for m in client.models.list().data]
    assert models == ["arith-target"]
    chat = client.chat.completions.create(model="arith-target",
                                          messages=[{"role": "user", "content": PROBLEM["problem"]}],
                                          extra_body={"tts": {"method": "majority", "branches": 4}})
    assert extract_answer(chat.choices[0].message.content) is not None
    assert chat.model_extra["tts"]["num_branches"] == 4

    from tts_ray.testbed.tokenizer import prompt_text

    completion = client.completions.create(model="arith-target", prompt=prompt_text(PROBLEM["problem"]),
                                           max_tokens=160, extra_body={"tts": {"branches": 4}})
    assert extract_answer(completion.choices[0].text) is not None

    stream = client.chat.completions.create(model="arith-target", stream=True,
                                            messages=[{"role": "user", "content": PROBLEM["problem"]}],
                                            extra_body={"tts": {"method": "majority", "branches": 4}})
    content = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert extract_answer(content) is not None

    stream = client.completions.create(model="arith-target", prompt=prompt_text(PROBLEM["problem"]),
                                       stream=True, extra_body={"tts": {"method": "single"}})
    assert extract_answer("".join(chunk.choices[0].text for chunk in stream)) is not None


GOOD = {"messages": [{"role": "user", "content": "Ava has 3 apples. How many apples does Ava have now?"}]}
BAD_INPUTS = [
    ("malformed JSON", None, b'{"messages": [', 400),
    ("not an object", None, b"[1, 2]", 400),
    ("invalid UTF-8", None, b'{"messages": "\xff\xfe"}', 400),
    ("messages wrong type", {"messages": "hi"}, None, 400),
    ("empty messages", {"messages": []}, None, 400),
    ("unknown role", {"messages": [{"role": "robot", "content": "x"}]}, None, 400),
    ("unknown method", {**GOOD, "tts": {"method": "telepathy"}}, None, 400),
    ("branches zero", {**GOOD, "tts": {"branches": 0}}, None, 400),
    ("branches not a number", {**GOOD, "tts": {"branches": "many"}}, None, 400),
    ("branches above the maximum", {**GOOD, "tts": {"branches": 65}}, None, 400),
    ("negative budget", {**GOOD, "tts": {"latency_budget_s": -1}}, None, 400),
    ("absurd budget", {**GOOD, "tts": {"latency_budget_s": 1e12}}, None, 400),
    ("unknown tts field", {**GOOD, "tts": {"beams": 3}}, None, 400),
    ("max_tokens above the limit", {**GOOD, "max_tokens": 10**9}, None, 400),
    ("stream not a bool", {**GOOD, "stream": "yes"}, None, 400),
    ("n above one", {**GOOD, "n": 3}, None, 400),
    ("unknown model", {**GOOD, "model": "gpt-17"}, None, 404),
    ("branches auto misspelt", {**GOOD, "tts": {"branches": "Auto"}}, None, 400),
    ("no pool with that draft length", {**GOOD, "tts": {"num_speculative_tokens": 3}}, None, 400),
    ("early_stop not a bool", {**GOOD, "tts": {"early_stop": "yes"}}, None, 400),
]


@pytest.mark.parametrize("name,body,raw,status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_4xx_with_an_openai_error_body(service_url, name, body, raw, status):
    got, out = _post(f"{service_url}/v1/chat/completions", body, raw)
    assert got == status, out
    assert set(out["error"]) >= {"message", "type", "param", "code"} and out["error"]["message"]


def test_service_is_healthy_after_bad_input(service_url):
    with urllib.request.urlopen(f"{service_url}/health", timeout=30) as response:
        assert response.status == 200
    status, out = _post(f"{service_url}/v1/completions", {"prompt": "<|user|>Ava has 3 apples. "
                                                          "How many apples does Ava have now?\n<|assistant|>",
                                                          "tts": {"method": "single"}})
    assert status == 200 and out["choices"][0]["text"]
