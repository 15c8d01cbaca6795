"""The ingress's guard: API keys, the request-size and JSON-shape limits, and the ASGI
middleware that applies them before a request reaches an endpoint; pure pieces, testable
without Serve."""

from __future__ import annotations

import hmac
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from tts_ray.serve.protocol import APIError

# Paths answered without a key: load balancers and Kubernetes probes carry none.
OPEN_PATHS = frozenset({"/health"})
# How often a key file is checked for changes (a rotated Kubernetes Secret is rewritten in place).
KEY_FILE_RECHECK_S = 5.0


def parse_keys(text: str) -> list[str]:
    """Keys from an env var's value or a key file: separated by commas or newlines; blanks
    and lines starting with ``#`` are ignored; order kept, duplicates dropped."""
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for part in line.split(","):
            key = part.strip()
            if key and key not in keys:
                keys.append(key)
    return keys


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive),
    or None when the header is absent or of another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def key_matches(token: str | None, keys: list[str] | tuple[str, ...]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time: every key is compared
    (no early exit), each with ``hmac.compare_digest``, so the timing says nothing about
    which key, or which prefix of one, was close."""
    if token is None:
        return False
    candidate = token.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode("utf-8", "surrogateescape"))
    return found


class APIKeys:
    """The keys a router accepts: the comma-separated value of the env var ``env_var`` plus
    the keys in ``file_path`` (one per line or comma-separated; re-read when it changes, so a
    rotated Kubernetes Secret takes effect without a restart). No keys at all: auth is off.

    Raises (from the constructor):
        ValueError: ``required`` and no key is configured (the router then refuses to start
            rather than serve openly), or ``file_path`` names a file that cannot be read.
    """

    def __init__(self, env_var: str | None, file_path: str | None, *, required: bool = False,
                 environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._env_keys = parse_keys(environ.get(env_var, "")) if env_var else []
        self.file_path = Path(file_path) if file_path else None
        self._file_keys: list[str] = []
        self._file_mtime: float | None = None
        self._checked_at = 0.0
        if self.file_path is not None:
            self._read_file(self.file_path, force=True)
        if required and not self.keys:
            where = " or ".join(filter(None, [f"${env_var}" if env_var else None,
                                              str(self.file_path) if self.file_path else None]))
            raise ValueError(f"API keys are required but none are configured (looked in {where or 'nothing'})")

    def _read_file(self, path: Path, force: bool = False) -> None:
        try:
            mtime = path.stat().st_mtime
            if force or mtime != self._file_mtime:
                self._file_keys = parse_keys(path.read_text(encoding="utf-8"))
                self._file_mtime = mtime
        except (OSError, UnicodeDecodeError) as exc:
            if force:
                raise ValueError(f"cannot read the API key file {path}: {exc}") from None
            # a Secret being swapped: keep the last keys until the file is back

    @property
    def keys(self) -> list[str]:
        """The keys accepted now (the file re-checked at most every ``KEY_FILE_RECHECK_S``)."""
        if self.file_path is not None and time.monotonic() - self._checked_at > KEY_FILE_RECHECK_S:
            self._checked_at = time.monotonic()
            self._read_file(self.file_path)
        return self._env_keys + [k for k in self._file_keys if k not in self._env_keys]

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (some key is configured)."""
        return bool(self.keys)

    def authorized(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may pass: always when auth is
        off, else when it carries one of the keys as a Bearer token."""
        keys = self.keys
        return not keys or key_matches(bearer_token(authorization), keys)


def authentication_error() -> APIError:
    """The 401 a request without a valid key gets (OpenAI's wording and error type)."""
    return APIError(401, "Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'",
                    type="authentication_error", code="invalid_api_key")


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than the limit of {limit} bytes",
                    code="request_too_large")


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in items)
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The request body as a JSON object.

    NaN and +-Infinity literals are refused (they are not JSON), and so are numbers too large
    to be finite: a float that overflows (``1e999``) or an integer with more digits than
    Python converts. Nesting deeper than ``max_depth`` is refused, as is nesting so deep that
    the parser itself gives up, and strings with lone surrogate escapes (``"\\ud800"``).

    Raises:
        APIError: 400 for anything but a JSON object within those bounds.
    """
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise APIError(400, f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, f"request body is nested deeper than the limit of {max_depth}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer beyond Python's digit limit
        raise APIError(400, f"request body has an invalid number: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    if json_depth(data) > max_depth:
        raise APIError(400, f"request body is nested deeper than the limit of {max_depth}")
    problem = _bad_scalar(data)
    if problem is not None:
        raise APIError(400, f"request body has {problem}")
    return data


def _bad_scalar(value: Any) -> str | None:
    """What is wrong with a parsed body's numbers or strings, if anything: a float that
    overflowed to infinity, or a string (key or value) with a lone UTF-16 surrogate escape,
    which no tokenizer can encode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "a number too large to represent"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string with a lone surrogate escape (invalid Unicode)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


async def read_body_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Join a request body's chunks (e.g. Starlette's ``request.stream()``), stopping as soon as
    it passes ``limit`` bytes, so a huge chunked body is never held in memory whole.

    Raises:
        APIError: 413 once more than ``limit`` bytes arrived.
    """
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


class Guard:
    """What the middleware enforces for one router: its keys and its body-size limit."""

    def __init__(self, keys: APIKeys, max_body_bytes: int) -> None:
        self.keys, self.max_body_bytes = keys, max_body_bytes


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path inside the app (the route prefix, Serve's ``root_path``, removed)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class GuardMiddleware:
    """Pure ASGI middleware in front of every route (404s and the OpenAPI docs included):
    requests to anything but :data:`OPEN_PATHS` need a valid key (401 otherwise), and a body
    announced larger than the limit is refused (413) before it is read. Bodies without a
    ``Content-Length`` are bounded where they are read (:func:`read_body_limited`).

    ``guard`` returns the current :class:`Guard`; None (no router yet) fails closed with 503.
    Pure ASGI rather than Starlette's BaseHTTPMiddleware, which would stand between the
    endpoint and a client disconnect.
    """

    def __init__(self, app, guard: Callable[[], Guard | None]) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard()
        if guard is None:
            await _send_error(send, APIError(503, "the router is not ready", type="service_unavailable_error"),
                              {"Retry-After": "1"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if route_path(scope) not in OPEN_PATHS and not guard.keys.authorized(headers.get("authorization")):
            await _send_error(send, authentication_error(), {"WWW-Authenticate": 'Bearer realm="tts_ray"'})
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > guard.max_body_bytes
            except ValueError:
                await _send_error(send, APIError(400, "invalid Content-Length header"))
                return
            if too_large:
                await _send_error(send, body_too_large(guard.max_body_bytes))
                return
        await self.app(scope, receive, send)


async def _send_error(send, error: APIError, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
