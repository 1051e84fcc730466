"""Prefect flow ``train_fcgf``: train FCGF, then compare it with FPFH on scan captures with ground truth.

Inputs: the model output folder, optionally a folder of scan captures (each with ground truth)
and the names to evaluate on (default: every sub-folder), and the params (file + overrides).
Outputs: ``<model_out>/`` from the ``train_fcgf`` step and, per capture,
``<out_root>/<name>/evaluate_features/`` from the ``evaluate_features`` step -- the catalog's
``fcgf`` pipeline, run by the same stage tasks as the batch -- plus the training metrics and
one status per evaluated capture. Evaluations run concurrently; one failing capture does not
stop the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow

from capture3d.config import load_params
from capture3d.flows.stage_tasks import stage_task
from capture3d.flows.status import CaptureStatus

logger = logging.getLogger(__name__)

KIND = "fcgf"


@flow(name="train_fcgf", validate_parameters=False)
def train_fcgf(
    model_out: Path,
    captures_root: Path | None = None,
    out_root: Path | None = None,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], list[CaptureStatus]]:
    """Train FCGF into ``model_out``, then evaluate it on each capture; (training metrics, statuses)."""
    params = load_params(params_file, overrides)
    model_out = Path(model_out)
    stage_task("train_fcgf")(KIND, "train_fcgf", model_out.name, model_out, model_out, params, False, model_out)
    trained = json.loads((model_out / "metrics.json").read_text())
    if captures_root is None:
        return trained, []
    root = Path(captures_root)
    results = Path(out_root) if out_root is not None else root
    todo = list(names) if names else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # the evaluation reads the model just trained: register_scans.fcgf.checkpoint points at it
    params = load_params(params_file, [*overrides, f"register_scans.fcgf.checkpoint={model_out / 'model.pt'}"])
    evaluate = stage_task("evaluate_features")
    futures = {
        name: evaluate.submit(KIND, "evaluate_features", name, root / name, results / name, params) for name in todo
    }
    return trained, [CaptureStatus.from_futures(name, [("evaluate_features", futures[name])]) for name in todo]
