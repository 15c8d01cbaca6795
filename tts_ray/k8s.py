"""Kubernetes manifests for tts_ray (KubeRay RayService, RayJob, RayCluster), generated from
``deployments/*.yaml``: the renderer behind ``tts-ray k8s render`` and the files under ``k8s/``.

Design. A RayService carries its Serve config as a string field (``serveConfigV2``), which
kustomize cannot fill from a file, so nothing in ``k8s/`` is written by hand: this module builds
a kustomize *base* (flavour-neutral objects) and one *overlay* per entry of :data:`OVERLAYS`
(the overlay's ``deployments/`` file as ``serveConfigV2``, worker groups derived from that
file's pools, the image flavour, the model-cache size, the evaluation job's arguments), and
``tts-ray k8s write`` writes them as files. :func:`render` applies the same patches in Python
(JSON merge-patch semantics, which is what kustomize does to custom resources, whose lists it
replaces whole) and the same image override, so ``kubectl kustomize k8s/overlays/NAME`` and
``tts-ray k8s render --overlay NAME`` give the same objects. Tests check that the committed files
equal a fresh :func:`render_tree` (they cannot drift from ``deployments/``) and that kustomize's
output equals :func:`render`.

The image is the project image built by ``Dockerfile`` (Ray's own image of the Ray version that
``pyproject.toml`` pins, with tts_ray installed); its tag carries the project and Ray versions,
read from ``pyproject.toml`` at render time.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tts_ray.config import AppConfig
from tts_ray.constants import REPO_DIR

DEPLOYMENTS_DIR = REPO_DIR / "deployments"
K8S_DIR = REPO_DIR / "k8s"
PYPROJECT_PATH = REPO_DIR / "pyproject.toml"

IMAGE_NAME = "tts-ray"
# The Python of Ray's base image (Dockerfile's PYTHON_TAG); pyproject requires >= 3.11.
PYTHON_TAG = "py311"
RAY_API_VERSION = "ray.io/v1"

SERVICE_NAME = "tts-ray"  # KubeRay names its Serve service "<name>-serve-svc"
EVAL_JOB_NAME = "tts-ray-eval"
ADHOC_CLUSTER_NAME = "tts-ray-adhoc"
MODEL_CACHE_PVC = "tts-ray-model-cache"
EVAL_RESULTS_PVC = "tts-ray-eval-results"
# Created by the operator of the cluster (README "Deploying on Kubernetes"), never committed.
HF_TOKEN_SECRET = "tts-ray-hf-token"
HF_TOKEN_SECRET_KEY = "token"
# The router's API keys (also created by the operator, never committed): one key per line in the
# Secret's key API_KEYS_SECRET_KEY, mounted as a file into every RayService and RayJob pod. The
# router reads the file named by TTS_RAY_API_KEYS_FILE (tts_ray/serve/security.py) and re-reads it
# when the kubelet rewrites it, so a rotated Secret needs no restart. A volume, not an env var:
# env vars from a Secret are fixed at pod start.
API_KEYS_SECRET = "tts-ray-api-keys"
API_KEYS_SECRET_KEY = "keys"
API_KEYS_MOUNT = "/etc/tts-ray/api-keys"
API_KEYS_FILE_ENV = "TTS_RAY_API_KEYS_FILE"
# Owner and group may read (the ray user is in the pod's fsGroup, RAY_IMAGE_GID); others nothing.
API_KEYS_FILE_MODE = 0o440

MODEL_CACHE_MOUNT = "/models"
HF_HOME = f"{MODEL_CACHE_MOUNT}/huggingface"
EVAL_RESULTS_MOUNT = "/results"
SERVE_PORT = 8000
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# The ray user of Ray's images belongs to group 100 (users): the volumes become writable to it.
RAY_IMAGE_GID = 100

# Pod sizes are sizing choices, not measurements. A GPU pod gets CPUs and memory in proportion
# to its GPUs: room for the replica actors, vLLM's engine processes, tokenizers and for
# loading weights through host memory.
CPUS_PER_GPU = 8
MEMORY_GIB_PER_GPU = 64
SHM_GIB_PER_GPU = 16
HEAD_CPUS = 2
HEAD_MEMORY_GIB = 8
# A CPU worker pod: Ray sees more logical CPUs than the pod's cores, because replicas mostly
# wait on their engine processes (the same reason as tts_ray.serve.local.LOCAL_NUM_CPUS).
CPU_POD_LOGICAL_CPUS = 8
CPU_POD_CPUS = 4
CPU_POD_MEMORY_GIB = 16
CPU_POD_SHM_GIB = 4
# Logical CPUs a generator replica takes besides one per engine worker (its replica actor),
# and what a reward, router or budget replica takes (see serve/generator.py, reward.py,
# router.py, budget.py).
GENERATOR_ACTOR_CPUS = 1
REWARD_CPUS = 1
ROUTER_CPUS = 0.5
BUDGET_CPUS = 0.1
# The ad hoc cluster's CPU workers, for jobs that need no GPU.
ADHOC_CPU_MAX_PODS = 4
# Idle worker pods are removed after this long: long enough to ride out a lull, since a new
# GPU pod costs an image pull and a model load.
IDLE_TIMEOUT_S = 600
EVAL_JOB_TTL_S = 600

Flavor = Literal["cpu", "gpu"]
CPU_THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"  # fixed cores in a local config; not on a cluster


@dataclass(frozen=True)
class Overlay:
    """One kustomize overlay: a ``deployments/`` file on a Kubernetes cluster."""

    name: str
    serve_config: str  # file name under deployments/
    flavor: Flavor  # which image: cpu (vLLM's CPU backend) or gpu (CUDA)
    model_cache_gib: int  # size of the shared model cache (Hugging Face downloads)
    eval_args: tuple[str, ...]  # dataset arguments of `python -m tts_ray.eval` in the RayJob
    summary: str


OVERLAYS: dict[str, Overlay] = {o.name: o for o in (
    Overlay("cpu-demo", "local.yaml", "cpu", 10, ("--dataset", "arith500", "--limit", "100"),
            "the CPU testbed (bundled ARITH models) on CPU-only nodes"),
    Overlay("gpu", "gpu-3b.yaml", "gpu", 200, ("--dataset", "math500", "--dataset-source", "hub"),
            "Qwen2.5-3B-Instruct with a 0.5B draft and a 7B PRM, one GPU per replica"),
    Overlay("gpu-32b", "gpu-32b.yaml", "gpu", 400, ("--dataset", "math500", "--dataset-source", "hub"),
            "Qwen2.5-32B-Instruct over 4 GPUs per replica, a 7B draft and a 7B PRM"),
)}

# kustomize writes custom resources after the built-in kinds it orders ("legacy" order).
_KIND_ORDER = ("PersistentVolumeClaim", "RayCluster", "RayJob", "RayService")
_BASE_FILES = {  # (kind, name) -> file name under k8s/base/
    ("PersistentVolumeClaim", MODEL_CACHE_PVC): "pvc-model-cache.yaml",
    ("PersistentVolumeClaim", EVAL_RESULTS_PVC): "pvc-eval-results.yaml",
    ("RayService", SERVICE_NAME): "rayservice.yaml",
    ("RayJob", EVAL_JOB_NAME): "rayjob-eval.yaml",
    ("RayCluster", ADHOC_CLUSTER_NAME): "raycluster-adhoc.yaml",
}


# --- versions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Versions:
    """The versions the manifests must agree with, as ``pyproject.toml`` states them."""

    project: str
    ray: str


def read_versions(pyproject: Path = PYPROJECT_PATH) -> Versions:
    """The project version and the Ray version pinned (``ray[serve]==X``) in ``pyproject.toml``.

    Raises:
        ValueError: no Ray pin, or extras pinning different Ray versions.
    """
    data = tomllib.loads(pyproject.read_text())
    requirements = list(data["project"].get("dependencies", []))
    for extra in data["project"].get("optional-dependencies", {}).values():
        requirements += extra
    pins = {m.group(1) for r in requirements if (m := re.fullmatch(r"ray\[[^\]]*\]==([\w.]+)", r.strip()))}
    if len(pins) != 1:
        raise ValueError(f"{pyproject} must pin exactly one Ray version as ray[...]==X, found {sorted(pins)}")
    return Versions(project=data["project"]["version"], ray=pins.pop())


def image(flavor: Flavor, versions: Versions) -> str:
    """The project image of ``flavor``: ``tts-ray:<project>-ray<ray>-<python>-<flavor>``."""
    return f"{IMAGE_NAME}:{versions.project}-ray{versions.ray}-{PYTHON_TAG}-{flavor}"


# --- the Serve config -------------------------------------------------------------------------

def load_serve_config(overlay: Overlay) -> dict[str, Any]:
    """The overlay's ``deployments/`` file, its application's args validated by ``AppConfig``.

    Raises:
        FileNotFoundError: no such file (the renderer reads a source checkout's deployments/).
        ValueError: not a Serve config with one tts_ray application.
        pydantic.ValidationError: invalid app config.
    """
    path = DEPLOYMENTS_DIR / overlay.serve_config
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `tts-ray k8s` renders from a source checkout "
                                "(pip install -e .), whose deployments/ it reads")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or len(data.get("applications") or []) != 1:
        raise ValueError(f"{path} must be a Serve config with exactly one application")
    AppConfig.model_validate(data["applications"][0].get("args", {}))
    return data


def serve_config_for_cluster(data: dict[str, Any]) -> dict[str, Any]:
    """A Serve config as it runs in a KubeRay cluster: proxies on every node, listening on all
    interfaces, so KubeRay's Serve service reaches them; the routers require API keys
    (``router.require_api_keys``), so an empty key Secret stops the app from starting instead
    of leaving the service open; and no engine is bound to fixed cores: a pod's cores are not
    known in advance (the kubelet's static CPU manager hands a Guaranteed pod cores of its
    choosing), so ``VLLM_CPU_OMP_THREADS_BIND`` is dropped for vLLM's "auto" binding within
    the pod, under which the engines of one pod share its cores again
    (``compute_group_slowdown`` back to its default, 1.0). Otherwise the applications are
    unchanged.

    Raises:
        ValueError: an HTTP port other than the one the Serve service targets.
    """
    config = copy.deepcopy(data)
    http = dict(config.get("http_options") or {})
    if http.get("port", SERVE_PORT) != SERVE_PORT:
        raise ValueError(f"http_options.port must be {SERVE_PORT} (KubeRay's Serve service port)")
    for application in config.get("applications") or []:
        args = application.setdefault("args", {})
        args.setdefault("router", {})["require_api_keys"] = True
        ((application.get("runtime_env") or {}).get("env_vars") or {}).pop(CPU_THREADS_BIND_ENV, None)
        for section in [*(args.get("generators") or []), args.get("reward") or {}]:
            env = (section.get("runtime_env") or {}).get("env_vars") or {}
            if env.pop(CPU_THREADS_BIND_ENV, None) is not None:
                section.pop("compute_group_slowdown", None)
                if not env:
                    section["runtime_env"].pop("env_vars")
                if not section["runtime_env"]:
                    section.pop("runtime_env")
    config["proxy_location"] = "EveryNode"
    config["http_options"] = {**http, "host": "0.0.0.0", "port": SERVE_PORT}
    return config


def serve_config_v2(overlay: Overlay) -> str:
    """The RayService's ``serveConfigV2`` text for ``overlay``."""
    body = dump_yaml(serve_config_for_cluster(load_serve_config(overlay)), sort_keys=False)
    return (f"# Generated from deployments/{overlay.serve_config} by tts-ray k8s write (proxies on every "
            f"node, router.require_api_keys set): edit that file, then rerun it.\n{body}")


# --- worker groups from the app config ----------------------------------------------------------

@dataclass(frozen=True)
class WorkerGroup:
    """A worker group derived from an app config: pods of one shape, how many at least and most."""

    name: str
    accelerator_type: str | None  # None: a CPU group
    gpus_per_pod: int
    min_pods: int
    max_pods: int


def worker_groups(config: AppConfig) -> list[WorkerGroup]:
    """The worker groups that host ``config`` at its smallest and largest scale.

    A GPU generator replica gets one pod of ``tensor_parallel_size`` GPUs (one group per
    accelerator type and size); a GPU reward replica one single-GPU pod. Replicas on CPU share
    pods of :data:`CPU_POD_LOGICAL_CPUS` logical CPUs; the routers and the budget replica go to
    a CPU group where there is one, else to the spare CPUs of the GPU pods. Autoscaled pools count ``min_replicas`` and
    ``max_replicas``, fixed ones ``num_replicas`` for both.
    """
    gpu: dict[tuple[str, int], list[int]] = {}
    cpu_min = cpu_max = 0.0

    def add_gpu(accelerator: str, gpus: int, low: int, high: int) -> None:
        bounds = gpu.setdefault((accelerator, gpus), [0, 0])
        bounds[0] += low
        bounds[1] += high

    for pool in config.generators:
        low, high = ((pool.autoscaling.min_replicas, pool.autoscaling.max_replicas)
                     if pool.autoscaling is not None else (pool.num_replicas, pool.num_replicas))
        if pool.accelerator_type is not None:
            add_gpu(pool.accelerator_type, pool.tensor_parallel_size, low, high)
        else:
            per_replica = GENERATOR_ACTOR_CPUS + pool.tensor_parallel_size
            cpu_min += low * per_replica
            cpu_max += high * per_replica
    if config.reward is not None:
        if config.reward.accelerator_type is not None:
            add_gpu(config.reward.accelerator_type, 1, config.reward.num_replicas, config.reward.num_replicas)
        else:
            cpu_min += config.reward.num_replicas * REWARD_CPUS
            cpu_max += config.reward.num_replicas * REWARD_CPUS
    groups = [WorkerGroup(f"{accelerator.lower()}-x{gpus}", accelerator, gpus, low, high)
              for (accelerator, gpus), (low, high) in sorted(gpu.items())]
    if cpu_max > 0:
        router_cpus = config.router.num_replicas * ROUTER_CPUS + BUDGET_CPUS
        groups.insert(0, WorkerGroup("cpu", None, 0,
                                     math.ceil((cpu_min + router_cpus) / CPU_POD_LOGICAL_CPUS),
                                     math.ceil((cpu_max + router_cpus) / CPU_POD_LOGICAL_CPUS)))
    return groups


# --- pods ----------------------------------------------------------------------------------------

def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tts-ray", "app.kubernetes.io/component": component}


def _env(api_keys: bool = False) -> list[dict[str, Any]]:
    # Ray's token (RAY_AUTH_MODE, RAY_AUTH_TOKEN) is injected by KubeRay from authOptions.
    env = [
        {"name": "HF_HOME", "value": HF_HOME},
        # Optional: public models need no token; a gated one fails to download without it.
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": HF_TOKEN_SECRET, "key": HF_TOKEN_SECRET_KEY, "optional": True}}},
    ]
    if api_keys:
        # Serve replicas inherit the container's environment: the router finds its key file here
        # (and tts_ray.eval takes its key from the same file when TTS_RAY_API_KEY is unset).
        env.append({"name": API_KEYS_FILE_ENV, "value": f"{API_KEYS_MOUNT}/{API_KEYS_SECRET_KEY}"})
    return env


def _api_keys_volume() -> dict[str, Any]:
    # Not optional: without the Secret the pods do not start, rather than serve openly.
    return {"name": "api-keys", "secret": {"secretName": API_KEYS_SECRET, "defaultMode": API_KEYS_FILE_MODE,
                                           "items": [{"key": API_KEYS_SECRET_KEY, "path": API_KEYS_SECRET_KEY}]}}


def _pod_template(*, image_ref: str, container: str, component: str, cpus: int, memory_gib: int,
                  shm_gib: int, gpus: int = 0, ports: list[dict[str, Any]] | None = None,
                  readiness: dict[str, Any] | None = None, cpu_limit: int | None = None,
                  results_volume: bool = False, api_keys: bool = False) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": str(cpus), "memory": f"{memory_gib}Gi"}
    limits: dict[str, Any] = {"cpu": str(cpu_limit or cpus), "memory": f"{memory_gib}Gi"}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    mounts = [{"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": MODEL_CACHE_PVC}},
        # Ray's object store and NCCL (tensor parallelism) use /dev/shm; a container's default is 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
    ]
    if results_volume:
        mounts.append({"name": "eval-results", "mountPath": EVAL_RESULTS_MOUNT})
        volumes.append({"name": "eval-results", "persistentVolumeClaim": {"claimName": EVAL_RESULTS_PVC}})
    if api_keys:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
        volumes.append(_api_keys_volume())
    spec_container: dict[str, Any] = {
        "name": container,
        "image": image_ref,
        "env": _env(api_keys),
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
    }
    if ports:
        spec_container["ports"] = ports
    if readiness:
        spec_container["readinessProbe"] = readiness
    spec: dict[str, Any] = {"securityContext": {"fsGroup": RAY_IMAGE_GID},
                            "containers": [spec_container], "volumes": volumes}
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": _labels(component)}, "spec": spec}


