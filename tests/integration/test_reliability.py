"""Reliability and security on the real service and on a second app whose router (the real one,
with its budget keeper) fronts fake engine-less pools: API keys, limits, fuzzed bodies,
client disconnects, backpressure with blocked replicas, a replica killed mid-request, a failing
engine and a failing reward model.

The fake app (tts_ray/serve/fakes.py) shares the session's Serve instance under /fake, so the
destructive tests never touch the shared vLLM app.
"""

import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import TEST_API_KEY, get_json, post_json
from tts_ray.serve.fuzz import bad_chat_bodies, bad_completion_bodies, hand_written, random_bodies
from tts_ray.testbed.arith import arith500

HARD = arith500()[4]
FAKE_APP = "fake"
FAKE_ARGS = {
    # pool b "speculates" (ngram: no draft model to load) so that num_speculative_tokens=0
    # pins a request to pool a; b serves the same model, so it is a's fallback
    "generators": [{"name": "a", "model_id": "fake-model", "model_source": "testbed:target", "max_model_len": 1024},
                   {"name": "b", "model_id": "fake-model", "model_source": "testbed:target", "max_model_len": 1024,
                    "speculative": {"method": "ngram", "num_speculative_tokens": 2}}],
    "reward": {"model_id": "fake-prm", "model_source": "testbed:prm"},
    "router": {"default_method": "majority", "default_branches": 2, "max_branches": 8,
               "default_latency_budget_s": 20, "max_body_bytes": 65536,
               # a tiny router: 2 requests at once, 2 more waiting, the rest shed with 503
               "max_ongoing_requests": 2, "max_queued_requests": 2, "backpressure_retry_after_s": 1},
}


