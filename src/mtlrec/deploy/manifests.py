"""Kubernetes manifests that serve an exported model repository with Triton: built as data, never from templates.

Two targets, one set of facts (:class:`TritonDeployment`):

* :func:`kserve_inference_service`: a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``) whose predictor
  uses the Triton runtime (``modelFormat: triton``, Open Inference Protocol v2) on the repository at a storage URI
  (``s3://``, ``gs://``, ``pvc://``, ...), which KServe's storage initializer copies to ``/mnt/models``;
* :func:`triton_deployment` + :func:`triton_service`: a plain ``apps/v1`` Deployment running the official Triton
  image with the repository mounted from a PersistentVolumeClaim at ``/models``, liveness/readiness/startup
  probes on Triton's health routes (``/v2/health/live``, ``/v2/health/ready``), resource requests (and a GPU
  limit with ``gpu``), a memory-backed ``/dev/shm`` for the Python backend, and a ClusterIP Service on the HTTP
  (8000), gRPC (8001) and metrics (8002) ports.

Triton loads only the model's three entries (``NAME``, ``NAME_preprocess``, ``NAME_ensemble``) with
``--model-control-mode=explicit``. The preprocess model runs the run's own transform, so it imports ``mtlrec``:
by default the container installs the mtlrec version that exported the repository before it starts Triton; with
an image that already has it, pass ``pip_install=None``. Every command line is a list joined with
:func:`shlex.join`, never pasted into a string.

Example::

    facts = TritonDeployment(model="mmoe", mtlrec_version="0.1.0")
    docs = [triton_deployment(facts, pvc="models"), triton_service(facts)]
    print(to_yaml(docs))
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_TRITON_TAG = "25.01-py3"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
# KServe's Triton runtime listens on its own ports: 8080 (HTTP) and 9000 (gRPC).
KSERVE_HTTP_PORT, KSERVE_GRPC_PORT = 8080, 9000
KSERVE_MODEL_DIR = "/mnt/models"
MODEL_DIR = "/models"
GPU_RESOURCE = "nvidia.com/gpu"


def k8s_name(text: str) -> str:
    """``text`` as a DNS-1035 label (lower case, ``-`` for anything else, starting with a letter, 63 chars max)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class TritonDeployment:
    """What every manifest needs to serve one exported model with Triton.

    Attributes:
        model: the model name in the repository (``mmoe``); Triton also loads ``<model>_preprocess`` and
            ``<model>_ensemble``.
        name: the Kubernetes object name (default: ``mtlrec-<model>`` as a DNS label).
        namespace: None leaves it to ``kubectl -n``.
        image: the Triton image (the official NGC image by default) and tag.
        gpu: request one NVIDIA GPU (export with ``--instance-kind gpu`` or ``auto``).
        cpu, memory: resource requests (and memory limit) of the Triton container.
        replicas: Deployment replicas (KServe: the minimum replicas).
        mtlrec_version: installs ``mtlrec==<version>`` before Triton starts (the preprocess model imports it).
        pip_install: the pip requirement to install instead (e.g. a wheel URL); None with ``mtlrec_version``
            None installs nothing (an image that has mtlrec).
        models: the Triton models to load; default: the model, its preprocess model and its ensemble.
        extra_args: more ``tritonserver`` flags.
    """

    model: str
    name: str | None = None
    namespace: str | None = None
    image: str = DEFAULT_TRITON_IMAGE
    tag: str = DEFAULT_TRITON_TAG
    gpu: bool = False
    cpu: str = "2"
    memory: str = "4Gi"
    replicas: int = 1
    mtlrec_version: str | None = None
    pip_install: str | None = None
    models: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def object_name(self) -> str:
        """The Kubernetes name of every object."""
        return k8s_name(self.name or f"mtlrec-{self.model}")

    @property
    def triton_models(self) -> tuple[str, ...]:
        """The models Triton loads."""
        return self.models or (self.model, f"{self.model}_preprocess", f"{self.model}_ensemble")

    @property
    def requirement(self) -> str | None:
        """What pip installs in the container before Triton starts (None: nothing)."""
        if self.pip_install:
            return self.pip_install
        return f"mtlrec=={self.mtlrec_version}" if self.mtlrec_version else None

    def labels(self) -> dict[str, str]:
        """Labels of every object (and the Deployment's selector)."""
        return {
            "app.kubernetes.io/name": self.object_name,
            "app.kubernetes.io/component": "triton",
            "app.kubernetes.io/part-of": "mtlrec",
            "mtlrec/model": k8s_name(self.model),
        }

    def metadata(self) -> dict[str, Any]:
        """``metadata`` of an object."""
        meta: dict[str, Any] = {"name": self.object_name, "labels": self.labels()}
        if self.namespace:
            meta["namespace"] = self.namespace
        return meta

    def resources(self) -> dict[str, Any]:
        """Requests (CPU, memory) and limits (memory, and one GPU with ``gpu``)."""
        limits: dict[str, str] = {"memory": self.memory}
        if self.gpu:
            limits[GPU_RESOURCE] = "1"
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}

    def tritonserver_args(self, repository: str, http_port: int, grpc_port: int) -> list[str]:
        """The ``tritonserver`` command line."""
        args = [
            "tritonserver",
            f"--model-repository={repository}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={METRICS_PORT}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.triton_models),
            "--strict-readiness=true",
            "--exit-timeout-secs=30",
            *self.extra_args,
        ]
        return args

    def command(self, repository: str, http_port: int, grpc_port: int) -> list[str]:
        """The container command: install mtlrec when asked, then ``exec tritonserver``."""
        server = self.tritonserver_args(repository, http_port, grpc_port)
        requirement = self.requirement
        if requirement is None:
            return server
        install = ["pip", "install", "--no-cache-dir", requirement]
        return ["/bin/bash", "-c", f"{shlex.join(install)} && exec {shlex.join(server)}"]