def _head_group(image_ref: str, component: str, *, serve: bool, results_volume: bool = False,
                api_keys: bool = False) -> dict[str, Any]:
    ports = [{"name": "gcs-server", "containerPort": GCS_PORT},
             {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "client", "containerPort": CLIENT_PORT}]
    if serve:
        ports.append({"name": "serve", "containerPort": SERVE_PORT})
    return {
        # ClusterIP: the dashboard and the Ray client are reachable inside the cluster only
        # (kubectl port-forward for people); there is no Ingress, NodePort or LoadBalancer.
        "serviceType": "ClusterIP",
        # The head runs Ray's control plane (GCS, Serve controller, autoscaler), no replicas.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": _pod_template(image_ref=image_ref, container="ray-head", component=component, cpus=HEAD_CPUS,
                                  memory_gib=HEAD_MEMORY_GIB, shm_gib=2, ports=ports,
                                  results_volume=results_volume, api_keys=api_keys),
    }


def _serve_readiness() -> dict[str, Any]:
    # Ready once this pod's Serve proxy answers its health route: KubeRay's Serve service
    # sends traffic only to ready pods.
    return {"httpGet": {"path": "/-/healthz", "port": SERVE_PORT},
            "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}


def _worker_group(group: WorkerGroup, image_ref: str, component: str, *, serve: bool,
                  min_pods: int | None = None) -> dict[str, Any]:
    """A worker group of ``group``'s pods; ``serve``: they run the service (Serve's port and
    readiness, the API keys mounted)."""
    low = group.min_pods if min_pods is None else min_pods
    high = group.max_pods
    ports = [{"name": "serve", "containerPort": SERVE_PORT}] if serve else None
    readiness = _serve_readiness() if serve else None
    if group.accelerator_type is None:
        template = _pod_template(image_ref=image_ref, container="ray-worker", component=component,
                                 cpus=CPU_POD_CPUS,
                                 memory_gib=CPU_POD_MEMORY_GIB, shm_gib=CPU_POD_SHM_GIB,
                                 ports=ports, readiness=readiness, api_keys=serve)
        return {"groupName": group.name, "replicas": low, "minReplicas": low, "maxReplicas": high,
                "rayStartParams": {"num-cpus": str(CPU_POD_LOGICAL_CPUS)}, "template": template}
    gpus = group.gpus_per_pod
    template = _pod_template(image_ref=image_ref, container="ray-worker", component=component,
                             cpus=CPUS_PER_GPU * gpus,
                             memory_gib=MEMORY_GIB_PER_GPU * gpus, shm_gib=SHM_GIB_PER_GPU * gpus,
                             gpus=gpus, ports=ports, readiness=readiness, api_keys=serve)
    return {"groupName": group.name, "replicas": low, "minReplicas": low, "maxReplicas": high,
            "rayStartParams": {},
            # Replicas ask for "accelerator_type:<type>"; declaring it lets the autoscaler
            # know which group provides it before any pod of the group exists.
            "resources": {f"accelerator_type:{group.accelerator_type}": "1"},
            "template": template}


def _cluster_common(versions: Versions) -> dict[str, Any]:
    return {"rayVersion": versions.ray,
            # Ray token authentication: KubeRay creates the token Secret and sets it on every Ray container.
            "authOptions": {"mode": "token"}}


def _autoscaling() -> dict[str, Any]:
    return {"enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": IDLE_TIMEOUT_S}}


