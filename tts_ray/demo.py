"""``make demo``: start the service on a local Ray cluster and ask it real questions.

Deploys ``deployments/local.yaml`` (the bundled ARITH models: two generator replicas with
speculative decoding, a PRM replica, the router), then sends ARITH-500 questions with the
official ``openai`` client, once per TTS method, and prints each answer with its votes,
the replicas that served the branches, and the timings.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time

from tts_ray.constants import REPO_DIR

DEMO_METHODS = ("single", "majority", "weighted_majority", "best_of_n", "beam_search", "dvts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO_DIR / "deployments" / "local.yaml"))
    parser.add_argument("--problems", type=int, default=2, help="ARITH-500 problems to ask")
    parser.add_argument("--branches", type=int, default=8, help="branches per request")
    args = parser.parse_args(argv)

    from openai import OpenAI
    from ray import serve

    from tts_ray.serve.local import start_app
    from tts_ray.testbed.arith import arith500

    # The service runs with API keys on: the ones in $TTS_RAY_API_KEYS, else a fresh one.
    if not os.environ.get("TTS_RAY_API_KEYS", "").strip():
        os.environ["TTS_RAY_API_KEYS"] = f"sk-demo-{secrets.token_urlsafe(16)}"
    api_key = os.environ["TTS_RAY_API_KEYS"].split(",")[0].strip()
    started = time.perf_counter()
    print("starting the service (engine start-up takes a few minutes on 2 cores)...", flush=True)
    url = start_app(args.config, quiet=True)
    print(f"\ntts_ray is up at {url}/v1 after {time.perf_counter() - started:.0f}s")
    print(f"API keys are on; pass one as a Bearer token (GET {url}/health needs none):\n"
          f"  curl {url}/v1/models -H 'Authorization: Bearer {api_key}'\n"
          f"  OpenAI(base_url='{url}/v1', api_key='{api_key}')\n")
    client = OpenAI(base_url=f"{url}/v1", api_key=api_key)
    model = client.models.list().data[0].id
    for record in arith500()[2: 2 + args.problems]:
        print(f"[{record['unique_id']}, level {record['level']}] {record['problem']}")
        print(f"  gold answer: {record['answer']}")
        for method in DEMO_METHODS:
            t0 = time.perf_counter()
            response = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": record["problem"]}],
                extra_body={"tts": {"method": method, "branches": args.branches}})
            tts = response.model_extra["tts"]
            votes = {k: round(v, 2) for k, v in sorted(tts["votes"].items(), key=lambda kv: -kv[1])[:4]}
            timings = ", ".join(f"{k} {v:.2f}s" for k, v in tts["timings_s"].items())
            print(f"  {method:>17}: answer {tts['answer']!s:>6} | votes {votes} | "
                  f"{tts['num_branches']} branches on {len(tts['replicas'])} replicas | "
                  f"{time.perf_counter() - t0:.2f}s ({timings})")
        print()
    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
