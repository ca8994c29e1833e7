"""Typed, frozen, extra-forbidding configs and YAML loading with errors that name the field.

Example:
    >>> class Opt(StrictModel):
    ...     lr: float = 1e-3
    >>> Opt.model_validate({"lr": 0.1}).lr
    0.1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mtlrec.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config and schema: immutable, and an unknown key is an error, never a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


def describe_validation_error(err: ValidationError, where: str) -> str:
    """Turn pydantic's error list into short lines ``where: field.path: message``."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; unknown keys are refused so that a typo never becomes a default)"
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` as ``model``, raising :class:`ConfigError` with one line per bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            describe_validation_error(err, where),
            hint=f"fix the fields above; the accepted keys are: {', '.join(model.model_fields)}",
        ) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error when the file is missing or not a mapping."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="pass the path of an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})", hint="check indentation and quoting") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_yaml(path: Path, model: type[M]) -> M:
    """Read ``path`` and validate it as ``model``."""
    return validate(model, read_yaml(path), str(path))
