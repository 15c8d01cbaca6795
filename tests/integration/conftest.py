"""Integration tests start real vLLM engines on CPU with the bundled testbed models.

One application (deployments/local.yaml) serves every service test of the session: app
start-up costs minutes on CPU, so test files share ``service_url`` instead of starting their own.
"""

import json
import os
import urllib.error
import urllib.request

import pytest

from tts_ray.constants import REPO_DIR

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# The session's app requires this API key (start_app passes TTS_RAY_API_KEYS to the replicas);
# the helpers here send it unless told otherwise.
TEST_API_KEY = "sk-tts-ray-integration-test"
AUTH_HEADERS = {"Authorization": f"Bearer {TEST_API_KEY}"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def service_url():
    """Base URL of the session's application (two generator replicas with speculative decoding,
    one PRM replica, the router), started on first use and shut down at the end."""
    import ray
    from ray import serve

    from tts_ray.serve.local import start_app

    os.environ["TTS_RAY_API_KEYS"] = TEST_API_KEY
    url = start_app(REPO_DIR / "deployments" / "local.yaml", quiet=True)
    yield url
    serve.shutdown()
    ray.shutdown()


def post_json(url: str, body, raw: bytes | None = None, headers: dict | None = None,
              api_key: str | None = TEST_API_KEY):
    """POST ``body`` as JSON (or ``raw`` bytes) with ``api_key`` as the Bearer token (None: no
    key); returns (status, parsed JSON body) for success and error answers alike. A ``headers``
    dict, if given, receives the response headers."""
    data = raw if raw is not None else json.dumps(body).encode()
    request_headers = {"Content-Type": "application/json"}
    if api_key is not None:
        request_headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=request_headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            if headers is not None:
                headers.update(response.headers)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        if headers is not None:
            headers.update(error.headers)
        raw_body = error.read()
        try:
            return error.code, json.loads(raw_body)
        except ValueError:  # Serve's own backpressure 503 has a plain-text body
            return error.code, {"raw": raw_body.decode("utf-8", "replace")}


def get_json(url: str, api_key: str | None = TEST_API_KEY, timeout: float = 30):
    """GET ``url`` with ``api_key`` as the Bearer token (None: no key); returns (status, parsed
    JSON body) for success and error answers alike."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
