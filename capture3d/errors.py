"""Exceptions that carry a one-line, user-facing message.

The CLI and every stage ``main`` print ``str(error)`` on one line and exit non-zero.
"""

from __future__ import annotations


class Capture3dError(Exception):
    """Base class of errors reported to the user as one line (no traceback)."""

    exit_code = 2


class CaptureError(Capture3dError):
    """A problem with one capture's input or processing. The message names the capture."""

    def __init__(self, capture: str, problem: str) -> None:
        self.capture = capture
        self.problem = problem
        super().__init__(f"capture '{capture}': {problem}")


class SourceError(Capture3dError):
    """A capture source (an inbox folder, an S3 prefix, a folder of captures) that cannot be read."""


class ParamsError(Capture3dError):
    """An unknown, missing or wrongly typed setting in params.yaml or an override."""