def _raw_post(url, raw: bytes, api_key=TEST_API_KEY, timeout=60):
    """POST raw bytes; returns (status, headers, body bytes) for any answer."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=raw, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _assert_client_error_body(status, body: bytes):
    assert status < 500, (status, body[:300])
    if status >= 400:
        error = json.loads(body)["error"]
        assert error["message"] and error["type"], error


# --- auth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/v1/tts/status"),
                                         ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                                         ("GET", "/openapi.json"), ("GET", "/docs")])
def test_every_endpoint_but_health_needs_a_valid_key(service_url, method, path):
    for key in (None, "sk-wrong", TEST_API_KEY + "x"):
        if method == "GET":
            status, out = get_json(f"{service_url}{path}", api_key=key)
        else:
            status, out = post_json(f"{service_url}{path}", {"messages": [{"role": "user", "content": "x"}]},
                                    api_key=key)
        assert status == 401, (key, out)
        assert out["error"]["type"] == "authentication_error" and out["error"]["code"] == "invalid_api_key"


def test_health_is_open_and_a_valid_key_gets_through(service_url):
    assert get_json(f"{service_url}/health", api_key=None) == (200, {"status": "ok"})
    status, out = get_json(f"{service_url}/v1/models")
    assert status == 200 and [m["id"] for m in out["data"]] == ["arith-target"]
    request = urllib.request.Request(f"{service_url}/v1/models",
                                     headers={"Authorization": f"bearer   {TEST_API_KEY} "})
    with urllib.request.urlopen(request, timeout=30) as response:  # scheme case and spaces do not matter
        assert response.status == 200


# --- limits (real service) -------------------------------------------------------------------

LIMIT_CASES = {name: (path, raw) for name, path, raw in hand_written()}


@pytest.mark.parametrize("name,status,code", [
    ("oversized body", 413, "request_too_large"),
    ("oversized prompt", 413, "request_too_large"),
    ("prompt above the token limit", 400, "prompt_too_long"),
    ("prompt + max_tokens beyond the context", 400, "context_length_exceeded"),
    ("deep nesting 100k", 400, None),
    ("5000-digit integer", 400, None),
    ("1e999 max_tokens", 400, None),
    ("NaN", 400, None),
    ("lone surrogate escape", 400, None),
    ("huge seed", 400, None),
    ("branches above the limit", 400, None),
    ("max_tokens above the limit", 400, None),
    ("n = 2", 400, None),
    ("budget absurd", 400, None),
])
def test_each_limit_gets_its_4xx(service_url, name, status, code):
    path, raw = LIMIT_CASES[name]
    got, _, body = _raw_post(f"{service_url}{path}", raw)
    assert got == status, body[:300]
    error = json.loads(body)["error"]
    assert error["message"] and (code is None or error["code"] == code), error


def test_a_chunked_oversized_body_gets_413(service_url):
    """No Content-Length: the router stops reading at the limit."""
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", int(service_url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TEST_API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        # 17 x 64 KiB: the last chunk crosses the 1 MiB limit, so the router has read the whole
        # body when it answers (no reset while the client is still sending)
        for _ in range(17):
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


# --- cancellation (real service) -------------------------------------------------------------

def _unfinished() -> int:
    from ray import serve

    return sum(serve.get_deployment_handle(f"generator-{pool}", app_name="tts").num_unfinished_requests
               .remote().result() for pool in ("spec", "plain"))


def test_a_client_that_disconnects_cancels_all_its_branches(service_url):
    body = json.dumps({"messages": [{"role": "user", "content": HARD["problem"]}], "max_tokens": 700,
                       "tts": {"method": "majority", "branches": 16, "latency_budget_s": 300,
                               "num_speculative_tokens": 0}}).encode()
    sock = socket.create_connection(("127.0.0.1", int(service_url.rsplit(":", 1)[1])), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + TEST_API_KEY.encode() + b"\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 60
    while _unfinished() < 16:  # every branch reached its engine
        if select.select([sock], [], [], 0)[0]:  # answered already: say what
            pytest.fail(f"answered before the disconnect: {sock.recv(4096)[:500]!r}")
        assert time.monotonic() < deadline, "the branches never started"
        time.sleep(0.1)
    sock.close()
    closed = time.monotonic()
    while _unfinished() > 0:
        assert time.monotonic() - closed < 2.0, f"{_unfinished()} engine requests still running 2 s after the disconnect"
        time.sleep(0.05)
    # The ledger is released in the background once the request's handler has unwound: what
    # this checks is that no booking leaks, not how fast (a fresh-clone CI run at 20583a4 had
    # the engines idle within 2 s but the last release still on its way 5 s later)
    deadline = time.monotonic() + 30
    while True:
        status = get_json(f"{service_url}/v1/tts/status")[1]
        if all(p["inflight_branches"] == 0 for p in status["pools"].values()):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


# --- the fake app ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_url(service_url):
    """The real router + budget keeper over fake pools a and b and a fake reward, at /fake."""
    from ray import serve

    from tts_ray.serve.fakes import build_fake_app

    serve.run(build_fake_app(FAKE_ARGS), name=FAKE_APP, route_prefix="/fake", blocking=False)
    _wait_running(FAKE_APP, 180)
    # Running replicas are not yet a routed prefix and a warm keeper: wait until the router
    # answers through the proxy. (In one CI run the first request of the first test here came
    # back at once, without reaching an engine, 0.7 s after the app was reported running.)
    deadline = time.monotonic() + 60
    while True:
        try:
            status, _ = get_json(f"{service_url}/fake/v1/tts/status")
        except (OSError, ValueError):  # refused, or a proxy's non-JSON 404
            status = None
        if status == 200:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    yield f"{service_url}/fake"
    serve.delete(FAKE_APP)


def _wait_running(app: str, timeout_s: float) -> float:
    """Seconds until every deployment of ``app`` is healthy with its replicas running."""
    from ray import serve

    started = time.monotonic()
    while True:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING" and all(
                d.status == "HEALTHY" and d.replica_states.get("RUNNING", 0) >= 1
                for d in status.deployments.values()):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, status
        time.sleep(0.2)


def _fake(name: str):
    from ray import serve

    return serve.get_deployment_handle(name, app_name=FAKE_APP)


def _set_modes(a="ok", b="ok", reward="ok"):
    for name, mode in (("generator-a", a), ("generator-b", b), ("reward", reward)):
        _fake(name).set_mode.remote(mode).result()


def _fake_chat(url, headers=None, **tts):
    body = {"messages": [{"role": "user", "content": "What is 3 + 4?"}], "tts": {"latency_budget_s": 20, **tts}}
    return post_json(f"{url}/v1/chat/completions", body, headers=headers)


def test_overload_is_shed_at_once_with_503_and_retry_after(fake_url):
    """2 requests run, 2 wait, and every later one is shed at once. The requests arrive in
    stages, because Serve counts its queue per request as it arrives: 8 sent together raced
    (one CI run served 5), which says nothing about the limit. The held requests get a budget
    far past the test's length: with 20 s, a loaded CI machine spent most of it before the
    branches reached the engines, their deadline then freed the router's slots while the test
    was shedding, and the "shed" requests were served (CI at 14e63b3: four 200s)."""
    t0 = time.perf_counter()

    def one(budget_s):
        headers, started = {}, time.perf_counter()
        status, _ = _fake_chat(fake_url, headers=headers, method="single", latency_budget_s=budget_s)
        return (status, {k.lower(): v for k, v in headers.items()},
                time.perf_counter() - started, round(started - t0, 2))  # seconds taken, sent at

    def engine_requests() -> int:
        return sum(_fake(f"generator-{p}").num_unfinished_requests.remote().result() for p in "ab")

    # one request through the router first, so that what a first request pays (handles, the
    # tokenizer) is not paid out of the held requests' time
    assert _fake_chat(fake_url, method="single")[0] == 200
    _set_modes(a="block", b="block")
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            running = [pool.submit(one, 600) for _ in range(2)]
            deadline = time.monotonic() + 30
            while engine_requests() < 2:  # both hold a router slot, blocked in an engine
                assert time.monotonic() < deadline and not any(f.done() for f in running), \
                    (engine_requests(), [f.result() for f in running if f.done()])
                time.sleep(0.05)
            queued = [pool.submit(one, 600) for _ in range(2)]
            time.sleep(2)  # both wait in Serve's queue
            assert not any(f.done() for f in queued), [f.result() for f in queued if f.done()]
            # a shed request admitted by mistake would block until its deadline: 20 s, not 600
            shed = [one(20) for _ in range(4)]  # one after another, each answered while the rest wait
            held_after = engine_requests()  # the 2 running, still held: the shed ones added none
            _set_modes()
            served = [f.result(timeout=60) for f in running + queued]
    finally:
        _set_modes()
    assert held_after == 2, (held_after, shed)
    assert [r[0] for r in shed] == [503] * 4 and [r[0] for r in served] == [200] * 4, (shed, served)
    assert all(float(r[1]["retry-after"]) >= 1 and r[2] < 1.0 for r in shed), shed
    assert all(r[2] >= 2.0 for r in served)  # they waited for the blocked replicas, then answered


def _replica_names(deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if f"{FAKE_APP}#{deployment}#" in a["name"]]


def test_a_replica_killed_mid_request_has_its_branches_rerun_on_the_other_pool(fake_url):
    import ray

    first, other = "a", "b"
    _set_modes(a="block")
    outcome = {}
    # Serve surfaces a killed replica's in-flight calls as ActorDiedError only after ~10 s
    # (measured idle here; longer on a loaded CI machine), so the budget leaves room for the re-run.
    thread = threading.Thread(target=lambda: outcome.update(answer=_fake_chat(
        fake_url, method="majority", branches=4, num_speculative_tokens=0, latency_budget_s=90)))
    thread.start()
    deadline = time.monotonic() + 30
    while _fake(f"generator-{first}").num_unfinished_requests.remote().result() < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (victim,) = _replica_names(f"generator-{first}")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed = time.monotonic()
    thread.join(timeout=120)
    assert not thread.is_alive()
    print(f"branches re-run and answered {time.monotonic() - killed:.1f}s after the kill")
    status, out = outcome["answer"]
    assert status == 200, out
    tts = out["tts"]
    assert tts["faults"]["retried_branches"] == 4 and tts["faults"]["failed_branches"] == 0
    assert tts["answer"] == "7" and tts["branch_counts"]["finished"] == 4
    assert all(b["replica"].startswith(f"{other}:") for b in tts["branches"]), tts["branches"]
    # the deployment heals: Serve replaces the replica, and the new one serves
    while True:
        names = _replica_names(f"generator-{first}")
        if names and victim not in names:
            try:
                _set_modes()
                break
            except Exception as exc:  # noqa: BLE001 - the handle may still pick the dead replica once
                print(f"set_mode after the kill: {exc!r}")
        assert time.monotonic() - killed < 120, f"generator-{first} not replaced: {names}"
        time.sleep(0.2)
    _wait_running(FAKE_APP, 120)
    print(f"generator-{first} replaced {time.monotonic() - killed:.1f}s after the kill")
    status, out = _fake_chat(fake_url, method="majority", branches=2, num_speculative_tokens=0)
    assert status == 200 and out["tts"]["faults"]["retried_branches"] == 0, out


def test_a_failing_engine_leaves_a_merge_of_the_survivors_flagged(fake_url):
    _set_modes(a="fail_odd", b="fail_odd")
    try:
        status, out = _fake_chat(fake_url, method="majority", branches=4)
    finally:
        _set_modes()
    assert status == 200, out
    tts = out["tts"]
    assert tts["faults"]["failed_branches"] == tts["branch_counts"]["failed"] == 2
    assert tts["faults"]["merged_survivors"] and tts["num_branches"] == 2 and tts["answer"] == "7"


def test_when_every_branch_fails_the_answer_is_a_clean_503(fake_url):
    _set_modes(a="fail", b="fail")
    headers = {}
    try:
        status, out = _fake_chat(fake_url, headers=headers, method="majority", branches=2)
    finally:
        _set_modes()
    assert status == 503 and out["error"]["code"] == "branches_failed", out
    assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"


@pytest.mark.parametrize("method", ["weighted_majority", "best_of_n"])
def test_a_failing_reward_model_degrades_to_a_flagged_majority_vote(fake_url, method):
    _set_modes(reward="fail")
    try:
        status, out = _fake_chat(fake_url, method=method, branches=4)
    finally:
        _set_modes()
    assert status == 200, out
    tts = out["tts"]
    assert "reward model unavailable" in tts["faults"]["degraded"]
    assert tts["votes"] == {"7": 4} and all(b["score"] is None for b in tts["branches"])
    status, out = _fake_chat(fake_url, method=method, branches=4)
    assert status == 200 and out["tts"]["faults"]["degraded"] is None


FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(raw=st.one_of(random_bodies(), bad_chat_bodies(), bad_completion_bodies()),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def _fuzz_once(url, raw, path):
    status, _, body = _raw_post(f"{url}{path}", raw, timeout=30)
    _assert_client_error_body(status, body)


def test_fuzzed_bodies_never_get_a_5xx(fake_url):
    _set_modes()
    _fuzz_once(fake_url)
    assert get_json(f"{fake_url}/health", api_key=None)[0] == 200


# --- graceful shutdown (a fake app of its own: deleting it leaves the shared one alone) -----------

DRAIN_APP = "fake-drain"
# Longer than Serve's own default drain (20 s), so the requests finish only because the
# deployments' graceful_shutdown_timeout_s (from the config) is honoured.
DRAIN_BUDGET_S = 24


def test_in_flight_requests_finish_when_the_app_is_deleted(service_url):
    from ray import serve

    from tts_ray.serve.fakes import build_fake_app

    args = json.loads(json.dumps(FAKE_ARGS))
    for section in (*args["generators"], args["reward"], args["router"]):
        section["graceful_shutdown_timeout_s"] = DRAIN_BUDGET_S + 20
    serve.run(build_fake_app(args), name=DRAIN_APP, route_prefix=f"/{DRAIN_APP}", blocking=False)
    _wait_running(DRAIN_APP, 180)
    url = f"{service_url}/{DRAIN_APP}"
    # The proxies learn a new route a moment after the app runs: wait until it answers.
    routed = time.monotonic() + 60
    while _fake_chat(url, method="single")[0] != 200:
        assert time.monotonic() < routed, "the new app's route never answered"
        time.sleep(0.5)
    generators = [serve.get_deployment_handle(f"generator-{p}", app_name=DRAIN_APP) for p in ("a", "b")]
    for handle in generators:  # every branch waits for its deadline, then answers what it has
        handle.set_mode.remote("block").result()
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = time.monotonic()
        futures = [pool.submit(_fake_chat, url, method="majority", branches=2, latency_budget_s=DRAIN_BUDGET_S)
                   for _ in range(2)]
        deadline = time.monotonic() + 60
        while sum(h.num_unfinished_requests.remote().result() for h in generators) < 4:
            assert time.monotonic() < deadline, "the branches never reached the generators"
            assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
            time.sleep(0.1)
        serve.delete(DRAIN_APP, _blocking=False)
        deleting = time.monotonic()
        results = [f.result(timeout=DRAIN_BUDGET_S + 60) for f in futures]
    answered = time.monotonic() - started
    print(f"in-flight requests answered {answered:.1f}s after they started, "
          f"{time.monotonic() - deleting:.1f}s into the deletion")
    for status, out in results:
        assert status == 200, out  # answered in full, not cut when their replicas stopped
        assert out["choices"][0]["finish_reason"] == "deadline" and out["tts"]["faults"]["failed_branches"] == 0, out
    assert answered >= DRAIN_BUDGET_S - 1
    # the deletion completes once they are answered, and the route is gone
    while DRAIN_APP in serve.status().applications:
        assert time.monotonic() - deleting < DRAIN_BUDGET_S + 60, serve.status().applications[DRAIN_APP]
        time.sleep(0.5)
    status, _ = _fake_chat(url, method="single")
    assert status == 404
