"""Kubernetes manifests for Triton: built as data, valid for the API server (core) and KServe's rules."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mtlrec.cli.app import app
from mtlrec.deploy import TritonDeployment, kserve_inference_service, triton_deployment, triton_service
from mtlrec.deploy.manifests import k8s_name
from mtlrec.deploy.validate import inference_service_problems, manifest_problems

FACTS = TritonDeployment(model="mmoe_v2", mtlrec_version="0.1.0")


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = doc["spec"]["template"]["spec"]["containers"][0]
    return container


def test_deployment_and_service_pass_the_kubernetes_schemas() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the [k8s] extra) is not installed")
    docs = [triton_deployment(FACTS, pvc="models", sub_path="repo"), triton_service(FACTS)]
    assert manifest_problems(docs) == []
    gpu = TritonDeployment(model="mmoe", gpu=True, replicas=3)
    assert manifest_problems([triton_deployment(gpu, pvc="models"), triton_service(gpu)]) == []


def test_core_validation_catches_a_wrong_field() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the [k8s] extra) is not installed")
    broken = triton_service(FACTS)
    broken["spec"]["ports"][0]["port"] = "http"
    broken["spec"]["bogus"] = 1
    assert manifest_problems([broken])
    bad_quantity = triton_deployment(TritonDeployment(model="m", memory="4 GB"), pvc="models")
    assert any("not a quantity" in p for p in manifest_problems([bad_quantity]))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: _container(d).pop("image"), "has no image"),
        (lambda d: _container(d).update(image=""), "has no image"),
        (lambda d: _container(d)["ports"][0].update(containerPort=70000), "containerPort 70000 is not a port"),
        (lambda d: _container(d)["readinessProbe"]["httpGet"].update(port=0), "readinessProbe.httpGet.port 0"),
    ],
)
def test_a_deployment_without_image_or_with_a_bad_port_is_refused(change: Any, problem: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the [k8s] extra) is not installed")
    doc = triton_deployment(FACTS, pvc="models")
    assert manifest_problems([doc]) == []
    change(doc)
    found = manifest_problems([doc])
    assert any(problem in p for p in found), found


def test_a_service_port_out_of_range_is_refused() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (the [k8s] extra) is not installed")
    service = triton_service(FACTS)
    service["spec"]["ports"][0]["port"] = 65536
    assert any("port 65536 is not a port" in p for p in manifest_problems([service]))


def test_deployment_probes_triton_health_and_loads_the_three_models() -> None:
    container = _container(triton_deployment(FACTS, pvc="models"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    shell = shlex.split(container["command"][2])
    assert shell[:4] == ["pip", "install", "--no-cache-dir", "mtlrec==0.1.0"]
    loads = [a.split("=", 1)[1] for a in shell if a.startswith("--load-model=")]
    assert loads == ["mmoe_v2", "mmoe_v2_preprocess", "mmoe_v2_ensemble"]
    assert "--model-repository=/models" in shell
    plain = _container(triton_deployment(TritonDeployment(model="m"), pvc="models"))
    assert plain["command"][0] == "tritonserver"  # nothing to install: an image that has mtlrec


def test_inference_service_uses_the_triton_runtime_and_follows_kserve_rules() -> None:
    isvc = kserve_inference_service(TritonDeployment(model="mmoe", gpu=True), "s3://bucket/model_repository")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model["command"] == ["tritonserver"]
    assert "--model-repository=/mnt/models" in model["args"] and "--http-port=8080" in model["args"]
    assert manifest_problems([isvc]) == []
    assert isvc["metadata"]["name"] == k8s_name("mtlrec-mmoe") == "mtlrec-mmoe"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["metadata"].update(name="Mtlrec_MMoE"), "must match"),
        (lambda d: d["spec"]["predictor"]["model"].update(storageUri="ftp://x"), "storageUri"),
        (lambda d: d["spec"]["predictor"]["model"].update(modelFormat={"name": "sklearn"}), "not served by Triton"),
        (lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="v3"), "protocolVersion"),
        (lambda d: d["spec"]["predictor"].update(modelz={}), "unknown field spec.predictor.modelz"),
        (lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"), "apiVersion"),
    ],
)
def test_inference_service_rules_refuse_a_broken_field(change: Any, problem: str) -> None:
    isvc = kserve_inference_service(FACTS, "gs://bucket/repo")
    change(isvc)
    assert any(problem in p for p in inference_service_problems(isvc)), inference_service_problems(isvc)


def test_deploy_cli_writes_valid_yaml_and_checks_the_repository(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "k8s.yaml"
    result = runner.invoke(app, ["deploy", "k8s", "--model", "mmoe", "--pvc", "models", "--out", str(out)])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    isvc = tmp_path / "isvc.yaml"
    args = ["deploy", "kserve", "--model", "mmoe", "--storage-uri", "pvc://models/repo", "--out", str(isvc)]
    assert runner.invoke(app, [*args, "--pip-install", "none"]).exit_code == 0
    assert yaml.safe_load(isvc.read_text())["spec"]["predictor"]["model"]["command"] == ["tritonserver"]
    missing = runner.invoke(app, [*args, "--repo", str(tmp_path)])
    assert missing.exit_code == 2 and "not in" in missing.output
