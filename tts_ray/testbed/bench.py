"""Benchmark of the bundled testbed models through vLLM on ARITH-500 (``tts-ray testbed bench``).

Measures what the foundation issue asks of the models and writes ``bench/results/testbed.json``:

- ``target_single_accuracy``: accuracy of one sample at T=0.7, averaged over the
  ``num_samples`` independent samples drawn per problem (a lower-variance estimate of the
  same quantity as drawing one sample);
- ``majority_at_16_accuracy`` and ``prm_weighted_at_16_accuracy`` over those samples (PRM
  weight: the score of the last step, search-and-learn's default aggregate);
- ``spec_tokens_per_step_k4``: draft tokens accepted per verification step with the draft
  model proposing 4 tokens, from vLLM's own counters (accepted / drafts), on a subset;
- ``prm_step_auc``: ROC-AUC of the PRM's step scores against exact step labels on the
  sampled ARITH-500 solutions (problems the PRM never trained on).
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

from tts_ray.constants import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from tts_ray.engines import vllm_offline
from tts_ray.grading import extract_answer
from tts_ray.methods.base import AGGREGATES, aggregate_score
from tts_ray.methods.voting import majority_vote, weighted_vote
from tts_ray.testbed.arith import arith500
from tts_ray.testbed.models import model_dir
from tts_ray.testbed.prm_format import prm_text_for_solution
from tts_ray.testbed.steps import label_steps
from tts_ray.testbed.train import step_auc


def _sample(llm, problems: list[str], num_samples: int, max_tokens: int) -> tuple[list[list[str]], float]:
    from vllm import SamplingParams

    from tts_ray.testbed.tokenizer import prompt_text

    params = SamplingParams(n=num_samples, temperature=DEFAULT_TEMPERATURE, max_tokens=max_tokens)
    started = time.perf_counter()
    outputs = llm.generate([prompt_text(p) for p in problems], params, use_tqdm=False)
    return [[c.text for c in out.outputs] for out in outputs], time.perf_counter() - started


def run_testbed_bench(out: str | Path, limit: int | None = None, num_samples: int = 16,
                      spec_subset: int = 100, models_root: str | Path | None = None,
                      command: str = "tts-ray testbed bench") -> dict:
    """Run the benchmark, print the figures and write them as JSON to ``out``."""
    records = arith500()[:limit] if limit else arith500()
    problems = [r["problem"] for r in records]
    target, draft, prm = (model_dir(role, models_root) for role in ("target", "draft", "prm"))
    timings: dict[str, float] = {}

    llm = vllm_offline.generator_llm(target)
    samples, timings["sample_s"] = _sample(llm, problems, num_samples, DEFAULT_MAX_TOKENS)
    vllm_offline.shutdown(llm)

    # Speculation on a subset: vLLM's counters give the acceptance; accuracy on the same
    # subset checks that speculation leaves the output distribution alone.
    subset = problems[:spec_subset]
    llm = vllm_offline.generator_llm(target, draft=draft, num_speculative_tokens=4)
    spec_samples, timings["spec_sample_s"] = _sample(llm, subset, 4, DEFAULT_MAX_TOKENS)
    counters = vllm_offline.spec_decode_counters(llm)
    vllm_offline.shutdown(llm)

    llm = vllm_offline.prm_llm(prm)
    flat = [(r, s) for r, group in zip(records, samples) for s in group]
    texts, steps = zip(*(prm_text_for_solution(r["problem"], s) for r, s in flat))
    started = time.perf_counter()
    scores = vllm_offline.score_steps(llm, list(texts))
    timings["prm_score_s"] = time.perf_counter() - started
    vllm_offline.shutdown(llm)

    step_scores, step_labels = [], []
    for (record, solution), row, step_list in zip(flat, scores, steps):
        labels = label_steps(record["solution"], solution)
        if len(row) != len(step_list):
            raise RuntimeError(f"PRM returned {len(row)} scores for {len(step_list)} steps")
        step_scores += row
        step_labels += labels

    single = majority = 0.0
    weighted = dict.fromkeys(AGGREGATES, 0.0)
    i = 0
    for record, group in zip(records, samples):
        answers = [extract_answer(s) for s in group]
        rows = scores[i:i + len(group)]
        i += len(group)
        single += sum(a == record["answer"] for a in answers) / len(group)
        majority += majority_vote(answers).answer == record["answer"]
        for name in AGGREGATES:
            weights = [aggregate_score(r, name) for r in rows]
            weighted[name] += weighted_vote(answers, weights).answer == record["answer"]
    n = len(records)
    spec_correct = sum(extract_answer(s) == r["answer"]
                       for r, group in zip(records, spec_samples) for s in group)
    drafts = counters.get("num_drafts", 0.0)
    result = {
        "target_single_accuracy": single / n,
        f"majority_at_{num_samples}_accuracy": majority / n,
        f"prm_weighted_at_{num_samples}_accuracy": weighted["last"] / n,
        "spec_tokens_per_step_k4": counters.get("num_accepted_tokens", 0.0) / drafts if drafts else None,
        "prm_step_auc": step_auc(step_scores, step_labels),
        "details": {
            "problems": n,
            "samples_per_problem": num_samples,
            "temperature": DEFAULT_TEMPERATURE,
            "prm_weighted_accuracy_by_aggregate": {k: v / n for k, v in weighted.items()},
            "spec_subset_problems": len(subset),
            "spec_subset_samples_per_problem": 4,
            "spec_subset_accuracy_with_speculation": spec_correct / (4 * len(subset)),
            "spec_decode_counters": counters,
            "spec_mean_acceptance_length_k4": 1 + counters.get("num_accepted_tokens", 0.0) / drafts
            if drafts else None,
            "steps_scored": len(step_labels),
            "correct_step_share": sum(step_labels) / len(step_labels),
            "timings_s": timings,
        },
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return result
