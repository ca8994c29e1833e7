"""Deployment to Kubernetes: Triton serving an exported repository (KServe InferenceService or plain Deployment)."""

from mtlrec.deploy.manifests import (
    TritonDeployment,
    kserve_inference_service,
    to_yaml,
    triton_deployment,
    triton_service,
)
from mtlrec.deploy.validate import check_manifests, manifest_problems

__all__ = [
    "TritonDeployment",
    "check_manifests",
    "kserve_inference_service",
    "manifest_problems",
    "to_yaml",
    "triton_deployment",
    "triton_service",
]
