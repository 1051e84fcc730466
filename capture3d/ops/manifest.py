"""Provenance of a processed capture: the manifest, and the keys that decide whether work is current.

Inputs: a capture's input hash, the params sections its stages read, the code version, what the
stages returned and where the artifacts went. Outputs: ``manifest.json`` (written atomically) with
code version, params hash, input hashes, DVC output hash and remote, times; :func:`work_key`, the
one string that must match for finished work to be reused (inputs, params and code alike).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from capture3d.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def code_version() -> str:
    """``<package version>+src<hash>``: SHA-256 of every ``capture3d/**/*.py`` file (path and
    content). Any code change makes finished work stale; a commit that touches only docs, tests
    or benchmarks does not. :func:`git_commit` is recorded beside it for provenance."""
    try:
        version = metadata.version("capture3d")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{version}+src{digest.hexdigest()[:12]}"


def git_commit() -> str:
    """The commit of the checkout the code runs from (``.dirty`` with uncommitted changes to the
    package), or "" when it is not a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "capture3d"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}{'.dirty' if dirty else ''}"


def params_hash(params: Mapping[str, Any], sections: Iterable[str]) -> str:
    """SHA-256 of the named params sections (canonical JSON): what the capture's stages read."""
    chosen = {name: params.get(name) for name in sorted(sections)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()


def work_key(input_hash: str, params_digest: str, code: str) -> str:
    """The key finished work is stored under: it changes when inputs, params or code do."""
    return hashlib.sha256(f"{input_hash}\n{params_digest}\n{code}".encode()).hexdigest()[:32]


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it is missing or unreadable (a torn write)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


FINISHED = ("ok", "partial")  # statuses of finished work; partial: some result could not be verified


def finished_status(metrics: Mapping[str, Any]) -> str:
    """ "partial" when a stage flagged part of its result as unverified (``metrics["partial"]``), else "ok"."""
    return "partial" if metrics.get("partial") else "ok"


def is_current(manifest: Mapping[str, Any] | None, key: str) -> bool:
    """Whether ``manifest`` records finished work (ok or partial) under ``key``."""
    return (
        bool(manifest)
        and manifest.get("status") in FINISHED
        and manifest.get("work_key") == key
        and manifest.get("manifest_version") == MANIFEST_VERSION
    )