# --- base and overlays ---------------------------------------------------------------------------

def base_objects(versions: Versions) -> list[dict[str, Any]]:
    """The base's objects: everything that does not depend on the overlay. Their image is the
    CPU flavour; an overlay sets its own with kustomize's ``images``."""
    image_ref = image("cpu", versions)
    def pvc(name: str, access: str, gib: int, component: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "labels": _labels(component)},
                "spec": {"accessModes": [access], "resources": {"requests": {"storage": f"{gib}Gi"}}}}

    service = {
        "apiVersion": RAY_API_VERSION, "kind": "RayService",
        "metadata": {"name": SERVICE_NAME, "labels": _labels("service")},
        "spec": {
            # A new cluster takes over only once its Serve apps are healthy (zero downtime);
            # while both run the GPUs are needed twice.
            "upgradeStrategy": {"type": "NewCluster"},
            # Clients reach the Serve proxies of the worker pods, next to the replicas.
            "excludeHeadPodFromServeSvc": True,
            "rayClusterConfig": {**_cluster_common(versions), **_autoscaling(),
                                 "headGroupSpec": _head_group(image_ref, "service", serve=True,
                                                              api_keys=True)},
        },
    }
    job = {
        "apiVersion": RAY_API_VERSION, "kind": "RayJob",
        "metadata": {"name": EVAL_JOB_NAME, "labels": _labels("eval")},
        "spec": {
            # Created suspended: start it once the service is up (README "Deploying on Kubernetes").
            "suspend": True,
            "entrypoint": _eval_entrypoint(OVERLAYS["cpu-demo"]),
            "submissionMode": "K8sJobMode",
            "backoffLimit": 0,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": EVAL_JOB_TTL_S,
            # The evaluation is an HTTP client of the service: a head pod is all it needs.
            "rayClusterSpec": {**_cluster_common(versions),
                               "headGroupSpec": _head_group(image_ref, "eval", serve=False,
                                                            results_volume=True, api_keys=True)},
        },
    }
    adhoc = {
        "apiVersion": RAY_API_VERSION, "kind": "RayCluster",
        "metadata": {"name": ADHOC_CLUSTER_NAME, "labels": _labels("adhoc")},
        "spec": {**_cluster_common(versions), **_autoscaling(),
                 "headGroupSpec": _head_group(image_ref, "adhoc", serve=False)},
    }
    return [
        pvc(MODEL_CACHE_PVC, "ReadWriteMany", OVERLAYS["cpu-demo"].model_cache_gib, "model-cache"),
        pvc(EVAL_RESULTS_PVC, "ReadWriteOnce", 1, "eval"),
        service, job, adhoc,
    ]


