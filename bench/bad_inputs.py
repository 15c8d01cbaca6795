"""Send at least 200 distinct bad inputs to a running tts_ray service and count 5xx answers.

The inputs: the hand-written cases of ``tts_ray.serve.fuzz.hand_written`` (broken JSON, huge
numbers, wrong types, deep nesting, invalid UTF-8, empty messages, oversized bodies, limits),
requests without or with a wrong key, and hypothesis-generated bodies (a valid cheap body with
one field made wrong, on both POST endpoints). Afterwards the service must be healthy and
answer a valid request. Prints and writes a JSON summary.

    python bench/bad_inputs.py --url http://127.0.0.1:8000 --api-key KEY --out bench/results/bad_inputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def post(url: str, raw: bytes, api_key: str | None, timeout: float = 120) -> tuple[int, bytes]:
    """POST raw bytes; (status, body) for any answer (599 for a connection failure)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=raw, headers=headers),
                                    timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return 599, str(error).encode()


def generated(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` distinct hypothesis-generated bad bodies as (path, raw)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from tts_ray.serve.fuzz import bad_chat_bodies, bad_completion_bodies

    found: dict[bytes, tuple[str, bytes]] = {}

    @hseed(seed)
    @settings(max_examples=count * 5, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(bad_chat_bodies().map(lambda raw: ("/v1/chat/completions", raw)),
                          bad_completion_bodies().map(lambda raw: ("/v1/completions", raw))))
    def collect(case):
        if len(found) < count:
            found.setdefault(case[0].encode() + b" " + case[1], case)

    collect()
    return list(found.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="a valid key (when the service has keys on)")
    parser.add_argument("--generated", type=int, default=200, help="hypothesis-generated bodies")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from tts_ray.serve.fuzz import BASE_CHAT, hand_written

    cases = [(f"hand: {name}", path, raw, args.api_key) for name, path, raw in hand_written()]
    if args.api_key:
        valid = json.dumps(BASE_CHAT).encode()
        cases += [("auth: no key", "/v1/chat/completions", valid, None),
                  ("auth: wrong key", "/v1/chat/completions", valid, args.api_key + "x"),
                  ("auth: no key, models", "/v1/models", None, None)]
    cases += [(f"generated {i}", path, raw, args.api_key) for i, (path, raw) in enumerate(generated(args.generated))]
    distinct = {hashlib.sha256(f"{path} {key is None}".encode() + (raw or b"")).hexdigest() for _, path, raw, key in cases}

    statuses: dict[str, int] = {}
    five_xx: list[tuple[str, int, str]] = []
    accepted: list[tuple[str, int, str]] = []  # answered 2xx: not refused (a "bad" body that is valid)
    started = time.perf_counter()
    for name, path, raw, key in cases:
        if raw is None:
            request = urllib.request.Request(f"{args.url}{path}")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, body = error.code, error.read()
        else:
            status, body = post(f"{args.url}{path}", raw, key)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status >= 500:
            five_xx.append((name, status, body[:200].decode("utf-8", "replace")))
        elif status < 300:
            accepted.append((name, status, (raw or b"")[:200].decode("utf-8", "replace")))
    elapsed = time.perf_counter() - started
    try:
        with urllib.request.urlopen(f"{args.url}/health", timeout=30) as response:
            health = response.status
    except (urllib.error.URLError, OSError):
        health = None
    valid_status, _ = post(f"{args.url}/v1/chat/completions", json.dumps(BASE_CHAT).encode(), args.api_key)
    summary = {"bad_inputs_tried": len(distinct), "bad_inputs_5xx": len(five_xx), "statuses": statuses,
               "healthy_after": health == 200 and valid_status == 200, "health_status": health,
               "valid_request_status_after": valid_status, "seconds": round(elapsed, 1), "five_xx": five_xx,
               "accepted": accepted}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if not five_xx and summary["healthy_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
