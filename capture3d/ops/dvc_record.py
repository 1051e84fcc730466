"""Record what a flow computed in the DVC project, so ``dvc status`` and ``dvc repro`` agree with it.

Input: the project folder, where the flow read captures and wrote results, and the captures that
finished. Output: ``dvc commit --force`` of the matching stage instances (``sfm@<name>`` ...),
which hashes the outputs into the cache and writes ``dvc.lock``. Runs only when the paths are
the ones ``dvc.yaml`` uses and the capture is listed in params.yaml.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

RESULTS_DIR = Path("results")


@dataclass(frozen=True)
class BatchLayout:
    """Where a kind of capture lives in the project and which per-capture stages process it."""

    captures_dir: Path          # repo-relative folder of the captures, e.g. data/captures
    captures_key: str           # params.yaml list naming them, e.g. "captures"
    stages: tuple[str, ...]     # per-capture stages of dvc.yaml, in order


PHOTOS = BatchLayout(Path("data/captures"), "captures", ("sfm", "evaluate_sfm", "fit_gaussians", "fit_nerf"))
SCANS = BatchLayout(Path("data/scan_captures"), "scan_captures", ("register_scans", "evaluate_registration"))
BODIES = BatchLayout(Path("data/body_captures"), "body_captures", ("fit_bodies", "evaluate_bodies"))


def dvc_targets(repo: Path, captures_root: Path, out_root: Path, names: Sequence[str], layout: BatchLayout) -> list[str]:
    """Stage instances of ``dvc.yaml`` that correspond to these captures, or [] if paths differ."""
    repo = Path(repo).resolve()
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        return []
    if Path(captures_root).resolve() != repo / layout.captures_dir or Path(out_root).resolve() != repo / RESULTS_DIR:
        logger.info("outputs outside the DVC layout (%s, %s): not recorded", layout.captures_dir, RESULTS_DIR)
        return []
    params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    listed = set(params.get(layout.captures_key) or [])
    skipped = [n for n in names if n not in listed]
    if skipped:
        logger.info("captures not listed in params.yaml '%s', not recorded in DVC: %s", layout.captures_key,
                    ", ".join(skipped))
    return [f"{stage}@{name}" for name in names if name in listed for stage in layout.stages]


def record_stages(repo: Path, targets: Sequence[str]) -> None:
    """``dvc commit --force`` the given stages; raises ``RuntimeError`` with DVC's message on failure."""
    if not targets:
        return
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *targets]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc commit failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    logger.info("recorded in DVC: %s", ", ".join(targets))
