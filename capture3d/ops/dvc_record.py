"""Record what a flow computed in the DVC project, so ``dvc status`` and ``dvc repro`` agree with it.

Input: the project folder, where the flow read captures and wrote results, the capture kind and
the captures that finished. Output: ``dvc commit --force`` of the matching stage instances
(``sfm@<name>`` ...: the kind's per-capture steps from :mod:`capture3d.catalog`), which hashes the
outputs into the cache and writes ``dvc.lock``. Runs only when the paths are the ones
``dvc.yaml`` uses and the capture is listed in params.yaml.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from capture3d.catalog import pipeline

logger = logging.getLogger(__name__)

RESULTS_DIR = Path("results")


def dvc_targets(repo: Path, captures_root: Path, out_root: Path, names: Sequence[str], kind: str) -> list[str]:
    """Stage instances of ``dvc.yaml`` that correspond to these captures, or [] if paths differ."""
    repo = Path(repo).resolve()
    spec = pipeline(kind)
    if not (repo / "dvc.yaml").is_file() or not (repo / ".dvc").is_dir():
        return []
    if Path(captures_root).resolve() != repo / spec.captures_dir or Path(out_root).resolve() != repo / RESULTS_DIR:
        logger.info("outputs outside the DVC layout (%s, %s): not recorded", spec.captures_dir, RESULTS_DIR)
        return []
    params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    listed = set(params.get(spec.captures_key) or [])
    skipped = [n for n in names if n not in listed]
    if skipped:
        logger.info(
            "captures not listed in params.yaml '%s', not recorded in DVC: %s", spec.captures_key, ", ".join(skipped)
        )
    return [f"{step.name}@{name}" for name in names if name in listed for step in spec.capture_steps]


def record_stages(repo: Path, targets: Sequence[str]) -> None:
    """``dvc commit --force`` the given stages; raises ``RuntimeError`` with DVC's message on failure."""
    if not targets:
        return
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *targets]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
        raise RuntimeError(f"dvc commit failed: {last}")
    logger.info("recorded in DVC: %s", ", ".join(targets))
