"""The Kubernetes manifests (deploy/k8s): rendered with kustomize, valid against the Kubernetes
schemas, and holding what a production Deployment needs."""

from __future__ import annotations

import copy
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None or importlib.util.find_spec("kubernetes_validate") is None,
    reason="needs kubectl (kustomize) and kubernetes-validate (the dev extra)",
)


def _validator() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_validate", REPO / "deploy" / "k8s" / "validate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def v() -> Any:
    return _validator()


@pytest.fixture(scope="module")
def example(v: Any) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in v.render(REPO / "deploy" / "k8s" / "overlays" / "example")}


def test_every_kustomization_renders_and_validates(v: Any) -> None:
    folders = v.kustomizations()
    assert {f.name for f in folders} >= {"base", "example"}
    for folder in folders:
        assert v.validate(v.render(folder)) == [], folder


def test_validation_catches_a_wrong_field(v: Any, example: dict[str, dict[str, Any]]) -> None:
    bad = copy.deepcopy(example["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    assert v.validate([bad]) != []
    wrong_type = copy.deepcopy(example["Service"])
    wrong_type["spec"]["ports"][0]["port"] = "eighty"
    assert v.validate([wrong_type]) != []


def test_deployment_is_production_ready(example: dict[str, dict[str, Any]]) -> None:
    pod = example["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "registry.example.com/agelens:4.1.0"
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    # One worker per requested core, from the downward API.
    assert env["AGELENS_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    secret = example["Secret"]["metadata"]["name"]
    assert env["AGELENS_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret
    assert c["envFrom"][0]["configMapRef"]["name"] == example["ConfigMap"]["metadata"]["name"]
    assert example["ConfigMap"]["data"]["AGELENS_DETECTOR_MODEL"] == "short"
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > 5
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_service_hpa_and_pdb_select_the_pods(example: dict[str, dict[str, Any]]) -> None:
    labels = example["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert example["Service"]["spec"]["selector"].items() <= labels.items()
    assert example["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = example["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == example["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] == 3
    assert example["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
