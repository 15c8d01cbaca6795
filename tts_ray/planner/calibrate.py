"""``tts-ray calibrate``: sample S solutions per problem from each generator model, score them
with the reward model, and write the expected accuracy of every (method, B <= S) plus the
spread of branch lengths (what the latency model needs) as the planner's calibration file.

Calibrate on problems the benchmark does not use (the testbed default is ARITH's validation
split), so the planner is not tuned on its own test set.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Sequence
from pathlib import Path

from tts_ray.config import AppConfig, resolve_model_source
from tts_ray.constants import DEFAULT_TEMPERATURE
from tts_ray.engines.cpu_dtype import with_cpu_dtype
from tts_ray.grading import extract_answer, is_equivalent, normalize_answer
from tts_ray.methods.base import aggregate_score
from tts_ray.planner.calibration import Calibration, ModelCalibration, accuracy_by_tokens, accuracy_curves
from tts_ray.planner.profiler import _chat_prompts

MAX_LENGTHS_KEPT = 2000  # a sorted sample of branch lengths is all the latency model needs


def calibrate(config: AppConfig, records: Sequence[dict], dataset: str, samples: int = 32,
              max_tokens: int | None = None, command: str = "tts-ray calibrate", log=print,
              samples_out: Path | None = None) -> Calibration:
    """Calibrate every model of ``config`` on ``records`` (dicts with ``problem`` and ``answer``).

    With ``samples_out``, also write every problem's samples (model id, normalized answers,
    correctness, lengths in tokens, scores) as JSONL: what ``tts-ray tune-early-stop`` reads.
    """
    from vllm import SamplingParams

    from tts_ray.engines import vllm_offline

    max_tokens = max_tokens or config.router.default_max_tokens
    models: dict[str, ModelCalibration] = {}
    seen: set[str] = set()
    for pool in config.generators:
        if pool.model_id in seen:
            continue
        seen.add(pool.model_id)
        target = resolve_model_source(pool.model_source)
        prompts = _chat_prompts(target, [r["problem"] for r in records])
        log(f"sampling {samples} solutions for {len(records)} problems from {pool.model_id} ...")
        # Speculative decoding leaves the output distribution alone, so calibrate without it.
        llm = vllm_offline.generator_llm(target, max_model_len=pool.max_model_len,
                                         gpu_memory_utilization=pool.gpu_memory_utilization,
                                         tensor_parallel_size=pool.tensor_parallel_size,
                                         **with_cpu_dtype(pool.engine_kwargs, on_cpu=pool.accelerator_type is None))
        params = SamplingParams(n=samples, temperature=DEFAULT_TEMPERATURE, max_tokens=max_tokens)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        vllm_offline.shutdown(llm)
        texts = [[c.text for c in out.outputs] for out in outputs]
        per_problem_lengths = [[len(c.token_ids) for c in out.outputs] for out in outputs]
        scores = _score(config, records, texts, log) if config.reward is not None else None
        problems = []
        for i, record in enumerate(records):
            answers = [extract_answer(t) for t in texts[i]]
            problems.append({
                "answers": [normalize_answer(a) if a is not None else None for a in answers],
                "correct": [a is not None and is_equivalent(a, str(record["answer"])) for a in answers],
                "scores": scores[i] if scores is not None else None,
                "lengths": per_problem_lengths[i],
            })
        if samples_out is not None:
            samples_out.parent.mkdir(parents=True, exist_ok=True)
            with open(samples_out, "a" if len(seen) > 1 else "w") as f:
                f.writelines(json.dumps({"model_id": pool.model_id, **problem}) + "\n" for problem in problems)
            log(f"  samples written to {samples_out}")
        models[pool.model_id] = model_calibration(problems, max_tokens, log)
    return Calibration(dataset=dataset, problems=len(records), samples_per_problem=samples,
                       temperature=DEFAULT_TEMPERATURE, models=models,
                       created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       command=command)


def model_calibration(problems: Sequence[dict], max_tokens: int, log=print) -> ModelCalibration:
    """One model's calibration from its samples: problems as ``--samples-out`` writes them
    (``answers``, ``correct``, ``scores`` or None, ``lengths``), drawn with ``max_tokens``."""
    curves = accuracy_curves(problems)
    lengths = [n for p in problems for n in p["lengths"]]
    kept = sorted(random.Random(0).sample(lengths, min(len(lengths), MAX_LENGTHS_KEPT)))
    samples = len(problems[0]["answers"])
    log(f"  majority@1 {curves['majority'][0]:.3f}, majority@{samples} {curves['majority'][-1]:.3f}"
        + (f", weighted@{samples} {curves['weighted_majority'][-1]:.3f}" if "weighted_majority" in curves else ""))
    return ModelCalibration(accuracy=curves, lengths=kept, max_tokens=max_tokens,
                            accuracy_by_tokens=accuracy_by_tokens(problems, max_tokens))


def calibration_from_samples(rows: Sequence[dict], dataset: str, max_tokens: int,
                             command: str = "tts-ray calibrate", log=print) -> Calibration:
    """Rebuild a calibration from a ``--samples-out`` file's rows, without engines.

    Raises:
        ValueError: no rows, one model's problems with different sample counts, or a sample
            longer than ``max_tokens`` (the file was drawn with a larger max_tokens).
    """
    if not rows:
        raise ValueError("no samples")
    longest = max(n for row in rows for n in row["lengths"])
    if longest > max_tokens:
        raise ValueError(f"a sample has {longest} tokens, more than max_tokens={max_tokens}: "
                         "give the max_tokens the samples were drawn with")
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model_id"], []).append(row)
    models = {}
    for model_id, problems in by_model.items():
        log(f"{model_id}: {len(problems)} problems")
        models[model_id] = model_calibration(problems, max_tokens, log)
    first = next(iter(by_model.values()))
    return Calibration(dataset=dataset, problems=len(first), samples_per_problem=len(first[0]["answers"]),
                       temperature=DEFAULT_TEMPERATURE, models=models,
                       created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       command=command)


def _score(config: AppConfig, records: Sequence[dict], texts: list[list[str]], log) -> list[list[float]]:
    """Aggregated PRM score of every sample, formatted exactly as the reward deployment does."""
    from vllm import LLM

    from tts_ray.engines import vllm_offline
    from tts_ray.engines.prm import split_solution, tag_steps, vllm_prm_args

    reward = config.reward
    log("scoring with the reward model ...")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(reward.model_source))
    llm = LLM(**vllm_prm_args(reward))
    inputs = []
    for record, group in zip(records, texts):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": record["problem"]}],
                                               tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token or ""
        prompt = prompt[len(bos):] if bos and prompt.startswith(bos) else prompt
        for text in group:
            inputs.append(tag_steps(prompt, split_solution(text, reward.step_separator), reward.step_tag,
                                    reward.step_separator))
    rows = vllm_offline.score_steps(llm, inputs)
    vllm_offline.shutdown(llm)
    flat = [aggregate_score(row, reward.aggregate) for row in rows]
    width = len(texts[0])
    return [flat[i * width:(i + 1) * width] for i in range(len(texts))]
