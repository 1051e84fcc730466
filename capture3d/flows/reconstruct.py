"""Prefect flow ``reconstruct``: SfM, its evaluation, then novel-view synthesis, per capture, concurrently.

Inputs: a folder of captures (each ``<root>/<name>/`` with ``images/`` or photos), the names to
process (default: every sub-folder), an output root, and the params (file + overrides). Outputs:
``<out_root>/<name>/{sfm,evaluate_sfm,fit_gaussians,fit_nerf}/`` per capture, written by the same
``capture3d.stages.*.run`` functions that ``dvc repro`` runs, and a status row per capture. The
NVS fits start from the SfM output as soon as it exists. One failing capture does not stop the
others. When run inside the DVC project on its own paths, the
stages that ran are recorded with ``dvc commit`` so ``dvc status`` is clean afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from capture3d.flows.batch import Chain, run_batch
from capture3d.flows.dvc_record import PHOTOS
from capture3d.flows.status import CaptureStatus
from capture3d.stages import evaluate_sfm as evaluate_stage
from capture3d.stages import fit_gaussians as gaussians_stage
from capture3d.stages import fit_nerf as nerf_stage
from capture3d.stages import sfm as sfm_stage
from capture3d.stages.nvs_common import NvsInputs, nvs_summary

logger = logging.getLogger(__name__)


@task(name="sfm", task_run_name="sfm-{name}")
def sfm_task(name: str, capture: Path, out: Path, params: dict[str, Any]) -> Path:
    """The ``sfm`` stage as a Prefect task."""
    return sfm_stage.run(sfm_stage.SfmInputs(capture, name), out, sfm_stage.load_config(params))


@task(name="evaluate_sfm", task_run_name="evaluate_sfm-{name}")
def evaluate_task(name: str, model: Path, capture: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``evaluate_sfm`` stage as a Prefect task; returns its metrics."""
    inputs = evaluate_stage.EvaluateSfmInputs(model, evaluate_stage.find_ground_truth(capture), None, name)
    result = evaluate_stage.run(inputs, out, evaluate_stage.load_config(params))
    return evaluate_stage.read_metrics(result)


@task(name="fit_gaussians", task_run_name="fit_gaussians-{name}")
def fit_gaussians_task(name: str, sfm: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``fit_gaussians`` stage as a Prefect task; returns its held-out scores."""
    result = gaussians_stage.run(NvsInputs(sfm, name), out, gaussians_stage.load_config(params))
    return nvs_summary("gaussians", result)


@task(name="fit_nerf", task_run_name="fit_nerf-{name}")
def fit_nerf_task(name: str, sfm: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The ``fit_nerf`` stage as a Prefect task; returns its held-out scores."""
    result = nerf_stage.run(NvsInputs(sfm, name), out, nerf_stage.load_config(params))
    return nvs_summary("nerf", result)


@flow(name="reconstruct", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def reconstruct(
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """Run SfM + evaluation on each capture concurrently; returns one status per capture."""
    return run_batch("reconstruct", PHOTOS, _chain, captures_root, out_root, names, params_file, overrides)


def _chain(name: str, capture: Path, out: Path, params: dict[str, Any]) -> Chain:
    f_sfm = sfm_task.submit(name, capture, out / "sfm", params)
    f_eval = evaluate_task.submit(name, f_sfm, capture, out / "evaluate_sfm", params)
    f_gs = fit_gaussians_task.submit(name, f_sfm, out / "fit_gaussians", params)
    f_nerf = fit_nerf_task.submit(name, f_sfm, out / "fit_nerf", params, wait_for=[f_gs])
    return [("sfm", f_sfm), ("evaluate_sfm", f_eval), ("fit_gaussians", f_gs), ("fit_nerf", f_nerf)]
