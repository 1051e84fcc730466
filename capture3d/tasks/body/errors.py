"""The error raised for body-model and prior files that cannot be used.

Inputs: none. Outputs: :class:`BodyModelError`, a one-line user-facing error naming the file.
"""

from __future__ import annotations

import logging

from capture3d.errors import Capture3dError

logger = logging.getLogger(__name__)


class BodyModelError(Capture3dError):
    """A body model or prior file that is missing, malformed or refused; the message names it."""
