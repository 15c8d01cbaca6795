"""Kubernetes manifests: the committed k8s/ tree equals a fresh render, kustomize builds what the
Python renderer prints, every object validates (core objects with kubernetes-validate, KubeRay
resources against the CRDs' schemas), the embedded Serve config parses with Ray's schema and
ours, no literal secret, versions agree with pyproject.toml, and the deployment's promises hold
(head without CPUs, GPU workers, autoscaler, token auth, HF token from a Secret, model cache,
readiness through Serve, dashboard inside the cluster)."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tts_ray import k8s
from tts_ray.config import AppConfig
from tts_ray.constants import REPO_DIR, SHARED_DIR

OVERLAYS = sorted(k8s.OVERLAYS)
# A Kubernetes version kubernetes-validate ships schemas for (and the kubectl used here).
K8S_VERSION = "1.32.0"
CRD_DIR = Path(os.environ.get("TTS_RAY_KUBERAY_CRDS", SHARED_DIR / "kuberay-crds"))
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
RAY_KINDS = set(CRD_FILES)


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(k8s.render(overlay))


def _of_kind(objects, kind: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def _cluster_specs(objects) -> dict[str, dict[str, Any]]:
    """The RayCluster specs inside each KubeRay resource, by kind."""
    return {"RayService": _of_kind(objects, "RayService")["spec"]["rayClusterConfig"],
            "RayJob": _of_kind(objects, "RayJob")["spec"]["rayClusterSpec"],
            "RayCluster": _of_kind(objects, "RayCluster")["spec"]}


def _pod_templates(objects):
    for kind, spec in _cluster_specs(objects).items():
        yield f"{kind}/head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{kind}/{group['groupName']}", group["template"]


# --- the tree, kustomize and the CLI ----------------------------------------------------------------

def test_committed_k8s_tree_equals_a_fresh_render():
    stale = k8s.stale_files()
    assert stale == [], f"k8s/ is stale in {stale}: run `tts-ray k8s write`"


def test_a_stale_or_stray_file_is_detected(tmp_path: Path):
    k8s.write_tree(tmp_path)
    assert k8s.stale_files(tmp_path) == []
    patch = tmp_path / "overlays" / "gpu" / "rayservice-patch.yaml"
    patch.write_text(patch.read_text().replace("max_replicas: 8", "max_replicas: 9"))
    (tmp_path / "base" / "extra.yaml").write_text("kind: ConfigMap\n")
    assert sorted(k8s.stale_files(tmp_path)) == ["base/extra.yaml", "overlays/gpu/rayservice-patch.yaml"]
    assert sorted(k8s.write_tree(tmp_path)) == ["base/extra.yaml", "overlays/gpu/rayservice-patch.yaml"]
    assert k8s.stale_files(tmp_path) == [] and not (tmp_path / "base" / "extra.yaml").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_builds_what_the_renderer_prints(overlay: str):
    built = subprocess.run(["kubectl", "kustomize", str(REPO_DIR / "k8s" / "overlays" / overlay)],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert list(yaml.safe_load_all(built)) == list(rendered(overlay))


def test_cli_render_prints_the_overlay(capsys):
    from tts_ray.cli import main

    assert main(["k8s", "render", "--overlay", "gpu"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == list(rendered("gpu"))


def test_cli_write_check_fails_on_a_stale_tree(tmp_path: Path, capsys):
    from tts_ray.cli import main

    assert main(["k8s", "write", "--dir", str(tmp_path), "--check"]) == 1
    assert main(["k8s", "write", "--dir", str(tmp_path)]) == 0
    assert main(["k8s", "write", "--dir", str(tmp_path), "--check"]) == 0
    assert "stale" in capsys.readouterr().err


def test_merge_patch_merges_maps_replaces_lists_and_deletes_on_null():
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert k8s.merge_patch(target, {"a": {"c": [3]}, "d": None, "e": {"f": 1}}) == \
        {"a": {"b": 1, "c": [3]}, "e": {"f": 1}}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


# --- schemas --------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_pod_templates_validate_with_kubernetes_validate(overlay: str):
    import kubernetes_validate

    objects = rendered(overlay)
    core = [o for o in objects if o["kind"] not in RAY_KINDS]
    assert {o["kind"] for o in core} == {"PersistentVolumeClaim"}
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # The pod templates inside the KubeRay resources, as the core PodTemplate they are.
    for where, template in _pod_templates(objects):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": where.lower().replace("/", "-")},
                                      "template": template}, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_object():
    import kubernetes_validate

    pvc = copy.deepcopy(next(o for o in rendered("gpu") if o["kind"] == "PersistentVolumeClaim"))
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden wherever the schema lists the fields (the API
    server prunes them, `kubectl apply` rejects them under strict field validation)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str):
    import jsonschema

    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR} (set TTS_RAY_KUBERAY_CRDS)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _crd_errors(obj: dict[str, Any]) -> list[str]:
    assert obj["apiVersion"] == "ray.io/v1"
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in crd_validator(obj["kind"]).iter_errors(obj)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_resources_validate_against_the_crd_schemas(overlay: str):
    ray_objects = [o for o in rendered(overlay) if o["kind"] in RAY_KINDS]
    assert sorted(o["kind"] for o in ray_objects) == sorted(RAY_KINDS)
    for obj in ray_objects:
        assert _crd_errors(obj) == [], obj["kind"]


def test_crd_validation_rejects_unknown_fields_and_bad_values():
    service = copy.deepcopy(_of_kind(rendered("gpu"), "RayService"))
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["numCpus"] = 0
    service["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "password"
    errors = _crd_errors(service)
    assert any("numCpus" in e for e in errors) and any("password" in e for e in errors), errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_v2_parses_with_ray_and_app_schema_and_matches_deployments(overlay: str):
    from ray.serve.schema import ServeDeploySchema

    text = _of_kind(rendered(overlay), "RayService")["spec"]["serveConfigV2"]
    serve_config = yaml.safe_load(text)
    ServeDeploySchema.model_validate(serve_config)
    source = yaml.safe_load((REPO_DIR / "deployments" / k8s.OVERLAYS[overlay].serve_config).read_text())
    # The applications are the deployments file's, except that the routers require API keys
    # and no engine is bound to fixed cores (a pod's cores are not known in advance, so the
    # slowdown measured with that binding goes too); otherwise only where the proxies listen differs.
    for application in serve_config["applications"]:
        assert application["args"]["router"].pop("require_api_keys") is True
        if not application["args"]["router"]:
            del application["args"]["router"]
    assert k8s.CPU_THREADS_BIND_ENV not in text
    bound = 0
    for application in source["applications"]:
        for section in [*application["args"]["generators"], application["args"].get("reward") or {}]:
            env = section.get("runtime_env", {}).get("env_vars", {})
            if env.pop(k8s.CPU_THREADS_BIND_ENV, None) is not None:
                bound += 1
                section.pop("compute_group_slowdown", None)
                if not env:
                    del section["runtime_env"]
    assert bound == (3 if overlay == "cpu-demo" else 0)  # local.yaml binds both pools and the PRM
    assert serve_config["applications"] == source["applications"]
    assert serve_config["proxy_location"] == "EveryNode"
    assert serve_config["http_options"] == {**source.get("http_options", {}), "host": "0.0.0.0", "port": 8000}
    AppConfig.model_validate(serve_config["applications"][0]["args"])


# --- secrets ----------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"token|passw|secret|api[_-]?key|credential|private[_-]?key", re.IGNORECASE)
SECRET_TEXT = re.compile(r"hf_[A-Za-z0-9]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}"
                         r"|sk-[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{20,}\.")
# Keys whose string values name a Secret or a key in it, rather than hold one.
REFERENCE_KEYS = {"secretName", "name", "key"}


def _names_a_file(name: str, value: Any) -> bool:
    """An env var like TTS_RAY_API_KEYS_FILE whose value is the path of a mounted file: a
    reference to where the secret is, not the secret."""
    return name.endswith("_FILE") and isinstance(value, str) and value.startswith("/") and " " not in value


def literal_secrets(node: Any, path: str = "") -> list[str]:
    """Where ``node`` (a manifest) holds what looks like a secret value rather than a reference."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            found.append(f"{path}: a Secret with data")
        if (isinstance(node.get("name"), str) and SECRET_NAME.search(node["name"]) and "value" in node
                and not _names_a_file(node["name"], node["value"])):
            found.append(f"{path}/{node['name']}: literal value")
        for key, value in node.items():
            if (isinstance(value, str) and value and SECRET_NAME.search(str(key))
                    and key not in REFERENCE_KEYS):
                found.append(f"{path}/{key}: literal value")
            found += literal_secrets(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += literal_secrets(item, f"{path}[{i}]")
    elif isinstance(node, str) and SECRET_TEXT.search(node):
        found.append(f"{path}: secret-like text")
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_manifest_carries_a_literal_secret(overlay: str):
    objects = list(rendered(overlay))
    assert literal_secrets(objects) == []
    # The Serve config travels inside a string: scan it as the YAML it is.
    assert literal_secrets(yaml.safe_load(_of_kind(objects, "RayService")["spec"]["serveConfigV2"])) == []
    for path in sorted((REPO_DIR / "k8s").rglob("*")) + sorted((REPO_DIR / "deployments").glob("*.yaml")):
        if path.is_file():
            assert not SECRET_TEXT.search(path.read_text()), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_eval_pods_read_the_api_keys_from_a_mounted_secret(overlay: str):
    objects = rendered(overlay)
    key_file = f"{k8s.API_KEYS_MOUNT}/{k8s.API_KEYS_SECRET_KEY}"
    checked = 0
    for where, template in _pod_templates(objects):
        if where.startswith("RayCluster/"):
            continue  # the ad hoc cluster serves nothing
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            # the variable the router reads its key file from (router.api_keys_file unset)
            assert env["TTS_RAY_API_KEYS_FILE"] == {"name": "TTS_RAY_API_KEYS_FILE", "value": key_file}, where
            assert "TTS_RAY_API_KEYS" not in env, where
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == k8s.API_KEYS_MOUNT]
            assert mount["readOnly"] is True, where
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == k8s.API_KEYS_SECRET and not secret.get("optional"), where
            assert secret["items"] == [{"key": k8s.API_KEYS_SECRET_KEY, "path": k8s.API_KEYS_SECRET_KEY}], where
            assert secret["defaultMode"] & 0o007 == 0, where  # not world-readable
            checked += 1
    assert checked >= 3  # the service's head and workers, the evaluation job's head
    # An empty or missing key file must not leave the service open.
    serve_config = yaml.safe_load(_of_kind(objects, "RayService")["spec"]["serveConfigV2"])
    for application in serve_config["applications"]:
        router = AppConfig.model_validate(application["args"]).router
        assert router.require_api_keys and router.api_keys_file is None


