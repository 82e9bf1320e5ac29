"""The project's few exception types.  Messages say what to fix.

The CLI turns any ``RecsysError`` into a one-line message and a non-zero exit; the HTTP layer
maps each to a JSON error with a stable ``code`` and an HTTP status.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class; ``code`` is the stable machine-readable error code used by the HTTP API."""

    code = "recsys_error"
    http_status = 500


class ConfigError(RecsysError):
    """A setting is unknown or has a bad value."""

    code = "bad_config"
    http_status = 500


class DataValidationError(RecsysError):
    """Input data is malformed: names the file, the row and the column where possible."""

    code = "invalid_data"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        where = ", ".join(
            part
            for part in (
                f"file {path}" if path else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.column = path, row, column


class NotFoundError(RecsysError):
    """A user, item, model or file that was asked for does not exist."""

    code = "not_found"
    http_status = 404


class ModelNotReadyError(RecsysError):
    """No usable model: not trained, not registered, or failed to load."""

    code = "model_not_ready"
    http_status = 503


class TrainingError(RecsysError):
    """Training cannot proceed (empty or one-class data, a bad device request, ...)."""

    code = "training_error"
    http_status = 500


class EvaluationError(RecsysError):
    """Nothing can be evaluated: no held-out user with a positive, no replayable list."""

    code = "nothing_to_evaluate"
    http_status = 409


class MissingDependencyError(RecsysError, ImportError):
    """A heavy library a step needs cannot be imported (recsys.core.compat names the package)."""

    code = "missing_dependency"
    http_status = 500
