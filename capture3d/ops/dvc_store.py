"""The DVC artifact store of a batch work folder: outputs added to DVC and pushed to a remote.

Inputs: the work folder (a DVC project without git, created on first use), the remote URL
(``s3://bucket/path`` through dvc-s3, or a local folder) and an S3 endpoint. Outputs: a ``.dvc``
file per pushed output and the content hash (``md5`` of the directory listing) that names it in
the remote. Every DVC operation runs under one file lock, so concurrent batch runs (threads or
processes) never interleave inside the DVC project.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from capture3d.errors import Capture3dError
from capture3d.ops.locks import file_lock

logger = logging.getLogger(__name__)

REMOTE_NAME = "artifacts"
LOCK_NAME = ".capture3d-dvc.lock"


class StoreError(Capture3dError):
    """DVC could not record or push an output."""


@dataclass(frozen=True)
class StoredOutput:
    """Where one output went: its ``.dvc`` file, content hash, file count and size."""

    path: str
    dvcfile: str
    md5: str
    nfiles: int
    size: int
    remote: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dvcfile": self.dvcfile,
            "md5": self.md5,
            "nfiles": self.nfiles,
            "size": self.size,
            "remote": self.remote,
        }


def ensure_store(root: Path, remote_url: str, endpoint_url: str = "") -> None:
    """Make ``root`` a DVC project (no git) whose default remote is ``remote_url``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / LOCK_NAME):
        if not (root / ".dvc").is_dir():
            _dvc(root, ["init", "--no-scm", "--quiet"])
            logger.info("initialised a DVC store in %s", root)
        _dvc(root, ["remote", "add", "--force", "--default", REMOTE_NAME, remote_url])
        if endpoint_url and remote_url.startswith("s3://"):
            _dvc(root, ["remote", "modify", REMOTE_NAME, "endpointurl", endpoint_url])


def push_outputs(root: Path, outputs: Sequence[Path], remote_url: str) -> list[StoredOutput]:
    """``dvc add`` each output folder (below ``root``) and ``dvc push`` it to the store's remote.
    DVC runs as a subprocess in ``root`` (its API resolves paths against the process's working
    folder, which threads share)."""
    root = Path(root)
    rel = [str(Path(p).resolve().relative_to(root.resolve())) for p in outputs]
    with file_lock(root / LOCK_NAME):
        _dvc(root, ["add", "--quiet", *rel])
        _dvc(root, ["push", "--quiet", "--remote", REMOTE_NAME, *[f"{r}.dvc" for r in rel]])
    stored = []
    for r in rel:
        out = (yaml.safe_load((root / f"{r}.dvc").read_text()) or {}).get("outs", [{}])[0]
        stored.append(
            StoredOutput(
                r,
                f"{r}.dvc",
                str(out.get("md5", "")),
                int(out.get("nfiles", 0) or 0),
                int(out.get("size", 0) or 0),
                remote_url,
            )
        )
    logger.info("pushed %s to %s", ", ".join(rel), REMOTE_NAME)
    return stored


def _dvc(root: Path, args: Sequence[str]) -> None:
    """Run ``dvc ARGS`` in ``root``; :class:`StoreError` with DVC's last message line on failure."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        raise StoreError(f"dvc {args[0]} failed: {lines[-1] if lines else proc.returncode}")
