"""The only writer of a Triton model repository: adds one version of several models, atomically.

Layout written for every model (see ``model_repository/README.md``)::

    <repo>/<model>/config.pbtxt          rendered from a ModelConfig message (triton_config.render)
    <repo>/<model>/<version>/<files>     model.onnx / model.pt / model.py, plus schema, preprocessor, manifest

How a write stays safe:

* a new version is added beside the existing ones (default: one more than the highest version of any model
  written, so the models of one export share a version number); an existing version is never touched, and asking
  for one is an error;
* an existing model keeps its name only if the new config has the same platform, inputs and outputs (one
  ``config.pbtxt`` serves all versions of a model);
* everything is first written into a staging directory beside the repository and validated there
  (:func:`~mtlrec.export.repo_validate.validate_repository`); only then are the version directories renamed into
  place, then the configs replaced (``os.replace``). Any failure removes the staging directory and undoes the renames
  done so far, so the repository is left byte for byte as it was.

Example:
    >>> import tempfile
    >>> repo = Path(tempfile.mkdtemp()) / "model_repository"
    >>> next_version(repo, ["mmoe"])
    1
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlrec.errors import ExportError
from mtlrec.export.repo_validate import validate_repository
from mtlrec.export.triton_config import ModelConfig, parse, render

CONFIG_FILE = "config.pbtxt"
FileSource = Path | str | bytes


@dataclass
class ModelFiles:
    """One model to write: its config and the files of its new version directory.

    Attributes:
        config: the model's ``ModelConfig`` (its ``name`` is the directory name).
        files: file name inside ``<model>/<version>/`` -> a file to copy (Path), or text / bytes to write.
    """

    config: ModelConfig
    files: dict[str, FileSource] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The model's name (its directory)."""
        return str(self.config.name)


@dataclass
class RepositoryWrite:
    """What :func:`write_model_repository` added."""

    repo: Path
    version: int
    models: list[str]

    def version_dir(self, model: str) -> Path:
        """The new version directory of ``model``."""
        return self.repo / model / str(self.version)


def existing_versions(repo: Path, model: str) -> list[int]:
    """The numeric version directories of ``model`` in ``repo``, sorted (empty when the model is absent)."""
    root = repo / model
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repo: Path, models: list[str]) -> int:
    """One more than the highest existing version of any of ``models`` (1 for a new repository)."""
    return max((v for m in models for v in existing_versions(repo, m)), default=0) + 1


def _signature(cfg: Any) -> tuple[Any, ...]:
    """What every version of a model must agree on: platform/backend, batching, input and output tensors."""

    def tensors(items: Any) -> list[tuple[Any, ...]]:
        return [
            (t.name, t.data_type, list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None) for t in items
        ]

    return (cfg.platform, cfg.backend, cfg.max_batch_size > 0, tensors(cfg.input), tensors(cfg.output))


def check_writable(repo: Path, configs: list[ModelConfig], version: int | None = None) -> int:
    """Check that a version of the models with ``configs`` can be added to ``repo``; return that version.

    Called before any expensive work (exporting) and again by :func:`write_model_repository`.

    Args:
        repo: the repository root (it may not exist yet).
        configs: the configs of the models to write.
        version: the version to add; None = :func:`next_version`.

    Raises:
        ExportError: no model, a name twice, a version below 1 or already present, or a config incompatible with
            the model's existing versions.
    """
    names = [str(c.name) for c in configs]
    if not names:
        raise ExportError("nothing to write: no model given")
    if len(set(names)) != len(names):
        raise ExportError(f"model names given twice: {names}")
    version = next_version(repo, names) if version is None else version
    if version < 1:
        raise ExportError(f"version {version} is not a positive integer", hint="versions start at 1")
    taken = [n for n in names if (repo / n / str(version)).exists()]
    if taken:
        raise ExportError(
            f"version {version} of {', '.join(taken)} already exists in {repo}; existing versions are never replaced",
            hint=f"omit --version to add version {next_version(repo, names)}",
        )
    for config in configs:
        _check_compatible(repo, config)
    return version


def _check_compatible(repo: Path, config: ModelConfig) -> None:
    name = str(config.name)
    path = repo / name / CONFIG_FILE
    if not path.is_file():
        return
    try:
        existing = parse(path.read_text())
    except Exception as err:
        raise ExportError(
            f"{path} does not parse ({err}); its versions cannot be extended",
            hint="fix or remove that model directory, or export under another --name",
        ) from None
    if _signature(existing) != _signature(config):
        raise ExportError(
            f"model `{name}` in {repo} has another platform, batching or inputs/outputs than this export; "
            "Triton serves all versions of a model with one config",
            hint="export under another --name, or into another --repo",
        )


def _write_files(directory: Path, files: dict[str, FileSource]) -> None:
    for name, source in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ExportError(f"file name `{name}` is not a plain file name")
        target = directory / name
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        elif isinstance(source, bytes):
            target.write_bytes(source)
        else:
            target.write_text(source)


def _stage(staging: Path, models: list[ModelFiles], version: int) -> None:
    for model in models:
        version_dir = staging / model.name / str(version)
        version_dir.mkdir(parents=True)
        _write_files(version_dir, model.files)
        (staging / model.name / CONFIG_FILE).write_text(render(model.config))


def _commit(repo: Path, staging: Path, models: list[ModelFiles], version: int) -> None:
    """Move the staged models into ``repo``: version directories first, configs last; undo everything on failure."""
    undo: list[Callable[[], None]] = []
    try:
        if not repo.exists():
            repo.mkdir(parents=True)
            undo.append(repo.rmdir)
        replace_config = []
        for model in models:
            target = repo / model.name
            if target.exists():
                (staging / model.name / str(version)).rename(target / str(version))
                undo.append(functools.partial(shutil.rmtree, target / str(version)))
                replace_config.append(model.name)
            else:
                (staging / model.name).rename(target)
                undo.append(functools.partial(shutil.rmtree, target))
        for name in replace_config:
            current = repo / name / CONFIG_FILE
            backup = staging / f"{name}.{CONFIG_FILE}.old"
            if current.is_file():
                shutil.copyfile(current, backup)
                os.replace(staging / name / CONFIG_FILE, current)
                undo.append(functools.partial(os.replace, backup, current))
            else:  # a model directory without a config: the new one is simply added
                os.replace(staging / name / CONFIG_FILE, current)
                undo.append(current.unlink)
    except BaseException:
        for action in reversed(undo):
            try:
                action()
            except OSError:  # best effort: keep undoing the rest
                continue
        raise


def write_model_repository(
    repo: Path, models: list[ModelFiles], *, version: int | None = None, validate: bool = True
) -> RepositoryWrite:
    """Add one version of ``models`` to the repository at ``repo`` (created when missing), atomically.

    Args:
        repo: the repository root.
        models: the models to write, in dependency order (an ensemble after its steps).
        version: the version number to add; None = :func:`next_version`.
        validate: run the static validator on the staged models before anything enters ``repo``.

    Returns:
        The repository, the version written and the model names.

    Raises:
        ExportError: the version exists already, a model's config is incompatible with its existing versions, or
            the staged models are invalid (every problem listed).
    """
    version = check_writable(repo, [m.config for m in models], version)
    parent = repo.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.staging-", dir=parent))
    try:
        _stage(staging, models, version)
        if validate:
            problems = validate_repository(staging)
            if problems:
                raise ExportError(
                    "the exported models are not a valid Triton repository:\n  " + "\n  ".join(problems),
                    hint="this is a bug in the exporter; please report it with this message",
                )
        _commit(repo, staging, models, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RepositoryWrite(repo, version, [m.name for m in models])
