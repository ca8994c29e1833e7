"""Checks of generated manifests before anyone applies them.

Core resources (Deployment, Service, ...) are validated against the Kubernetes OpenAPI schemas of a given version
with ``kubernetes-validate`` in strict mode (unknown fields are errors); the extra ``[k8s]`` installs it. A KServe
``InferenceService`` is not in those schemas, so :func:`inference_service_problems` applies its field rules: the
group/version and kind, the name pattern KServe's admission webhook enforces (``[a-z]([-a-z0-9]*[a-z0-9])?``),
the predictor's model format, protocol, storage URI scheme and replica bounds, the known keys of each object we
write, and resource quantities. The predictor's container fields (command, args, env, resources) are validated by
the core schemas too, inside a Pod, when ``kubernetes-validate`` is installed.

Example::

    problems = manifest_problems(docs)      # [] when every document is valid
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from mtlrec.errors import MtlrecError

DEFAULT_K8S_VERSION = "1.30.0"
KSERVE_API = "serving.kserve.io/v1beta1"
# The InferenceService name rule of KServe's validating webhook (a DNS-1035 label).
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
STORAGE_SCHEMES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
PROTOCOLS = ("v1", "v2", "grpc-v2")
TRITON_FORMATS = ("triton", "onnx", "pytorch", "tensorflow", "tensorrt")
# Keys of the InferenceService objects this project writes (a subset of the CRD; anything else is a typo).
ISVC_KEYS = {"apiVersion", "kind", "metadata", "spec"}
METADATA_KEYS = {"name", "namespace", "labels", "annotations"}
PREDICTOR_KEYS = {"minReplicas", "maxReplicas", "model", "serviceAccountName", "timeout", "nodeSelector", "tolerations"}
MODEL_KEYS = {
    "modelFormat",
    "protocolVersion",
    "storageUri",
    "runtime",
    "runtimeVersion",
    "command",
    "args",
    "env",
    "resources",
    "ports",
    "image",
}


class ManifestError(MtlrecError):
    """A generated manifest breaks a rule of its resource."""


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        raise ManifestError(
            "kubernetes-validate is not installed", hint="pip install 'mtlrec[k8s]' to validate core resources"
        ) from None
    return kubernetes_validate


def core_problems(doc: dict[str, Any], version: str = DEFAULT_K8S_VERSION) -> list[str]:
    """Problems of a core resource under the Kubernetes ``version`` schemas (strict), plus name rules."""
    validator = _kubernetes_validate()
    problems: list[str] = []
    try:
        validator.validate(doc, version, strict=True)
    except validator.ValidationError as err:
        path = "/".join(str(p) for p in getattr(err, "path", []))
        problems.append(f"{doc.get('kind')}: {str(err).splitlines()[0]}" + (f" (at {path})" if path else ""))
    except (validator.SchemaNotFoundError, validator.InvalidSchemaError) as err:
        problems.append(f"{doc.get('kind')}: {err}")
    name = str(doc.get("metadata", {}).get("name", ""))
    if not DNS_LABEL.match(name) or len(name) > 63:
        problems.append(f"{doc.get('kind')}: metadata.name `{name}` is not a DNS-1123 label")
    problems += _quantity_problems(doc, str(doc.get("kind")))
    problems += _server_side_problems(doc)
    return problems


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    pod = spec if doc.get("kind") == "Pod" else ((spec.get("template") or {}).get("spec") or {})
    return [c for c in (pod.get("containers") or []) + (pod.get("initContainers") or []) if isinstance(c, dict)]


def _port_problem(value: Any, where: str) -> list[str]:
    """A port number outside 1..65535 (a named port, a string, is the schema's business)."""
    if isinstance(value, int) and not 1 <= value <= 65535:
        return [f"{where} {value} is not a port (1..65535)"]
    return []


def _server_side_problems(doc: dict[str, Any]) -> list[str]:
    """Rules the API server enforces beyond the OpenAPI schemas: every container names an image; ports in range."""
    kind = str(doc.get("kind"))
    problems: list[str] = []
    for container in _containers(doc):
        name = container.get("name", "?")
        if not str(container.get("image") or "").strip():
            problems.append(f"{kind}: container `{name}` has no image (Kubernetes: Required value)")
        for port in container.get("ports") or []:
            problems += _port_problem(port.get("containerPort"), f"{kind}: container `{name}` containerPort")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for action in ("httpGet", "tcpSocket", "grpc"):
                port = ((container.get(probe) or {}).get(action) or {}).get("port")
                problems += _port_problem(port, f"{kind}: container `{name}` {probe}.{action}.port")
    if kind == "Service":
        for port in (doc.get("spec") or {}).get("ports") or []:
            for key in ("port", "targetPort", "nodePort"):
                problems += _port_problem(port.get(key), f"Service: ports[{port.get('name', '?')}].{key}")
    return problems


def _quantity_problems(value: Any, where: str) -> list[str]:
    """Resource quantities (under any ``resources``) that Kubernetes would refuse."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "resources" and isinstance(item, dict):
                for kind in ("requests", "limits"):
                    for resource, amount in (item.get(kind) or {}).items():
                        if not QUANTITY.match(str(amount)):
                            problems.append(f"{where}: {kind}.{resource} `{amount}` is not a quantity")
            else:
                problems += _quantity_problems(item, where)
    elif isinstance(value, list):
        for item in value:
            problems += _quantity_problems(item, where)
    return problems


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> list[str]:
    return [f"InferenceService: unknown field {where}.{key}" for key in sorted(set(obj) - known)]


def inference_service_problems(doc: dict[str, Any], version: str = DEFAULT_K8S_VERSION) -> list[str]:
    """Problems of a KServe ``InferenceService`` (v1beta1, predictor ``model`` form)."""
    problems = _unknown(doc, ISVC_KEYS, "")
    if doc.get("apiVersion") != KSERVE_API:
        problems.append(f"InferenceService: apiVersion must be {KSERVE_API}, not {doc.get('apiVersion')!r}")
    if doc.get("kind") != "InferenceService":
        problems.append(f"InferenceService: kind is {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    problems += _unknown(meta, METADATA_KEYS, "metadata")
    name = str(meta.get("name", ""))
    if not ISVC_NAME.match(name) or len(name) > 63:
        problems.append(f"InferenceService: name `{name}` must match {ISVC_NAME.pattern} (63 characters at most)")
    if "namespace" in meta and not DNS_LABEL.match(str(meta["namespace"])):
        problems.append(f"InferenceService: namespace `{meta['namespace']}` is not a DNS-1123 label")
    predictor = (doc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, dict):
        return [*problems, "InferenceService: spec.predictor is required"]
    problems += _unknown(doc["spec"], {"predictor", "transformer", "explainer"}, "spec")
    problems += _unknown(predictor, PREDICTOR_KEYS, "spec.predictor")
    for bound in ("minReplicas", "maxReplicas"):
        if bound in predictor and (not isinstance(predictor[bound], int) or predictor[bound] < 0):
            problems.append(f"InferenceService: spec.predictor.{bound} must be a non-negative integer")
    model = predictor.get("model")
    if not isinstance(model, dict):
        return [*problems, "InferenceService: spec.predictor.model is required"]
    problems += _unknown(model, MODEL_KEYS, "spec.predictor.model")
    fmt = (model.get("modelFormat") or {}).get("name")
    if fmt not in TRITON_FORMATS:
        problems.append(f"InferenceService: modelFormat.name {fmt!r} is not served by Triton ({TRITON_FORMATS})")
    if model.get("protocolVersion", "v1") not in PROTOCOLS:
        problems.append(f"InferenceService: protocolVersion {model.get('protocolVersion')!r} is not in {PROTOCOLS}")
    uri = str(model.get("storageUri", ""))
    if not uri.startswith(STORAGE_SCHEMES):
        problems.append(f"InferenceService: storageUri `{uri}` must start with one of {', '.join(STORAGE_SCHEMES)}")
    problems += _quantity_problems(model, "InferenceService")
    # The predictor's container fields follow the core Container schema: check them inside a Pod.
    container = {k: v for k, v in model.items() if k in {"command", "args", "env", "resources", "ports", "image"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name or "probe"},
        "spec": {"containers": [{"name": "kserve-container", "image": "triton", **container}]},
    }
    with contextlib.suppress(ManifestError):  # kubernetes-validate absent: the field rules above still apply
        problems += [p.replace("Pod:", "InferenceService predictor:") for p in core_problems(pod, version)]
    return problems


def manifest_problems(docs: list[dict[str, Any]], version: str = DEFAULT_K8S_VERSION) -> list[str]:
    """Problems of every document (an InferenceService by its rules, anything else by the core schemas)."""
    problems: list[str] = []
    for doc in docs:
        if doc.get("kind") == "InferenceService":
            problems += inference_service_problems(doc, version)
        else:
            problems += core_problems(doc, version)
    return problems


def check_manifests(docs: list[dict[str, Any]], version: str = DEFAULT_K8S_VERSION) -> None:
    """Raise :class:`ManifestError` listing every problem of ``docs``."""
    problems = manifest_problems(docs, version)
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems), hint="this is a bug in the generator")
