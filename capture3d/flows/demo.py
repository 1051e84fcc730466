"""Prefect flow ``demo``: generate the embedded synthetic capture, then reconstruct and evaluate it.

Inputs: the project folder (its params.yaml). Outputs: ``data/captures/demo/`` (the synthetic
capture with ground truth) and ``results/demo/{sfm,evaluate_sfm}/``, recorded in DVC like
``dvc repro`` would, and the per-capture status rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task

from capture3d.config import load_params, section
from capture3d.flows.dvc_record import PHOTOS, RESULTS_DIR, record_stages
from capture3d.flows.batch import FlowConfig
from capture3d.flows.reconstruct import run_reconstruct
from capture3d.flows.status import CaptureStatus
from capture3d.stages import synthesize as synthesize_stage

logger = logging.getLogger(__name__)

DEMO_CAPTURE = "demo"


@task(name="synthesize")
def synthesize_task(out: Path, params: dict) -> Path:
    """The ``synthesize`` stage as a Prefect task."""
    return synthesize_stage.run(out, synthesize_stage.load_config(params))


@flow(name="demo", validate_parameters=False)
def demo(repo: Path) -> list[CaptureStatus]:
    """Synthesize the demo capture and run the ``reconstruct`` flow on it inside ``repo``."""
    repo = Path(repo)
    params = load_params(repo / "params.yaml")
    capture = synthesize_task(repo / PHOTOS.captures_dir / DEMO_CAPTURE, params)
    if section(params, "flows", FlowConfig).record_dvc:
        record_stages(repo, ["synthesize"])
    return run_reconstruct(capture.parent, repo / RESULTS_DIR, [DEMO_CAPTURE], repo / "params.yaml")
