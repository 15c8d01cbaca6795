"""Running the app on a local Ray cluster: what ``tts-ray serve``, ``make demo`` and the
integration tests use."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from tts_ray.constants import CPU_KVCACHE_SPACE_GIB

# More logical CPUs than the machine's cores: replicas mostly wait on their engine processes,
# and with only 2 cores the ingress could not be scheduled otherwise.
LOCAL_NUM_CPUS = 8
# Passed on to the replicas when set here: where the router finds its API keys.
API_KEY_ENV_VARS = ("TTS_RAY_API_KEYS", "TTS_RAY_API_KEYS_FILE")


def read_serve_config(path: str | Path) -> dict[str, Any]:
    """The Ray Serve config in ``path`` (validated by Ray's ``ServeDeploySchema``)."""
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(Path(path).read_text())
    ServeDeploySchema.model_validate(data)
    return data


def start_app(config_path: str | Path, host: str | None = None, port: int | None = None,
              blocking_timeout_s: float = 900, quiet: bool = False) -> str:
    """Start Ray (if not running) and Serve, deploy the first application of the config, and
    return the base URL once every deployment is healthy. ``quiet`` keeps the replicas' logs
    out of this process's output (they stay in Ray's log files)."""
    import ray
    from ray import serve

    from tts_ray.app import build_app

    data = read_serve_config(config_path)
    application = data["applications"][0]
    http = data.get("http_options", {})
    host = host or http.get("host", "127.0.0.1")
    port = port or http.get("port", 8000)
    env_vars = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_SPACE_GIB),
                **application.get("runtime_env", {}).get("env_vars", {})}
    # The router reads its API keys from these (RouterConfig.api_keys_env / api_keys_file).
    env_vars.update({name: os.environ[name] for name in API_KEY_ENV_VARS if name in os.environ})
    os.environ.update(env_vars)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, num_cpus=LOCAL_NUM_CPUS,
                 runtime_env={"env_vars": env_vars}, include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=not quiet)
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    started = time.perf_counter()
    serve.run(build_app(application["args"]), name=application.get("name", "tts"),
              route_prefix=application.get("route_prefix", "/"), blocking=False)
    while True:
        status = serve.status().applications.get(application.get("name", "tts"))
        if status is not None and status.status == "RUNNING":
            break
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"deployment failed: {status.message}")
        if time.perf_counter() - started > blocking_timeout_s:
            raise TimeoutError(f"app not running after {blocking_timeout_s}s")
        time.sleep(2)
    return f"http://{host}:{port}"


def serve_forever(config_path: str | Path, host: str | None = None, port: int | None = None) -> int:
    """``tts-ray serve``: deploy, print the URL, serve until interrupted."""
    from ray import serve

    url = start_app(config_path, host, port)
    print(f"tts_ray is serving at {url}/v1 (OpenAI-compatible; GET {url}/health). Ctrl-C stops it.",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