def _eval_entrypoint(overlay: Overlay) -> str:
    dataset = overlay.eval_args[overlay.eval_args.index("--dataset") + 1]
    return " ".join(["python", "-m", "tts_ray.eval", *overlay.eval_args,
                     "--url", f"http://{SERVICE_NAME}-serve-svc:{SERVE_PORT}",
                     "--out", f"{EVAL_RESULTS_MOUNT}/{overlay.name}-{dataset}", "--no-progress"])


def overlay_patches(overlay: Overlay, versions: Versions) -> list[dict[str, Any]]:
    """The overlay's merge patches (each names its target by apiVersion, kind and name)."""
    config = AppConfig.model_validate(load_serve_config(overlay)["applications"][0]["args"])
    image_ref = image(overlay.flavor, versions)
    groups = worker_groups(config)
    # The ad hoc cluster can grow the same GPU pods as the service, from zero.
    adhoc_groups = [_worker_group(WorkerGroup("cpu", None, 0, 0, ADHOC_CPU_MAX_PODS), image_ref, "adhoc",
                                  serve=False)]
    adhoc_groups += [_worker_group(g, image_ref, "adhoc", serve=False, min_pods=0)
                     for g in groups if g.accelerator_type is not None]
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": MODEL_CACHE_PVC},
         "spec": {"resources": {"requests": {"storage": f"{overlay.model_cache_gib}Gi"}}}},
        {"apiVersion": RAY_API_VERSION, "kind": "RayService", "metadata": {"name": SERVICE_NAME},
         "spec": {"serveConfigV2": serve_config_v2(overlay),
                  "rayClusterConfig": {"workerGroupSpecs": [_worker_group(g, image_ref, "service", serve=True)
                                                            for g in groups]}}},
        {"apiVersion": RAY_API_VERSION, "kind": "RayJob", "metadata": {"name": EVAL_JOB_NAME},
         "spec": {"entrypoint": _eval_entrypoint(overlay)}},
        {"apiVersion": RAY_API_VERSION, "kind": "RayCluster", "metadata": {"name": ADHOC_CLUSTER_NAME},
         "spec": {"workerGroupSpecs": adhoc_groups}},
    ]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge key by key, ``None`` deletes, anything else
    (lists included) replaces. Neither argument is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _set_images(node: Any, new_image: str) -> None:
    """Point every container of ``IMAGE_NAME`` at ``new_image`` (what kustomize's ``images``
    transformer does to any ``containers`` list)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and str(container.get("image", "")).split(":")[0] == IMAGE_NAME:
                        container["image"] = new_image
            _set_images(value, new_image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, new_image)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def render(overlay_name: str) -> list[dict[str, Any]]:
    """The objects of overlay ``overlay_name``, in kustomize's output order.

    Raises:
        KeyError: an unknown overlay.
    """
    overlay = OVERLAYS[overlay_name]
    versions = read_versions()
    objects = {_key(o): o for o in base_objects(versions)}
    for patch in overlay_patches(overlay, versions):
        objects[_key(patch)] = merge_patch(objects[_key(patch)], patch)
    for obj in objects.values():
        _set_images(obj, image(overlay.flavor, versions))
    return sorted(objects.values(), key=lambda o: (_KIND_ORDER.index(o["kind"]), o["metadata"]["name"]))


# --- files ---------------------------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    """YAML as kustomize writes it: block style, multi-line strings (the Serve config) as
    literal blocks, strings that would read as another type in double quotes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and value.strip() and not value[0].isspace():
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    plain_tag = dumper.resolve(yaml.ScalarNode, value, (True, False))
    style = '"' if plain_tag != "tag:yaml.org,2002:str" or "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any, sort_keys: bool = True) -> str:
    """``data`` as block-style YAML; keys sorted (as kustomize writes them) unless ``sort_keys``
    is False (then in insertion order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=sort_keys, default_flow_style=False, width=80)


def dump_documents(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream."""
    return "---\n".join(dump_yaml(o) for o in objects)


