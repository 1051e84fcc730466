"""Capture names and relative keys that come from outside (S3 keys, folder listings), checked
before they become paths.

Input: a string from a listing. Output: the same string when it is safe to use as one path
component (a capture name) or as a relative path below a capture folder; otherwise
:class:`UnsafeNameError` with a one-line reason. Nothing from a key may escape its folder:
``..``, absolute paths, backslashes, control characters and odd characters are refused.
"""

from __future__ import annotations

import logging
import re

from capture3d.errors import Capture3dError

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._ +-]{0,254}")


class UnsafeNameError(Capture3dError):
    """A capture name or key that cannot be used as a path."""


def check_capture_name(name: str) -> str:
    """``name`` if it is a safe capture folder name (letters, digits, ``._-``, not starting with a
    dot or dash, at most 128 characters), else :class:`UnsafeNameError`."""
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise UnsafeNameError(
            f"capture name {name!r} refused: use letters, digits, '.', '_', '-' (not first), at most 128 characters"
        )
    return name


def check_relative_key(key: str) -> str:
    """``key`` if it is a safe relative path below a capture (``/``-separated parts, each a plain
    file or folder name; no ``..``, no leading ``/``, no backslash), else :class:`UnsafeNameError`."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(not _PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise UnsafeNameError(f"key {key!r} refused: not a plain relative path")
    return key