def test_the_secret_scan_finds_literal_secrets():
    leaky = [
        {"env": [{"name": "HF_TOKEN", "value": "hf_abcdefghijklmnopqrstuvwxyz0123"}]},
        {"kind": "Secret", "stringData": {"token": "x"}},
        {"authOptions": {"token": "plain"}},
        {"args": ["--key", "sk-abcdefghijklmnopqrstuvwxyz"]},
    ]
    assert len(literal_secrets(leaky)) >= 4
    assert literal_secrets([{"env": [{"name": "API_KEYS_FILE", "value": "sk-not-a-path"}]}])
    safe = {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
                    {"name": "TTS_RAY_API_KEYS_FILE", "value": "/etc/tts-ray/api-keys/keys"}]}
    assert literal_secrets(safe) == []


# --- versions ---------------------------------------------------------------------------------------

def _pyproject() -> tuple[str, set[str], str]:
    data = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]
    pins = {m.group(1) for extra in data["optional-dependencies"].values() for r in extra
            if (m := re.fullmatch(r"ray\[serve\]==(\S+)", r))}
    return data["version"], pins, data["requires-python"]


def _images(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [c["image"] for c in node.get("containers", []) if isinstance(c, dict)]
        return found + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_ray_versions_agree_with_pyproject(overlay: str):
    version, pins, _ = _pyproject()
    assert len(pins) == 1, f"pyproject pins several Ray versions: {pins}"
    (ray_version,) = pins
    objects = rendered(overlay)
    for kind, spec in _cluster_specs(objects).items():
        assert spec["rayVersion"] == ray_version, kind
    images = _images(list(objects))
    assert len(images) >= 4
    flavor = k8s.OVERLAYS[overlay].flavor
    assert set(images) == {f"tts-ray:{version}-ray{ray_version}-{k8s.PYTHON_TAG}-{flavor}"}


def test_dockerfile_builds_on_the_ray_image_pyproject_pins():
    _, (ray_version,), requires_python = _pyproject()
    text = (REPO_DIR / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args["RAY_VERSION"] == ray_version
    assert args["PYTHON_TAG"] == k8s.PYTHON_TAG
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{FLAVOR\}$", text, re.MULTILINE)
    # The image's Python satisfies requires-python (">=3.11" and py311).
    minimum = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", requires_python).groups())
    assert (int(k8s.PYTHON_TAG[2]), int(k8s.PYTHON_TAG[3:])) >= minimum
    # Token authentication (authOptions) needs Ray 2.52 or newer.
    assert tuple(int(x) for x in ray_version.split(".")[:2]) >= (2, 52)


# --- what the deployment promises --------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_heads_run_no_work_and_clusters_use_token_auth(overlay: str):
    for kind, spec in _cluster_specs(rendered(overlay)).items():
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", kind
        assert spec["authOptions"] == {"mode": "token"}, kind
    specs = _cluster_specs(rendered(overlay))
    for kind in ("RayService", "RayCluster"):
        assert specs[kind]["enableInTreeAutoscaling"] is True, kind
        groups = specs[kind]["workerGroupSpecs"]
        assert groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_has_the_hf_token_from_a_secret_and_the_model_cache(overlay: str):
    objects = rendered(overlay)
    claims = {v["persistentVolumeClaim"]["claimName"] for _, t in _pod_templates(objects)
              for v in t["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert k8s.MODEL_CACHE_PVC in claims
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"} >= claims
    for where, template in _pod_templates(objects):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == k8s.HF_TOKEN_SECRET and "value" not in env["HF_TOKEN"], where
            mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            cache = [n for n in mounted if volumes[n].get("persistentVolumeClaim", {}).get("claimName")
                     == k8s.MODEL_CACHE_PVC]
            assert cache and env["HF_HOME"]["value"].startswith(mounted[cache[0]]), where


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if k8s.OVERLAYS[o].flavor == "gpu"])
def test_gpu_workers_request_and_limit_gpus_enough_for_the_serve_config(overlay: str):
    objects = rendered(overlay)
    service = _of_kind(objects, "RayService")
    config = AppConfig.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    gpus_per_pod = {}
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"], group["groupName"]
        gpus_per_pod[group["groupName"]] = (int(limits["nvidia.com/gpu"]), group["minReplicas"], group["maxReplicas"])
    # Each replica needs its tensor-parallel GPUs in one pod (STRICT_PACK); count pods per size.
    need: dict[int, list[int]] = {}
    for pool in config.generators:
        low, high = pool.autoscaling.min_replicas, pool.autoscaling.max_replicas
        need.setdefault(pool.tensor_parallel_size, [0, 0])
        need[pool.tensor_parallel_size][0] += low
        need[pool.tensor_parallel_size][1] += high
    need.setdefault(1, [0, 0])
    need[1][0] += config.reward.num_replicas
    need[1][1] += config.reward.num_replicas
    for gpus, (low, high) in need.items():
        pods = [(mn, mx) for g, mn, mx in gpus_per_pod.values() if g == gpus]
        assert pods, f"no worker group with {gpus} GPU(s) per pod"
        assert sum(mn for mn, _ in pods) >= low and sum(mx for _, mx in pods) >= high, gpus


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_workers_are_ready_through_serve_health(overlay: str):
    service = _of_kind(rendered(overlay), "RayService")
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/-/healthz", 8000), group["groupName"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dashboard_stays_inside_the_cluster(overlay: str):
    objects = rendered(overlay)
    assert not [o for o in objects if o["kind"] in ("Ingress", "Route", "Gateway", "HTTPRoute")]
    assert not [o for o in objects if o["kind"] == "Service"
                and o["spec"].get("type") in ("LoadBalancer", "NodePort")]
    for kind, spec in _cluster_specs(objects).items():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", kind
        assert not head.get("enableIngress"), kind
        assert "type" not in head.get("headService", {}).get("spec", {}), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_eval_job_targets_the_service(overlay: str):
    objects = rendered(overlay)
    job = _of_kind(objects, "RayJob")["spec"]
    service_name = _of_kind(objects, "RayService")["metadata"]["name"]
    words = job["entrypoint"].split()
    assert words[:3] == ["python", "-m", "tts_ray.eval"]
    assert words[words.index("--url") + 1] == f"http://{service_name}-serve-svc:8000"
    assert words[words.index("--out") + 1].startswith(k8s.EVAL_RESULTS_MOUNT + "/")
    assert job["shutdownAfterJobFinishes"] is True
    # The entrypoint's options are the evaluation CLI's own.
    import argparse

    from tts_ray.eval.cli import add_eval_arguments

    add_eval_arguments(argparse.ArgumentParser(exit_on_error=False)).parse_args(words[3:])