_HEADER = ("# Generated by `tts-ray k8s write` (tts_ray/k8s.py){source}. Do not edit: change "
           "tts_ray/k8s.py or deployments/, then rerun it.\n")


def render_tree() -> dict[str, str]:
    """Every generated file under ``k8s/`` (path relative to ``k8s/`` -> text)."""
    versions = read_versions()
    files: dict[str, str] = {}
    base = base_objects(versions)
    header = _HEADER.format(source="")
    for obj in base:
        files[f"base/{_BASE_FILES[_key(obj)]}"] = header + dump_yaml(obj)
    files["base/kustomization.yaml"] = header + dump_yaml({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [_BASE_FILES[_key(o)] for o in base]})
    for overlay in OVERLAYS.values():
        header = _HEADER.format(source=f" from deployments/{overlay.serve_config}")
        patch_files = []
        for patch in overlay_patches(overlay, versions):
            name = _BASE_FILES[_key(patch)].replace(".yaml", "-patch.yaml")
            files[f"overlays/{overlay.name}/{name}"] = header + dump_yaml(patch)
            patch_files.append(name)
        files[f"overlays/{overlay.name}/kustomization.yaml"] = header + f"# {overlay.summary}\n" + dump_yaml({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../../base"],
            "patches": [{"path": name} for name in patch_files],
            "images": [{"name": IMAGE_NAME, "newName": IMAGE_NAME,
                        "newTag": image(overlay.flavor, versions).split(":", 1)[1]}]})
    return files


