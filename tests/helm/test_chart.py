"""The Helm chart (helm/refind): lint, render, Kubernetes schemas, and the refind config it ships.

No helm binary and no cluster: helm-python-sdk wraps Helm's own Go SDK (lint, values schema,
template rendering) and kubernetes-validate holds the Kubernetes OpenAPI schemas per version.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from refind.app.config import ApiConfig, ServeConfig
from refind.config import RefindConfig, load_config

if importlib.util.find_spec("helm_python") is None:
    pytest.skip("needs helm-python-sdk (pip install -e '.[helm]')", allow_module_level=True)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="needs kubernetes-validate (pip install -e '.[helm]')"
)

CHART = Path(__file__).resolve().parents[2] / "helm" / "refind"
FULL_VALUES = CHART / "ci" / "gpu-monitoring-values.yaml"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "search", "vision"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Custom resources have no schema in kubernetes-validate: the fields the chart relies on.
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"): ("rayVersion", "headGroupSpec", "workerGroupSpecs"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
}


# The Helm SDK is a Go shared library. Loaded into the pytest process after the Ray tests have
# run there, its runtime crashed the whole suite (SIGSEGV at the first lint), so every SDK call
# runs in a child Python process of its own.
_HELM_CHILD = r"""
import json, sys
import helm_python as helm
req = json.load(sys.stdin)
try:
    if req["op"] == "lint":
        out = helm.lint(req["chart"], req["values"], strict=True, kube_version=req["kube"])
    else:
        with helm.Chart.load(req["chart"]) as chart:
            out = chart.render(req["values"], name=req["name"], namespace=req["namespace"])
    json.dump({"ok": out}, sys.stdout)
except helm.HelmError as err:
    json.dump({"error": f"{type(err).__name__}: {err}"}, sys.stdout)
"""


class HelmFailed(Exception):
    """The Helm SDK refused the chart or its values; the message is the SDK's."""


def _helm(op: str, values: dict[str, Any] | None) -> Any:
    request = {"op": op, "chart": str(CHART), "values": values, "kube": f"v{KUBE_VERSION}",
               "name": RELEASE, "namespace": NAMESPACE}
    proc = subprocess.run([sys.executable, "-c", _HELM_CHILD], input=json.dumps(request),
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"helm SDK child exited {proc.returncode}: {proc.stderr[-2000:]}")
    answer = json.loads(proc.stdout)
    if "error" in answer:
        raise HelmFailed(answer["error"])
    return answer["ok"]


def _render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    manifests = _helm("render", values)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


VALUE_SETS = {"default": None, "gpu+monitoring+netpol": yaml.safe_load(FULL_VALUES.read_text())}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return _render(None)


@pytest.fixture(scope="module")
def full_docs() -> list[dict[str, Any]]:
    return _render(VALUE_SETS["gpu+monitoring+netpol"])


def _one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"expected one {kind} named *{suffix}, got {len(found)}"
    return found[0]


def _container(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return _one(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]["containers"][0]


def _ray_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = _one(docs, "RayCluster")["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]}
    pods |= {g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}
    return {name: pod["spec"]["containers"][0] for name, pod in pods.items()}


def _config_text(docs: list[dict[str, Any]]) -> str:
    return _one(docs, "ConfigMap", "-config")["data"]["config.yaml"]


def _load_rendered_config(
    docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> RefindConfig:
    text = _config_text(docs)
    for name in PLACEHOLDER.findall(text):
        # A value of the shape each secret takes (key_sha256 must be 64 hex digits; a session
        # secret at least 32 characters).
        monkeypatch.setenv(name, "0" * 64 if "SHA256" in name else f"secret-{name.lower()}")
    monkeypatch.setenv("REFIND_SESSION_SECRET", "s" * 32)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


# ---- Helm: lint, values schema, rendering ------------------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_lint_passes_strict(values_name: str) -> None:
    report = _helm("lint", VALUE_SETS[values_name])
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warning or error
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"replicas": -1}}, "at '/api/replicas': minimum"),
        ({"image": {"tag": ""}}, "at '/image/tag': minLength"),
        ({"image": {"tag": None}}, "missing property 'tag'"),
        ({"config": {"serve": {"port": 70000}}}, "at '/config/serve/port': maximum"),
        ({"config": {"data_dir": "relative/dir"}}, "at '/config/data_dir'"),
        ({"secretEnv": {"S3_KEY": {"secretName": "s3"}}}, "missing property 'key'"),
        ({"secretEnv": {"REDIS_PASSWORD": "hunter2"}}, "at '/secretEnv/REDIS_PASSWORD'"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"ray": {"gpuWorkers": {"gpus": 0}}}, "at '/ray/gpuWorkers/gpus': minimum"),
        ({"ray": {"cpuWorkers": {"minReplicas": 5, "maxReplicas": 2, "replicas": 2}}},
         "ray.cpuWorkers: minReplicas (5) is above maxReplicas (2)"),
        ({"ray": {"cpuWorkers": {"replicas": 9}}},
         "ray.cpuWorkers: replicas (9) must lie between minReplicas (1) and maxReplicas (8)"),
    ],
)
def test_bad_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmFailed) as err:
        _render(values)
    assert message in str(err.value)


