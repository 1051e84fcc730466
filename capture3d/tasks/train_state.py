"""Resumable training state files shared by every fitting loop (FCGF, 3DGS, NeRF).

Inputs: a path, a format tag, an identity string (the settings and seed a state belongs to) and
a payload of tensors, numbers, strings, lists and dicts. Outputs: the file, written atomically
with ``torch.save``; on load (``torch.load(weights_only=True)``: no code can run) the payload,
or None -- with a warning -- when the file is unreadable, of another format, or was made with
other settings, so the caller starts afresh instead of mixing runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from capture3d.atomic import atomic_file

logger = logging.getLogger(__name__)


def save_train_state(path: Path, fmt: str, identity: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` with its format tag and identity to ``path`` atomically."""
    with atomic_file(Path(path)) as tmp:
        torch.save({"format": fmt, "identity": identity, **payload}, tmp)


def load_train_state(path: Path, fmt: str, identity: str) -> dict[str, Any] | None:
    """The saved payload when ``path`` is a state of format ``fmt`` with this ``identity``, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- a torn or foreign file: start afresh
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("ignoring unreadable training state %s (%s)", path, first)
        return None
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        logger.warning("ignoring %s: not a %s state", path, fmt)
        return None
    if saved.get("identity") != identity:
        logger.warning("ignoring training state %s: it was made with other settings or seed", path)
        return None
    return saved