def _env(facts: TritonDeployment) -> list[dict[str, str]]:
    # One intra-op thread per model instance: Triton runs instances concurrently (and ORT defaults to every core).
    return [{"name": "OMP_NUM_THREADS", "value": "1"}]


def kserve_inference_service(facts: TritonDeployment, storage_uri: str) -> dict[str, Any]:
    """A KServe ``InferenceService`` serving the repository at ``storage_uri`` with the Triton runtime."""
    command = facts.command(KSERVE_MODEL_DIR, KSERVE_HTTP_PORT, KSERVE_GRPC_PORT)
    model: dict[str, Any] = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "storageUri": storage_uri,
        "runtimeVersion": facts.tag,
        "command": command[:2] if command[0] == "/bin/bash" else command[:1],
        "args": command[2:] if command[0] == "/bin/bash" else command[1:],
        "env": _env(facts),
        "resources": facts.resources(),
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": facts.metadata()
        | {"annotations": {"serving.kserve.io/deploymentMode": "RawDeployment", "mtlrec/model": facts.model}},
        "spec": {"predictor": {"minReplicas": facts.replicas, "model": model}},
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def triton_deployment(facts: TritonDeployment, pvc: str, sub_path: str | None = None) -> dict[str, Any]:
    """An ``apps/v1`` Deployment of the official Triton image with the repository mounted from ``pvc``.

    Args:
        facts: the model and its resources.
        pvc: the PersistentVolumeClaim holding the repository (e.g. filled with ``kubectl cp``).
        sub_path: the repository's folder inside the volume (None: the volume's root).
    """
    mount: dict[str, Any] = {"name": "model-repository", "mountPath": MODEL_DIR, "readOnly": True}
    if sub_path:
        mount["subPath"] = sub_path
    container: dict[str, Any] = {
        "name": "triton",
        "image": f"{facts.image}:{facts.tag}",
        "command": facts.command(MODEL_DIR, HTTP_PORT, GRPC_PORT),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "env": _env(facts),
        "resources": facts.resources(),
        # Startup: image pull, pip install and model loading may take minutes; liveness only starts after it.
        "startupProbe": _probe("/v2/health/live", 10, 60),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "volumeMounts": [mount, {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "model-repository", "persistentVolumeClaim": {"claimName": pvc, "readOnly": True}},
            # The Python backend (the preprocess model) exchanges tensors through shared memory; a container's
            # default /dev/shm (64 MiB) is too small for large batches.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
        "terminationGracePeriodSeconds": 45,
    }
    if facts.gpu:
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": facts.metadata(),
        "spec": {
            "replicas": facts.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": facts.object_name}},
            "template": {
                "metadata": {
                    "labels": facts.labels(),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }


def triton_service(facts: TritonDeployment) -> dict[str, Any]:
    """A ClusterIP Service in front of the Deployment's HTTP, gRPC and metrics ports."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": facts.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": facts.object_name},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """The documents as one multi-document YAML text (keys in the order built)."""
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=1000)
