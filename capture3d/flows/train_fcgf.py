"""Prefect flow ``train_fcgf``: train FCGF, then compare it with FPFH on scan captures with ground truth.

Inputs: the model output folder, optionally a folder of scan captures (each with ground truth)
and the names to evaluate on (default: every sub-folder), and the params (file + overrides).
Outputs: ``<model_out>/`` from the ``train_fcgf`` stage and, per capture,
``<out_root>/<name>/evaluate_features/`` from the ``evaluate_features`` stage -- the same
``capture3d.stages.*.run`` functions ``dvc repro`` runs -- plus the training metrics and one
status per evaluated capture. Evaluations run concurrently; one failing capture does not stop
the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task

from capture3d.config import load_params
from capture3d.flows.batch import Chain, discover_captures, run_chains
from capture3d.flows.status import CaptureStatus
from capture3d.stages import evaluate_features as evaluate_stage
from capture3d.stages import train_fcgf as train_stage

logger = logging.getLogger(__name__)


@task(name="train_fcgf")
def train_task(out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``train_fcgf`` stage as a Prefect task; returns its metrics."""
    result = train_stage.run(out, train_stage.load_config(params))
    return json.loads((result / "metrics.json").read_text())


@task(name="evaluate_features", task_run_name="evaluate_features-{name}")
def evaluate_task(name: str, capture: Path, checkpoint: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate_features`` stage as a Prefect task; returns its metrics (flattened per descriptor)."""
    inputs = evaluate_stage.EvaluateFeaturesInputs(capture, name, checkpoint)
    result = evaluate_stage.run(inputs, out, evaluate_stage.load_config(params))
    metrics = json.loads((result / "metrics.json").read_text())
    return {f"{feat}_{key}": value for feat, summary in metrics["features"].items()
            for key, value in summary.items() if key in ("feature_match_recall", "registration_recall")}


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
    trained = train_task(Path(model_out), params)
    if captures_root is None:
        return trained, []
    root = Path(captures_root)
    results = Path(out_root) if out_root is not None else root
    todo = list(names) if names else discover_captures(root)
    checkpoint = Path(model_out) / "model.pt"

    def chain(name: str) -> Chain:
        future = evaluate_task.submit(name, root / name, checkpoint, results / name / "evaluate_features", params)
        return [("evaluate_features", future)]

    return trained, run_chains(todo, chain)
