"""Prefect flow ``register_scans``: multiway registration and its evaluation per scan capture.

Inputs: a folder of scan captures (each ``<root>/<name>/`` with ``scans/`` or clouds), the names to
process (default: every sub-folder), an output root, and the params (file + overrides). Outputs:
``<out_root>/<name>/register_scans/`` and, when the capture has ground truth,
``<out_root>/<name>/evaluate_registration/``, written by the same ``capture3d.stages.*.run``
functions ``dvc repro`` runs, and a status row per capture. Captures run concurrently; one failing
capture does not stop the others. Inside the DVC project the finished stages are ``dvc commit``-ed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from capture3d.flows.batch import Chain, run_batch
from capture3d.flows.dvc_record import SCANS
from capture3d.flows.status import CaptureStatus
from capture3d.stages import evaluate_registration as evaluate_stage
from capture3d.stages import register_scans as register_stage

logger = logging.getLogger(__name__)


@task(name="register_scans", task_run_name="register_scans-{name}")
def register_task(name: str, capture: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``register_scans`` stage as a Prefect task; returns its metrics."""
    inputs = register_stage.RegisterScansInputs(capture, name)
    result = register_stage.run(inputs, out, register_stage.load_config(params))
    return evaluate_stage.read_metrics(result)


@task(name="evaluate_registration", task_run_name="evaluate_registration-{name}")
def evaluate_task(name: str, registered: dict[str, Any], result: Path, capture: Path, out: Path,
                  params: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate_registration`` stage as a Prefect task; without ground truth, the register metrics."""
    if evaluate_stage.find_scan_ground_truth(capture) is None:
        return registered
    inputs = evaluate_stage.EvaluateRegistrationInputs(result, capture, None, name)
    return evaluate_stage.read_metrics(evaluate_stage.run(inputs, out, evaluate_stage.load_config(params)))


@flow(name="register_scans", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def register_scans(
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """Register each scan capture concurrently; returns one status per capture."""
    return run_batch("register_scans", SCANS, _chain, captures_root, out_root, names, params_file, overrides)


def _chain(name: str, capture: Path, out: Path, params: dict[str, Any]) -> Chain:
    f_reg = register_task.submit(name, capture, out / "register_scans", params)
    f_eval = evaluate_task.submit(name, f_reg, out / "register_scans", capture, out / "evaluate_registration", params)
    return [("register_scans", f_reg), ("evaluate_registration", f_eval)]
