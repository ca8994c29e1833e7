"""``mtlrec deploy kserve`` and ``mtlrec deploy k8s``: Kubernetes manifests serving a repository with Triton."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mtlrec.cli.common import console, err_console, user_errors

app = typer.Typer(help="Write Kubernetes manifests that serve an exported model with Triton (KServe or plain).")

ModelOpt = Annotated[str, typer.Option("--model", help="the model name in the repository (e.g. mmoe)")]
OutOpt = Annotated[Path, typer.Option("--out", help="the YAML file to write ('-' prints it)")]
RepoOpt = Annotated[
    Path | None,
    typer.Option("--repo", help="the exported repository: checks the model is there and reads its mtlrec version"),
]
NameOpt = Annotated[str | None, typer.Option("--name", help="Kubernetes object name (default: mtlrec-MODEL)")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", help="namespace (default: kubectl's)")]
GpuOpt = Annotated[bool, typer.Option("--gpu", help="request one NVIDIA GPU (export with --instance-kind gpu|auto)")]
CpuOpt = Annotated[str, typer.Option("--cpu", help="CPU request of the Triton container")]
MemoryOpt = Annotated[str, typer.Option("--memory", help="memory request and limit of the Triton container")]
ReplicasOpt = Annotated[int, typer.Option("--replicas", min=1, help="replicas (KServe: minimum replicas)")]
TagOpt = Annotated[str, typer.Option("--triton-tag", help="tag of nvcr.io/nvidia/tritonserver")]
PipOpt = Annotated[
    str | None,
    typer.Option(
        "--pip-install",
        help="what the container pip-installs before Triton starts (the preprocess model imports mtlrec); "
        "default: mtlrec==<the exporting version>; 'none' for an image that already has it",
    ),
]
K8sVersionOpt = Annotated[str, typer.Option("--k8s-version", help="Kubernetes version to validate against")]


def _facts(
    model: str,
    repo: Path | None,
    name: str | None,
    namespace: str | None,
    gpu: bool,
    cpu: str,
    memory: str,
    replicas: int,
    tag: str,
    pip_install: str | None,
) -> Any:
    from mtlrec import __version__
    from mtlrec.deploy.manifests import TritonDeployment
    from mtlrec.errors import CheckpointError

    version: str | None = __version__
    if repo is not None:
        versions = sorted(int(p.name) for p in (repo / model).glob("[0-9]*") if p.is_dir() and p.name.isdigit())
        if not versions:
            raise CheckpointError(f"model `{model}` is not in {repo}", hint="export it first: mtlrec export RUN_DIR")
        manifest = repo / model / str(versions[-1]) / "manifest.json"
        if manifest.is_file():
            version = json.loads(manifest.read_text()).get("versions", {}).get("mtlrec") or version
        missing = [m for m in (f"{model}_preprocess", f"{model}_ensemble") if not (repo / m).is_dir()]
        if missing:
            raise CheckpointError(f"{repo} lacks {', '.join(missing)}", hint="export the run again (mtlrec export)")
    if pip_install is not None and pip_install.lower() == "none":
        return TritonDeployment(model, name, namespace, gpu=gpu, cpu=cpu, memory=memory, replicas=replicas, tag=tag)
    return TritonDeployment(
        model,
        name,
        namespace,
        gpu=gpu,
        cpu=cpu,
        memory=memory,
        replicas=replicas,
        tag=tag,
        mtlrec_version=version,
        pip_install=pip_install,
    )


def _write(docs: list[dict[str, Any]], out: Path, k8s_version: str) -> None:
    from mtlrec.deploy.manifests import to_yaml
    from mtlrec.deploy.validate import ManifestError, check_manifests, inference_service_problems

    try:
        check_manifests(docs, k8s_version)
    except ManifestError as err:
        if "not installed" not in err.message:
            raise
        # Without the [k8s] extra only the InferenceService rules can be checked.
        problems = [p for d in docs if d.get("kind") == "InferenceService" for p in inference_service_problems(d)]
        if problems:
            raise ManifestError("invalid manifest: " + "; ".join(problems)) from None
        err_console.print(f"[yellow]warning:[/] {err.message}; {err.hint}", highlight=False)
    text = to_yaml(docs)
    if str(out) == "-":
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    kinds = ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in docs)
    console.print(f"{kinds} -> {out}  (apply: kubectl apply -f {out})", highlight=False, soft_wrap=True)


@app.command("kserve")
def kserve_cmd(
    model: ModelOpt,
    storage_uri: Annotated[
        str, typer.Option("--storage-uri", help="where the repository is: s3://, gs://, pvc://CLAIM/PATH, https://")
    ],
    out: OutOpt,
    repo: RepoOpt = None,
    name: NameOpt = None,
    namespace: NamespaceOpt = None,
    gpu: GpuOpt = False,
    cpu: CpuOpt = "2",
    memory: MemoryOpt = "4Gi",
    replicas: ReplicasOpt = 1,
    triton_tag: TagOpt = "25.01-py3",
    pip_install: PipOpt = None,
    k8s_version: K8sVersionOpt = "1.30.0",
) -> None:
    """Write a KServe InferenceService serving MODEL of the repository at STORAGE_URI with the Triton runtime."""
    from mtlrec.deploy.manifests import kserve_inference_service

    with user_errors():
        facts = _facts(model, repo, name, namespace, gpu, cpu, memory, replicas, triton_tag, pip_install)
        _write([kserve_inference_service(facts, storage_uri)], out, k8s_version)


@app.command("k8s")
def k8s_cmd(
    model: ModelOpt,
    out: OutOpt,
    pvc: Annotated[
        str, typer.Option("--pvc", help="PersistentVolumeClaim holding the repository (mounted read-only)")
    ] = "mtlrec-model-repository",
    sub_path: Annotated[str | None, typer.Option("--sub-path", help="the repository's folder in the volume")] = None,
    repo: RepoOpt = None,
    name: NameOpt = None,
    namespace: NamespaceOpt = None,
    gpu: GpuOpt = False,
    cpu: CpuOpt = "2",
    memory: MemoryOpt = "4Gi",
    replicas: ReplicasOpt = 1,
    triton_tag: TagOpt = "25.01-py3",
    pip_install: PipOpt = None,
    k8s_version: K8sVersionOpt = "1.30.0",
) -> None:
    """Write a Deployment (official Triton image, repository mounted, health probes) and its Service."""
    from mtlrec.deploy.manifests import triton_deployment, triton_service

    with user_errors():
        facts = _facts(model, repo, name, namespace, gpu, cpu, memory, replicas, triton_tag, pip_install)
        _write([triton_deployment(facts, pvc, sub_path), triton_service(facts)], out, k8s_version)
