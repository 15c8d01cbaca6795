"""``make demo``: test-time scaling on a local Ray cluster with the bundled testbed models.

Starts (or joins) a local Ray cluster, puts a vLLM generator (target + draft, speculative
decoding) and the PRM each in a Ray actor, then for a few ARITH-500 problems samples
``--branches`` solutions, scores every step with the PRM, and prints the single-sample
answer, the majority vote and the PRM-weighted vote with their votes and timings.
"""

from __future__ import annotations

import argparse
import os
import time

from tts_ray.constants import CPU_KVCACHE_SPACE_GIB, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE


def _actors():
    import ray

    @ray.remote(num_cpus=1)
    class Generator:
        """The target with its draft, in one vLLM engine."""

        def __init__(self) -> None:
            from tts_ray.engines import vllm_offline
            from tts_ray.testbed.models import model_dir

            self.llm = vllm_offline.generator_llm(model_dir("target"), draft=model_dir("draft"))

        def generate(self, problem: str, num_branches: int) -> list[str]:
            from vllm import SamplingParams

            from tts_ray.testbed.tokenizer import prompt_text

            params = SamplingParams(n=num_branches, temperature=DEFAULT_TEMPERATURE,
                                    max_tokens=DEFAULT_MAX_TOKENS)
            (out,) = self.llm.generate([prompt_text(problem)], params, use_tqdm=False)
            return [c.text for c in out.outputs]

        def spec_counters(self) -> dict:
            from tts_ray.engines import vllm_offline

            return vllm_offline.spec_decode_counters(self.llm)

    @ray.remote(num_cpus=1)
    class Scorer:
        """The step-level PRM on vLLM's pooling runner."""

        def __init__(self) -> None:
            from tts_ray.engines import vllm_offline
            from tts_ray.testbed.models import model_dir

            self.llm = vllm_offline.prm_llm(model_dir("prm"))

        def score(self, problem: str, solutions: list[str]) -> list[list[float]]:
            from tts_ray.engines import vllm_offline
            from tts_ray.testbed.prm_format import prm_text_for_solution

            texts = [prm_text_for_solution(problem, s)[0] for s in solutions]
            return vllm_offline.score_steps(self.llm, texts)

    return Generator, Scorer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=3, help="ARITH-500 problems to solve")
    parser.add_argument("--branches", type=int, default=8, help="sampled branches per problem")
    args = parser.parse_args(argv)

    import ray

    from tts_ray.grading import extract_answer
    from tts_ray.methods.voting import majority_vote, weighted_vote
    from tts_ray.testbed.arith import arith500

    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_SPACE_GIB)}
    # More logical CPUs than cores: the actors mostly wait on their engines' processes.
    ray.init(num_cpus=8, runtime_env={"env_vars": env}, include_dashboard=False)
    print(f"Ray cluster: {ray.cluster_resources()}")
    Generator, Scorer = _actors()
    started = time.perf_counter()
    generator, scorer = Generator.remote(), Scorer.remote()
    ray.get([generator.spec_counters.remote(), scorer.score.remote("1", ["1 + 1 = 2"])])
    print(f"engines ready in {time.perf_counter() - started:.1f}s "
          f"(target + draft on one actor, PRM on another)\n")

    correct = {"single": 0, "majority": 0, "prm_weighted": 0}
    for record in arith500()[: args.problems]:
        t0 = time.perf_counter()
        branches = ray.get(generator.generate.remote(record["problem"], args.branches))
        t1 = time.perf_counter()
        scores = ray.get(scorer.score.remote(record["problem"], branches))
        t2 = time.perf_counter()
        answers = [extract_answer(b) for b in branches]
        majority = majority_vote(answers)
        weighted = weighted_vote(answers, [s[-1] if s else 0.0 for s in scores])
        correct["single"] += answers[0] == record["answer"]
        correct["majority"] += majority.answer == record["answer"]
        correct["prm_weighted"] += weighted.answer == record["answer"]
        print(f"[{record['unique_id']}, level {record['level']}] {record['problem']}")
        print(f"  gold {record['answer']} | one sample {answers[0]} | majority {majority.answer} "
              f"| PRM-weighted {weighted.answer}")
        print(f"  votes {majority.votes}")
        print(f"  PRM weights {({k: round(v, 2) for k, v in weighted.votes.items()})}")
        print(f"  timings: generate {t1 - t0:.2f}s for {args.branches} branches, score {t2 - t1:.2f}s\n")
    counters = ray.get(generator.spec_counters.remote())
    if counters.get("num_drafts"):
        print(f"speculative decoding: {counters['num_accepted_tokens'] / counters['num_drafts']:.2f} "
              f"draft tokens accepted per verification step (k=4)")
    print(f"correct out of {args.problems}: {correct}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