def stale_files(k8s_dir: Path = K8S_DIR) -> list[str]:
    """Generated files under ``k8s_dir`` that are missing, differ from a fresh render, or are
    left over in ``base/`` or ``overlays/`` without being generated (paths relative to it)."""
    expected = render_tree()
    stale = [path for path, text in expected.items()
             if not (k8s_dir / path).is_file() or (k8s_dir / path).read_text() != text]
    for folder in ("base", "overlays"):
        for path in sorted((k8s_dir / folder).rglob("*")) if (k8s_dir / folder).is_dir() else []:
            relative = path.relative_to(k8s_dir).as_posix()
            if path.is_file() and relative not in expected:
                stale.append(relative)
    return stale


def write_tree(k8s_dir: Path = K8S_DIR) -> list[str]:
    """Write every generated file under ``k8s_dir``; remove generated-tree files no longer
    generated. Returns the paths written or removed (relative to ``k8s_dir``)."""
    changed = stale_files(k8s_dir)
    expected = render_tree()
    for relative in changed:
        path = k8s_dir / relative
        if relative in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[relative])
        else:
            path.unlink()
    return changed


# --- command line --------------------------------------------------------------------------------

def _cmd_render(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_documents(render(args.overlay)))
    return 0


def _cmd_write(args: argparse.Namespace) -> int:
    if args.check:
        stale = stale_files(args.dir)
        for relative in stale:
            print(f"stale: {args.dir / relative}", file=sys.stderr)
            expected = render_tree().get(relative, "")
            current = (args.dir / relative).read_text() if (args.dir / relative).is_file() else ""
            sys.stderr.writelines(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                       f"{relative} (on disk)", f"{relative} (rendered)", n=1))
        if stale:
            print("run `tts-ray k8s write` to regenerate k8s/", file=sys.stderr)
        return 1 if stale else 0
    changed = write_tree(args.dir)
    print(f"k8s: {len(changed)} file(s) written or removed under {args.dir}" +
          "".join(f"\n  {c}" for c in changed))
    return 0


def add_k8s_parser(verbs: argparse._SubParsersAction) -> None:
    """Add ``tts-ray k8s {render, write}`` to the CLI's sub-command object ``verbs``."""
    k8s = verbs.add_parser("k8s", help="Kubernetes manifests (KubeRay) generated from deployments/")
    sub = k8s.add_subparsers(dest="k8s_verb", required=True)
    p = sub.add_parser("render", help="print an overlay's manifests (what `kubectl kustomize` builds)")
    p.add_argument("--overlay", choices=sorted(OVERLAYS), required=True,
                   help="; ".join(f"{o.name}: {o.summary}" for o in OVERLAYS.values()))
    p.set_defaults(func=_cmd_render)
    p = sub.add_parser("write", help="regenerate the kustomize tree under k8s/ from deployments/")
    p.add_argument("--dir", type=Path, default=K8S_DIR, help="where the tree goes (default: the repo's k8s/)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 and show the differences if the tree is stale")
    p.set_defaults(func=_cmd_write)
