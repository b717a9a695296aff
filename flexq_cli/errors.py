"""Errors a user can act on. The CLI prints ``message`` and ``hint`` on one line each and exits non-zero."""

from __future__ import annotations


class FlexQError(Exception):
    """A problem with the user's input or environment, with a hint on what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ModelNotFound(FlexQError):
    pass


class UnsupportedModel(FlexQError):
    pass


class ArtifactError(FlexQError):
    """A missing, corrupted, mismatched or wrong-stage artifact."""


class NonFiniteError(FlexQError):
    """NaN or Inf in weights or activations."""


class BackendUnavailable(FlexQError):
    """A requested execution backend (CuPy, a GPU) is not usable here."""
