"""Prefect flow ``fit_bodies``: body fitting and its evaluation per body capture (one or a batch).

Inputs: a folder of body captures (each ``<root>/<name>/`` with ``keypoints/`` or
``keypoints.json``, optional ``images/``, ``cameras.json`` and ``gt/``), the names to process
(default: every sub-folder), an output root, and the params (file + overrides). Outputs:
``<out_root>/<name>/fit_bodies/`` and, with ground truth, ``<out_root>/<name>/evaluate_bodies/``,
written by the same ``capture3d.stages.*.run`` functions ``dvc repro`` runs, and a status row per
capture. One failing capture does not stop the others; finished stages are ``dvc commit``-ed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from capture3d.flows.batch import Chain, run_batch
from capture3d.flows.dvc_record import BODIES
from capture3d.flows.status import CaptureStatus
from capture3d.stages import evaluate_bodies as evaluate_stage
from capture3d.stages import fit_bodies as fit_stage

logger = logging.getLogger(__name__)


def _summary(folder: Path) -> dict[str, Any]:
    metrics = json.loads((folder / "metrics.json").read_text())
    keys = {"people_fitted": "bodies_fitted", "people_skipped": "bodies_skipped",
            "median_error_norm": "body_error_norm", "median_mpjpe_mm": "body_mpjpe_mm",
            "median_pa_mpjpe_mm": "body_pa_mpjpe_mm"}
    return {new: metrics[old] for old, new in keys.items() if old in metrics}


@task(name="fit_bodies", task_run_name="fit_bodies-{name}")
def fit_task(name: str, capture: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``fit_bodies`` stage as a Prefect task; returns its summary metrics."""
    inputs = fit_stage.BodyInputs.from_capture(capture, name)
    return _summary(fit_stage.run(inputs, out, fit_stage.load_config(params)))


@task(name="evaluate_bodies", task_run_name="evaluate_bodies-{name}")
def evaluate_task(name: str, fitted: dict[str, Any], result: Path, capture: Path, out: Path,
                  params: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate_bodies`` stage as a Prefect task; without ground truth, the fit's metrics."""
    if not (Path(capture) / "gt").is_dir():
        return fitted
    return {**fitted, **_summary(evaluate_stage.run(result, capture, out, evaluate_stage.load_config(params), name))}


@flow(name="fit_bodies", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def fit_bodies(
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """Fit the bodies of each capture concurrently; returns one status per capture."""
    return run_batch("fit_bodies", BODIES, _chain, captures_root, out_root, names, params_file, overrides)


def _chain(name: str, capture: Path, out: Path, params: dict[str, Any]) -> Chain:
    f_fit = fit_task.submit(name, capture, out / "fit_bodies", params)
    f_eval = evaluate_task.submit(name, f_fit, out / "fit_bodies", capture, out / "evaluate_bodies", params)
    return [("fit_bodies", f_fit), ("evaluate_bodies", f_eval)]
