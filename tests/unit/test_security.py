"""The ingress guard without Serve: key parsing and matching, key files, the JSON and size
limits, and the ASGI middleware on a bare app."""

import asyncio
import json
import os
import time

import pytest

from tts_ray.serve import security
from tts_ray.serve.protocol import APIError
from tts_ray.serve.security import (
    APIKeys,
    Guard,
    GuardMiddleware,
    bearer_token,
    json_depth,
    key_matches,
    parse_json_body,
    parse_keys,
    read_body_limited,
)


def test_parse_keys_splits_on_commas_and_lines_and_skips_comments():
    assert parse_keys(" a, b ,,\n# comment, not a key\nc\n\n a ") == ["a", "b", "c"]
    assert parse_keys("") == []


@pytest.mark.parametrize("header,token", [
    ("Bearer sk-1", "sk-1"), ("bearer  sk-1 ", "sk-1"), ("BEARER sk-1", "sk-1"),
    (None, None), ("", None), ("Basic abc", None), ("Bearer", None), ("Bearer   ", None), ("sk-1", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_key_matches_only_exact_keys():
    keys = ["sk-alpha", "sk-beta"]
    assert key_matches("sk-beta", keys)
    assert not key_matches("sk-bet", keys) and not key_matches("sk-betaa", keys)
    assert not key_matches("", keys) and not key_matches(None, keys)
    assert not key_matches("sk-alpha", [])
    assert not key_matches("\udcff", keys)  # undecodable bytes from a header do not crash


def test_key_matches_compares_with_hmac_against_every_key(monkeypatch):
    calls = []
    real = security.hmac.compare_digest

    def spy(a, b):
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert key_matches("k1", ["k1", "k2", "k3"])
    assert calls == [b"k1", b"k2", b"k3"]  # no early exit on the first match


def test_api_keys_from_env_var():
    keys = APIKeys("MY_KEYS", None, environ={"MY_KEYS": "k1,k2"})
    assert keys.enabled and keys.keys == ["k1", "k2"]
    assert keys.authorized("Bearer k2") and not keys.authorized("Bearer k3") and not keys.authorized(None)


def test_no_keys_means_auth_off_unless_required():
    keys = APIKeys("MY_KEYS", None, environ={})
    assert not keys.enabled and keys.authorized(None) and keys.authorized("Bearer anything")
    with pytest.raises(ValueError, match="required"):
        APIKeys("MY_KEYS", None, required=True, environ={"MY_KEYS": " , "})


def test_api_keys_from_a_file_follow_its_rotation(tmp_path, monkeypatch):
    path = tmp_path / "api-keys"
    path.write_text("# mounted Secret\nfile-key-1\n")
    keys = APIKeys("MY_KEYS", str(path), environ={"MY_KEYS": "env-key"})
    assert keys.keys == ["env-key", "file-key-1"]
    monkeypatch.setattr(security, "KEY_FILE_RECHECK_S", 0.0)
    path.write_text("file-key-2\n")
    os.utime(path, (time.time() + 10, time.time() + 10))  # a new mtime even on coarse clocks
    assert keys.authorized("Bearer file-key-2") and not keys.authorized("Bearer file-key-1")
    path.unlink()  # a Secret being swapped: the last keys stay
    assert keys.authorized("Bearer file-key-2")


def test_a_missing_key_file_is_a_startup_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read the API key file"):
        APIKeys(None, str(tmp_path / "absent"), environ={})


def test_json_depth():
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [1, {"b": []}]}) == 4


@pytest.mark.parametrize("raw,fragment", [
    (b'{"a": [', "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b'{"messages": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"x": NaN}', "invalid number"),
    (b'{"x": -Infinity}', "invalid number"),
    (b'{"x": 1e999}', "too large"),
    (b'{"x": ' + b"9" * 5000 + b"}", "invalid number"),
    (b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
    (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
    (b"", "not valid JSON"),
])
def test_parse_json_body_refuses_with_a_400(raw, fragment):
    with pytest.raises(APIError) as info:
        parse_json_body(raw, max_depth=32)
    assert info.value.status == 400 and fragment in info.value.message


def test_parse_json_body_accepts_objects_within_the_limits():
    assert parse_json_body(b'{"a": {"b": [1, 2.5, null]}, "n": 12345678901234567890}', 32)["a"]["b"][1] == 2.5


def _chunks(*parts):
    async def gen():
        for part in parts:
            yield part
    return gen()


def test_read_body_limited():
    assert asyncio.run(read_body_limited(_chunks(b"ab", b"cd"), 4)) == b"abcd"
    with pytest.raises(APIError) as info:
        asyncio.run(read_body_limited(_chunks(b"ab", b"cd", b"e"), 4))
    assert info.value.status == 413 and info.value.code == "request_too_large"


async def _call(middleware, path, headers=(), body=b""):
    """Run one request through an ASGI app; returns (status, headers, parsed body or raw)."""
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(payload)


async def _echo_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def _middleware(keys=("sk-test",), max_body=1024):
    guard = Guard(APIKeys("K", None, environ={"K": ",".join(keys)}), max_body)
    return GuardMiddleware(_echo_app, guard=lambda: guard)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/tts/status", "/docs",
                                  "/openapi.json", "/no/such/route"])
def test_middleware_requires_a_key_everywhere_but_health(path):
    middleware = _middleware()
    status, headers, body = asyncio.run(_call(middleware, path))
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, _ = asyncio.run(_call(middleware, path, [("Authorization", "Bearer wrong")]))
    assert status == 401
    status, _, body = asyncio.run(_call(middleware, path, [("Authorization", "Bearer sk-test")]))
    assert status == 200 and body == {"ok": True}


def test_middleware_leaves_health_open_and_strips_the_route_prefix():
    middleware = _middleware()
    assert asyncio.run(_call(middleware, "/health"))[0] == 200
    scope_prefixed = asyncio.run(_prefixed(middleware, "/tts/health", "/tts"))
    assert scope_prefixed == 200


async def _prefixed(middleware, path, root):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware({"type": "http", "method": "GET", "path": path, "root_path": root, "headers": []},
                     receive, send)
    return sent[0]["status"]


def test_middleware_without_keys_lets_everything_through():
    assert asyncio.run(_call(_middleware(keys=()), "/v1/models"))[0] == 200


def test_middleware_refuses_an_announced_oversized_body_with_413():
    middleware = _middleware(max_body=1024)
    auth = ("Authorization", "Bearer sk-test")
    status, _, body = asyncio.run(_call(middleware, "/v1/completions", [auth, ("Content-Length", "4096")]))
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, _, _ = asyncio.run(_call(middleware, "/v1/completions", [auth, ("Content-Length", "lots")]))
    assert status == 400
    assert asyncio.run(_call(middleware, "/v1/completions", [auth, ("Content-Length", "10")], b"x" * 10))[0] == 200


def test_middleware_fails_closed_without_a_router():
    status, headers, body = asyncio.run(_call(GuardMiddleware(_echo_app, guard=lambda: None), "/health"))
    assert status == 503 and headers["retry-after"] == "1" and body["error"]["message"]


def test_parse_json_body_refuses_lone_surrogates_in_keys_and_values():
    for raw in (b'{"prompt": "a\\ud800b"}', b'{"\\udfff": 1}', b'{"m": [{"c": "\\udbff"}]}'):
        with pytest.raises(APIError, match="surrogate"):
            parse_json_body(raw, max_depth=32)
    assert parse_json_body(b'{"prompt": "\\ud83d\\ude00"}', 32)["prompt"] == "\U0001f600"  # a valid pair


def test_an_evaluation_takes_its_key_from_the_env_var_else_the_mounted_key_file(tmp_path):
    from tts_ray.eval.runner import default_api_key

    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\nsk-first\nsk-second\n")
    assert default_api_key({"TTS_RAY_API_KEY": "sk-env", "TTS_RAY_API_KEYS_FILE": str(key_file)}) == "sk-env"
    assert default_api_key({"TTS_RAY_API_KEYS_FILE": str(key_file)}) == "sk-first"
    assert default_api_key({"TTS_RAY_API_KEYS_FILE": str(tmp_path / "missing")}) is None
    assert default_api_key({}) is None
