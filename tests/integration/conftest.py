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

    url = start_app(REPO_DIR / "deployments" / "local.yaml", quiet=True)
    yield url
    serve.shutdown()
    ray.shutdown()


def post_json(url: str, body, raw: bytes | None = None, headers: dict | None = None):
    """POST ``body`` as JSON (or ``raw`` bytes); returns (status, parsed JSON body) for success
    and error answers alike. A ``headers`` dict, if given, receives the response headers."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            if headers is not None:
                headers.update(response.headers)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        if headers is not None:
            headers.update(error.headers)
        return error.code, json.loads(error.read())
