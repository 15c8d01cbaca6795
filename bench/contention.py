"""How much two generator pools on one node slow each other -> bench/results/contention.json.

The planner multiplies a pool's profiled time by 1 + ``compute_group_slowdown`` per other busy
pool of its ``compute_group``. This measures that share on the machine: the app of ``--config``
(default deployments/local.yaml) is started twice, as configured and with every engine's
``VLLM_CPU_OMP_THREADS_BIND`` removed (vLLM's "auto" binding, which on two cores puts every
engine on core 0). Each time, the same ARITH-500 prompts (greedy, one branch, ``--concurrency``
requests at once) run on the first two pools alone, one pool after the other, and then on both
at once. ``slowdown`` per pool is (latency with both busy / latency alone) - 1; their mean is
the value for ``compute_group_slowdown``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIND = "VLLM_CPU_OMP_THREADS_BIND"


def _variant(config: Path, keep_binding: bool, out: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The config with or without the engines' thread binding; returns it and its pools."""
    import yaml

    data = yaml.safe_load(config.read_text())
    args = data["applications"][0]["args"]
    for section in [*args["generators"], args.get("reward") or {}]:
        env = (section.get("runtime_env") or {}).get("env_vars") or {}
        if not keep_binding:
            env.pop(BIND, None)
    out.write_text(yaml.safe_dump(data))
    return out, args["generators"][:2]


async def _stream(client, url: str, problems, model: str, k: int, concurrency: int, max_tokens: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(problem) -> None:
        async with gate:
            body = {"model": model, "messages": [{"role": "user", "content": problem.problem}],
                    "max_tokens": max_tokens, "temperature": 0.0,
                    "tts": {"method": "single", "branches": 1, "num_speculative_tokens": k,
                            "latency_budget_s": 120}}
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body, timeout=180)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(p) for p in problems))
    return latencies


def _measure(config: Path, problems, concurrency: int, max_tokens: int, pools: list[dict[str, Any]]) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from tts_ray.serve.local import start_app

    ks = [(p["name"], p["model_id"], (p.get("speculative") or {}).get("num_speculative_tokens", 0)) for p in pools]
    if len({k for _, _, k in ks}) != 2:
        raise SystemExit("the first two pools need different num_speculative_tokens (that is how a request picks one)")
    url = start_app(config, quiet=True)

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            for _, model, k in ks:  # warm-up: compiled shapes, prefix cache
                await _stream(client, url, problems[:8], model, k, concurrency, max_tokens)
            alone = {name: await _stream(client, url, problems, model, k, concurrency, max_tokens)
                     for name, model, k in ks}
            started = time.perf_counter()
            both = await asyncio.gather(*(_stream(client, url, problems, model, k, concurrency, max_tokens)
                                          for _, model, k in ks))
            wall_s = time.perf_counter() - started
        rows = {}
        for (name, _, _), mixed in zip(ks, both):
            a, m = statistics.fmean(alone[name]), statistics.fmean(mixed)
            rows[name] = {"alone_mean_s": round(a, 4), "both_busy_mean_s": round(m, 4), "slowdown": round(m / a - 1, 3)}
        return {"pools": rows, "both_busy_wall_s": round(wall_s, 3),
                "slowdown_mean": round(statistics.fmean(r["slowdown"] for r in rows.values()), 3)}

    try:
        return asyncio.run(run())
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "deployments/local.yaml")
    parser.add_argument("--limit", type=int, default=24, help="ARITH-500 problems per stream")
    parser.add_argument("--concurrency", type=int, default=4, help="requests at once per pool")
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/contention.json")
    args = parser.parse_args()

    from tts_ray.eval.datasets import load_dataset

    problems = load_dataset("arith500", limit=args.limit).problems
    document: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, keep in (("as_configured", True), ("auto_binding", False)):
            config, pools = _variant(args.config, keep, Path(tmp) / f"{label}.yaml")
            print(f"{label}: starting the app ...", file=sys.stderr, flush=True)
            document[label] = _measure(config, problems, args.concurrency, args.max_tokens, pools)
            print(label, json.dumps(document[label]), flush=True)
    document.update({
        "config": str(args.config.relative_to(REPO)) if args.config.is_relative_to(REPO) else str(args.config),
        "problems": len(problems), "concurrency_per_pool": args.concurrency, "max_tokens": args.max_tokens,
        "command": "python bench/contention.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
