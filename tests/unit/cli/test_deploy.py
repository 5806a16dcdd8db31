"""Deployment files: the Kubernetes manifests pass a real schema validator, and the
dashboard, scrape config and units refer to what the gateway actually serves."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.app import create_app
from gateway.config import ServeConfig
from testkit.doubles import DeterministicTestEngine

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s/cloister.yaml").read_text()) if d]


def test_every_manifest_validates_against_the_kubernetes_schema(manifests) -> None:
    assert {m["kind"] for m in manifests} == {"RuntimeClass", "Deployment", "Service",
                                               "PodDisruptionBudget"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_keyholder_is_its_own_replicated_workload_the_gateways_join(manifests) -> None:
    keyholder = [d for d in yaml.safe_load_all((DEPLOY / "k8s/keyholder.yaml").read_text())
                 if d]
    for manifest in keyholder:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    stateful = next(m for m in keyholder if m["kind"] == "StatefulSet")
    assert stateful["spec"]["replicas"] >= 2
    assert stateful["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    args = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"][
        "spec"]["containers"][0]["args"]
    joins = [args[i + 1] for i, a in enumerate(args) if a == "--join"]
    assert len(joins) == stateful["spec"]["replicas"]
    assert all(j.startswith("http://cloister-keyholder-") for j in joins)


def test_a_broken_manifest_is_caught_by_the_validator(manifests) -> None:
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_is_confidential_gpu_backed_replicated_and_probed(manifests) -> None:
    runtime = next(m for m in manifests if m["kind"] == "RuntimeClass")
    spec = next(m for m in manifests if m["kind"] == "Deployment")["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] >= 2
    assert pod["runtimeClassName"] == runtime["metadata"]["name"]
    assert container["resources"]["limits"]["nvidia.com/pgpu"] == 1
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/cc.mode": "on"}
    assert pod["runtimeClassName"].startswith("kata-")
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    annotations = spec["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]


def test_a_gateway_whose_engine_died_is_restarted(manifests) -> None:
    """The gateway exits non-zero when its engine dies (`gateway.engine_slot`): each
    deployment must restart it on exactly that."""
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"  # a Deployment's only choice
    unit = (DEPLOY / "cvm/cloister.service").read_text()
    assert re.search(r"^Restart=(on-failure|always)$", unit, re.M)
    assert re.search(r"^RestartSec=\d+", unit, re.M)  # not a tight restart loop


def _exported_metric_names() -> set[str]:
    app = create_app(ServeConfig.of(), DeterministicTestEngine().running)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    names = {"cloister_engine_requests_unfinished", "cloister_engine_ready"}
    for family in app.metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    # vLLM's metric names, read from its source without importing it
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations
    source = (Path(spec.submodule_search_locations[0]) / "v1/metrics/loggers.py").read_text()
    names.update(n + s for n in re.findall(r'name="(vllm:[a-z_]+)"', source)
                 for s in ("", "_total", "_bucket"))
    return names


def test_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/cloister-dashboard.json").read_text())
    exported = _exported_metric_names()
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(?:cloister_[a-z_]+|vllm:[a-z_]+)", target["expr"])}
    assert used and used <= exported, used - exported
    assert len(dashboard["panels"]) >= 10


def test_scrape_config_and_units_point_at_the_metrics_port() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["cloister-cvm"]["static_configs"][0]["targets"][0].endswith(":9100")
    assert jobs["cloister-k8s"]["kubernetes_sd_configs"][0]["role"] == "pod"
    unit = (DEPLOY / "cvm/cloister.service").read_text()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for text in (unit, dockerfile):
        assert "--attestation" in text and "auto" in text and "9100" in text
    assert "VLLM_NO_USAGE_STATS=1" in unit and "RuntimeDirectoryMode=0700" in unit


@pytest.mark.slow  # renders every deployment
def test_what_the_deployments_set_passes_the_environment_allow_list() -> None:
    """The image's ENV, the unit's Environment= and the pods' env are what the gateway
    starts with: none of it may be refused (enclave/isolation.py), and the image holds
    every package the wheel does (it once missed `cli`)."""
    import re

    from enclave.isolation import refused_variables

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    env_block = dockerfile.split("\nENV ", 1)[1].split("\n\n", 1)[0]
    names = set(re.findall(r"([A-Z_][A-Z0-9_]*)=", env_block))
    unit = (DEPLOY / "cvm/cloister.service").read_text()
    for line in unit.splitlines():
        if line.startswith("Environment="):
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line.removeprefix("Environment=")))
    names |= set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (DEPLOY / "cvm/cloister.env").read_text(),
                            re.M))
    for manifest in ("k8s/cloister.yaml", "k8s/keyholder.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / manifest).read_text()):
            for pod in _pod_specs(doc):
                assert pod.get("enableServiceLinks") is False, manifest
                names |= {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    assert {"VLLM_NO_USAGE_STATS", "CLOISTER_STATE", "PYTHONUNBUFFERED"} <= names
    assert refused_variables(dict.fromkeys(names, "x")) == []
    for package in ("cli", "gateway", "enclave", "attestation", "proxy"):
        assert f"\nCOPY {package} {package}\n" in dockerfile


def _pod_specs(doc):
    if not isinstance(doc, dict):
        return []
    template = (doc.get("spec") or {}).get("template")
    return [template["spec"]] if template else []


def test_every_image_is_named_by_digest() -> None:
    import re

    for manifest in ("k8s/cloister.yaml", "k8s/keyholder.yaml"):
        images = re.findall(r"^\s*image:\s*(\S+)", (DEPLOY / manifest).read_text(), re.M)
        assert images and all(re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", i) for i in images)
