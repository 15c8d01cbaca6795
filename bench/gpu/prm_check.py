"""Does the testbed PRM score steps the same on this vLLM as on the other? (docs/gpu.md, "The PRM
on vLLM 0.26".)

Scores reference ARITH solutions and corrupted ones (every step slipped; only the last steps
slipped) through tts_ray's offline scorer path (``vllm_offline.prm_llm`` / ``score_steps``),
and records, per input, how many rows vLLM returned against the prompt's token and step-tag
counts, what the old conversion (``data.flatten()``, aggregate ``last``) read, and the step
scores the current one (``step_scores_from_output``) reads.

    python bench/gpu/prm_check.py --out prm-check.json [--n 20]
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()

    import vllm

    from tts_ray.engines import vllm_offline
    from tts_ray.engines.prm import engine_step_tag_id, step_scores_from_output
    from tts_ray.testbed.arith import arith500, noisy_solution
    from tts_ray.testbed.models import model_dir
    from tts_ray.testbed.prm_format import prm_text_for_solution

    rng = random.Random(0)
    items = []  # (problem index, kind, text)
    for i, record in enumerate(arith500()[:args.n]):
        steps = record["solution"].split("\n")
        items.append((i, "good", prm_text_for_solution(record["problem"], record["solution"])[0]))
        items.append((i, "all_wrong", prm_text_for_solution(
            record["problem"], noisy_solution(record["solution"], rng, 1.0))[0]))
        # a slip in the last arithmetic step only (the boxed answer follows it)
        late = noisy_solution("\n".join(steps[-2:]), rng, 1.0).split("\n")
        items.append((i, "last_wrong", prm_text_for_solution(
            record["problem"], "\n".join(steps[:-2] + late))[0]))

    t0 = time.perf_counter()
    llm = vllm_offline.prm_llm(model_dir("prm"), enforce_eager=True)
    start_s = time.perf_counter() - t0
    tag = engine_step_tag_id(llm)
    outputs = llm.encode([t for _, _, t in items], pooling_task="token_classify", use_tqdm=False)
    via_score_steps = vllm_offline.score_steps(llm, [t for _, _, t in items])
    rows = []
    for (i, kind, _), out, fixed in zip(items, outputs, via_score_steps):
        ids = list(out.prompt_token_ids)
        old = out.outputs.data.float().flatten().tolist()
        rows.append({"problem": i, "kind": kind, "rows": int(out.outputs.data.shape[0]),
                     "shape": list(out.outputs.data.shape), "prompt_tokens": len(ids),
                     "tags": ids.count(tag), "old_last": old[-1], "old_len": len(old),
                     "steps": step_scores_from_output(out.outputs.data, ids, tag),
                     "score_steps": fixed})

    def wins(key, bad_kind):
        good = {r["problem"]: r for r in rows if r["kind"] == "good"}
        bad = [r for r in rows if r["kind"] == bad_kind]
        return sum(key(good[b["problem"]]) > key(b) for b in bad) / len(bad)

    summary = {}
    for bad_kind in ("all_wrong", "last_wrong"):
        summary[f"good_over_{bad_kind}_old_last"] = wins(lambda r: r["old_last"], bad_kind)
        summary[f"good_over_{bad_kind}_fixed_last"] = wins(lambda r: r["steps"][-1], bad_kind)
        summary[f"good_over_{bad_kind}_fixed_min"] = wins(lambda r: min(r["steps"]), bad_kind)
    for kind in ("good", "all_wrong", "last_wrong"):
        sel = [r for r in rows if r["kind"] == kind]
        summary[f"mean_last_{kind}_fixed"] = sum(r["steps"][-1] for r in sel) / len(sel)
        summary[f"mean_last_{kind}_old"] = sum(r["old_last"] for r in sel) / len(sel)
    summary["all_token_rows"] = sum(r["rows"] == r["prompt_tokens"] for r in rows)
    summary["step_rows"] = sum(r["rows"] == r["tags"] for r in rows)
    summary["score_steps_matches"] = all(r["steps"] == r["score_steps"] for r in rows)
    result = {"vllm": vllm.__version__, "step_tag_id": tag, "engine_start_s": start_s,
              "summary": summary, "rows": rows}
    try:
        import torch
        result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        result["device"] = "unknown"
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("vllm", "device", "step_tag_id", "engine_start_s")}))
    print(json.dumps(summary, indent=1))
    vllm_offline.shutdown(llm)


if __name__ == "__main__":
    main()
