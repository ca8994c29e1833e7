"""The project's exception types.

Every error a user can cause carries a message that names the thing that is wrong and a hint that says how to fix
it. The CLI prints both on one or two lines and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MtlrecError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")
        self.message = message
        self.hint = hint


class ConfigError(MtlrecError):
    """A config file or value is invalid (unknown key, wrong type, bad value)."""


class SchemaError(MtlrecError):
    """A feature schema is inconsistent, or data does not match it."""


class LabelLeakageError(SchemaError):
    """A label column is also listed as an input feature."""


class DataError(MtlrecError):
    """Input data is missing, empty or malformed."""


class ModelError(MtlrecError):
    """A model cannot be built for this schema (unknown name, unsupported task layout)."""


class CheckpointError(MtlrecError):
    """A checkpoint directory is missing files or does not match the data it is used with."""


class ExportError(MtlrecError):
    """A model cannot be exported, or an exported artifact does not match its spec or the eager model."""


class ShapeMismatch(ExportError):  # noqa: N818  (name fixed by the export API)
    """An exported artifact returns an output whose shape differs from the spec."""


class ToleranceExceeded(ExportError):  # noqa: N818  (name fixed by the export API)
    """An exported artifact's outputs differ from eager PyTorch by more than the spec's tolerance."""
