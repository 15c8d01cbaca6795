"""Where a one-branch request's time goes, layer by layer -> bench/results/overhead.json.

Starts the app of ``--config`` (default deployments/local.yaml) on a local Ray cluster (or uses
``--url`` with a cluster this process can join through ``RAY_ADDRESS``), then, one request at a
time over the same ARITH-500 prompts (the target's chat template, greedy, ``--max-tokens``):

1. ``http``: the whole request, client -> Serve proxy -> router -> keeper -> generator replica ->
   vLLM and back (``tts.method = single``, one branch, pinned to ``--pool``'s draft length);
   the router's own ``tts.timings_s`` come with it;
2. ``handle``: the generator replica called directly through a Serve handle
   (``generate_branch``), no proxy, router or keeper;
3. ``engine``: inside that call, the time from handing the request to vLLM to its last output
   (``engine_s``);
4. ``keeper``: one admit + release round trip to the budget deployment.

Before the app starts, and again beside it while it idles, the same prompts run on an
in-process ``vllm.LLM`` built as ``tts-ray bench`` builds its one-sample peer
(``in_process_alone``, ``in_process_beside_service``): their ratio is what the idle Ray
cluster and Serve app cost an engine on this machine, a part of ``tts-ray bench``'s router
overhead that no hop explains.

The differences between layers say what each hop costs. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean_ms": round(statistics.fmean(values) * 1000, 2),
            "median_ms": round(statistics.median(values) * 1000, 2), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "deployments/local.yaml")
    parser.add_argument("--url", default=None, help="a running service (this process must reach its Ray cluster)")
    parser.add_argument("--app", default="tts", help="Serve application name")
    parser.add_argument("--pool", default=None, help="generator pool (default: the config's first)")
    parser.add_argument("--limit", type=int, default=20, help="ARITH-500 problems")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the problems (layers interleaved)")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process engine layers")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/overhead.json")
    args = parser.parse_args()

    import httpx
    from ray import serve
    from ray.serve.llm.openai_api_models import CompletionRequest
    from transformers import AutoTokenizer

    from tts_ray.config import resolve_model_source
    from tts_ray.eval.bench import _app_config
    from tts_ray.eval.datasets import load_dataset

    app_config = _app_config(args.config)
    pool = next((p for p in app_config.generators if p.name == args.pool), app_config.generators[0])
    k = pool.speculative.num_speculative_tokens if pool.speculative else 0
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(pool.model_source))
    problems = load_dataset("arith500", limit=args.limit).problems
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.problem}], tokenize=False,
                                           add_generation_prompt=True) for p in problems]
    in_process: dict[str, list[float]] = {}
    llm = None
    if not args.no_in_process:
        from vllm import SamplingParams

        from tts_ray.engines import vllm_offline

        engine_kwargs = {"max_model_len": pool.max_model_len, "gpu_memory_utilization": pool.gpu_memory_utilization,
                         **pool.engine_kwargs}
        if pool.speculative is not None:
            engine_kwargs["speculative_config"] = pool.speculative.to_vllm()
        llm = vllm_offline.generator_llm(resolve_model_source(pool.model_source), **engine_kwargs)
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_tokens)
        prompts = [{"prompt_token_ids": tokenizer.encode(t, add_special_tokens=False)} for t in texts]

        def in_process_pass(layer: str) -> None:
            for prompt in prompts:  # the first pass warms up and is not counted
                llm.generate([prompt], greedy, use_tqdm=False)
            in_process[layer] = []
            for _ in range(args.repeats):
                for prompt in prompts:
                    t0 = time.perf_counter()
                    llm.generate([prompt], greedy, use_tqdm=False)
                    in_process[layer].append(time.perf_counter() - t0)

        in_process_pass("in_process_alone")
    url = args.url
    started_here = url is None
    if started_here:
        from tts_ray.serve.local import start_app

        url = start_app(args.config, quiet=True)
    if llm is not None:
        time.sleep(10)  # the app settles: replicas report ready, the controller's loop idles
        in_process_pass("in_process_beside_service")
        vllm_offline.shutdown(llm)  # its engine process would compete with the service's below
    generator = serve.get_deployment_handle(f"generator-{pool.name}", app_name=args.app)
    keeper = serve.get_deployment_handle("budget", app_name=args.app)
    layers: dict[str, list[float]] = {"http": [], "router_total": [], "router_generate": [],
                                      "handle": [], "engine": [], "keeper": []}

    async def one_pass(client: httpx.AsyncClient) -> None:
        for problem, text in zip(problems, texts):
            body = {"model": pool.model_id, "messages": [{"role": "user", "content": problem.problem}],
                    "max_tokens": args.max_tokens, "temperature": 0.0,
                    "tts": {"method": "single", "branches": 1, "num_speculative_tokens": k}}
            t0 = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            layers["http"].append(time.perf_counter() - t0)
            response.raise_for_status()
            timings = response.json()["tts"]["timings_s"]
            layers["router_total"].append(timings["total"])
            layers["router_generate"].append(timings["generate"])

            request = CompletionRequest(model=pool.model_id, prompt=text, max_tokens=args.max_tokens,
                                        temperature=0.0, n=1, add_special_tokens=False)
            t0 = time.perf_counter()
            result = await generator.generate_branch.remote(request, None)
            layers["handle"].append(time.perf_counter() - t0)
            layers["engine"].append(result["engine_s"])

            t0 = time.perf_counter()
            await keeper.admit.remote("overhead-probe", {"budget_s": 60.0, "max_tokens": args.max_tokens,
                                                         "method": "single", "branches": 1})
            await keeper.release.remote("overhead-probe", [], None, None)
            layers["keeper"].append(time.perf_counter() - t0)

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await one_pass(client)  # warm-up pass, not counted
            for values in layers.values():
                values.clear()
            for _ in range(args.repeats):
                await one_pass(client)

    try:
        asyncio.run(run())
    finally:
        if started_here:
            serve.shutdown()
    figures = {name: _summary(values) for name, values in {**in_process, **layers}.items()}
    mean = {name: f["mean_ms"] for name, f in figures.items()}
    if in_process:
        figures["ratios"] = {
            "idle_service_slows_an_engine (beside / alone)":
                round(mean["in_process_beside_service"] / mean["in_process_alone"], 3),
            "engine_in_replica_vs_alone (engine / in_process_alone)":
                round(mean["engine"] / mean["in_process_alone"], 3),
            "http_vs_engine_in_replica (http / engine)": round(mean["http"] / mean["engine"], 3),
            "http_vs_alone (http / in_process_alone: tts-ray bench's router overhead)":
                round(mean["http"] / mean["in_process_alone"], 3),
        }
    figures["hops_ms"] = {
        "proxy_and_http (http - router_total)": round(mean["http"] - mean["router_total"], 2),
        "router_outside_generation (router_total - router_generate)":
            round(mean["router_total"] - mean["router_generate"], 2),
        "router_generate_vs_direct_handle": round(mean["router_generate"] - mean["handle"], 2),
        "handle_around_engine (handle - engine)": round(mean["handle"] - mean["engine"], 2),
    }
    document = {**figures, "pool": pool.name, "num_speculative_tokens": k, "problems": len(problems),
                "repeats": args.repeats, "max_tokens": args.max_tokens,
                "command": "python bench/overhead.py " + " ".join(sys.argv[1:]),
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