# ---- Kubernetes: every manifest is valid for a recent Kubernetes ------------------------------


def test_every_manifest_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_KINDS:
            missing = [f for f in CUSTOM_KINDS[key] if f not in doc["spec"]]
            assert not missing, f"{doc['kind']} lacks spec.{missing}"
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_kinds_rendered_with_default_and_full_values(
    default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]
) -> None:
    kinds = sorted({d["kind"] for d in default_docs})
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget",
                     "RayCluster", "Service", "ServiceAccount"]
    extra = sorted({d["kind"] for d in full_docs} - set(kinds))
    assert extra == ["NetworkPolicy", "ServiceMonitor"]


# ---- The refind config the chart ships --------------------------------------------------------


def test_rendered_config_loads_in_refind(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    cfg = _load_rendered_config(docs, tmp_path, monkeypatch)
    head_svc = f"{_one(docs, 'RayCluster')['metadata']['name']}-head-svc"
    assert cfg.ray.address == f"ray://{head_svc}:10001"
    assert cfg.metadata.type == "redis" and cfg.kafka.enabled
    assert cfg.api.keys, "the API refuses to start without keys"
    # The shared volume is mounted where the config keeps the gallery.
    for component in ("serve", "api"):
        mounts = {m["name"]: m["mountPath"] for m in _container(docs, component)["volumeMounts"]}
        assert mounts["data"] == str(cfg.data_dir)


def test_full_values_reach_the_config(
    full_docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _load_rendered_config(full_docs, tmp_path, monkeypatch)
    assert cfg.kafka.bootstrap_servers.count(",") == 2
    assert cfg.kafka.sasl_password == "secret-kafka_password"
    assert cfg.blobs.url == "s3://refind-crops/prod"
    assert [c.name for c in cfg.cameras] == ["gate-north"]


def test_every_placeholder_is_a_secret_reference_in_each_pod(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    needed = set(PLACEHOLDER.findall(_config_text(docs)))
    assert {"REDIS_PASSWORD", "REFIND_API_KEY_SHA256"} <= needed
    containers = {c: _container(docs, c) for c in ("serve", "api")} | _ray_containers(docs)
    for name, container in containers.items():
        from_secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert needed <= from_secrets, f"{name} lacks {sorted(needed - from_secrets)}"


def test_no_plaintext_secret_in_default_render(default_docs: list[dict[str, Any]]) -> None:
    assert not [d for d in default_docs if d["kind"] == "Secret"]
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)
    containers = [_container(default_docs, c) for c in ("serve", "api")]
    for container in containers + list(_ray_containers(default_docs).values()):
        for env in container["env"]:
            if secretish.search(env["name"]):
                assert "valueFrom" in env, f"{env['name']} is a literal in {container['name']}"
    config = yaml.safe_load(_config_text(default_docs))
    assert "${REDIS_PASSWORD}" in config["metadata"]["url"]
    assert all(PLACEHOLDER.fullmatch(k["key_sha256"]) for k in config["api"]["keys"])


# ---- Probes and metrics point at what refind really serves ------------------------------------


def test_chart_ports_are_refinds_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"]["serve"]["port"] == ServeConfig().port
    assert values["config"]["api"]["port"] == ApiConfig().port
    assert values["api"]["service"]["port"] == ApiConfig().port


def _probe_targets(container: dict[str, Any]) -> set[tuple[str, int]]:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    targets = set()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        targets.add((get["path"], ports[get["port"]]))
    return targets


class _IdleSupervisor:
    """What serve's HTTP server asks of the supervisor, with no cameras."""

    def status(self) -> dict[str, object]:
        return {}

    def pool_stats(self) -> dict[str, object]:
        return {}

    def version_info(self) -> dict[str, object]:
        return {"model_id": None, "root": None, "alias_switches": 0, "alias_error": None}

    def identity_stats(self) -> None:
        return None


class _EmptyGallery:
    """What the API asks of the live search engine, before any ingest."""

    def stats(self) -> dict[str, object]:
        return {"model_id": "none", "shards": 0, "vectors": 0}

    def cameras(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    from refind.app.serve import start_http

    server = start_http(_IdleSupervisor(), "127.0.0.1", 0)  # type: ignore[arg-type]
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from refind.app.api import create_app

    cfg = RefindConfig.model_validate(
        {"data_dir": str(tmp_path_factory.mktemp("api")), "api": {"allow_anonymous": True}}
    )
    with TestClient(create_app(cfg, lambda _: _EmptyGallery())) as client:  # type: ignore[arg-type, return-value]
        yield client


def test_probes_hit_real_health_endpoints(
    rendered: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serve_url: str,
    api_client: Any,
) -> None:
    _, docs = rendered
    cfg = _load_rendered_config(docs, tmp_path, monkeypatch)
    serve, api = _container(docs, "serve"), _container(docs, "api")
    assert _probe_targets(serve) == {("/healthz", cfg.serve.port)}
    assert _probe_targets(api) == {("/healthz", cfg.api.port)}
    assert cfg.serve.host == cfg.api.host == "0.0.0.0"  # reachable by the kubelet
    # The same paths answer 200 on the real servers (an idle serve, an API over no gallery yet).
    with urllib.request.urlopen(f"{serve_url}/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert api_client.get("/healthz").status_code == 200


def test_metrics_scrape_targets(
    default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]], serve_url: str,
    api_client: Any,
) -> None:
    for component in ("serve", "api"):
        pod = _one(default_docs, "Deployment", f"-{component}")["spec"]["template"]
        port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
        ann = pod["metadata"]["annotations"]
        assert (ann["prometheus.io/path"], ann["prometheus.io/port"]) == ("/metrics", str(port))
    monitor = _one(full_docs, "ServiceMonitor")["spec"]
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("http", "/metrics")]
    selected = [d for d in full_docs if d["kind"] == "Service"
                and d["metadata"]["labels"].get("refind.io/metrics") == "true"]
    assert sorted(s["metadata"]["name"].rsplit("-", 1)[1] for s in selected) == ["api", "serve"]
    with urllib.request.urlopen(f"{serve_url}/metrics", timeout=5) as resp:
        assert resp.status == 200
    assert api_client.get("/metrics").status_code == 200


# ---- Ray cluster, security, scale ------------------------------------------------------------


def test_ray_cluster_groups_autoscaling_and_gpus(
    default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]
) -> None:
    spec = _one(default_docs, "RayCluster")["spec"]
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert [(g["groupName"], g["minReplicas"], g["maxReplicas"])
            for g in spec["workerGroupSpecs"]] == [("cpu", 1, 8)]
    full = _one(full_docs, "RayCluster")["spec"]
    gpu = next(g for g in full["workerGroupSpecs"] if g["groupName"] == "gpu")
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2)


def test_ray_token_auth_is_on_for_ray_and_the_driver_only(
    default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]
) -> None:
    for docs, secret in ((default_docs, f"{RELEASE}-refind"), (full_docs, "refind-ray-auth")):
        spec = _one(docs, "RayCluster")["spec"]
        assert spec["authOptions"]["mode"] == "token"
        autoscaler = {"name": "autoscaler", **spec["autoscalerOptions"]}
        for container in [*_ray_containers(docs).values(), _container(docs, "serve"), autoscaler]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, "auth_token")
        assert "RAY_AUTH_TOKEN" not in {e["name"] for e in _container(docs, "api")["env"]}


def test_pods_run_as_non_root_with_read_only_root(default_docs: list[dict[str, Any]]) -> None:
    for component in ("serve", "api"):
        pod = _one(default_docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = pod["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert pod["containers"][0]["resources"]["limits"]
    for container in _ray_containers(default_docs).values():
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]


def test_api_scales_behind_a_disruption_budget(default_docs: list[dict[str, Any]]) -> None:
    api = _one(default_docs, "Deployment", "-api")
    pdb = _one(default_docs, "PodDisruptionBudget", "-api")
    assert api["spec"]["replicas"] == 2
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    serve = _one(default_docs, "Deployment", "-serve")
    assert serve["spec"]["replicas"] == 1 and serve["spec"]["strategy"]["type"] == "Recreate"


def test_network_policies_cover_every_component(full_docs: list[dict[str, Any]]) -> None:
    policies = [d["spec"] for d in full_docs if d["kind"] == "NetworkPolicy"]
    covered = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component", "ray")
               for p in policies}
    assert covered == {"api", "serve", "ray"}
    api = next(p for p in policies
               if p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "api")
    assert api["ingress"][0]["from"] == VALUE_SETS["gpu+monitoring+netpol"]["networkPolicy"]["apiFrom"]


def test_notes_render() -> None:
    notes = _helm("render", None)["refind/templates/NOTES.txt"]
    assert f"ray://{RELEASE}-refind-head-svc:10001" in notes
    assert "refind-secrets / redis-password" in notes

