"""Prefect flow ``demo``: generate the embedded sample captures, then run the pipelines on them.

Inputs: the project folder (its params.yaml). Outputs: ``data/captures/demo/`` (synthetic photos
with ground truth) and ``data/scan_captures/demo_scans/`` (synthetic scans with ground-truth
poses); ``results/demo/{sfm,evaluate_sfm,fit_gaussians,fit_nerf}/`` and ``results/demo_scans/{register_scans,
evaluate_registration}/``, ``data/body_captures/demo_bodies/`` (synthetic body keypoints with
3D ground truth) and ``results/demo_bodies/{fit_bodies,evaluate_bodies}/``, recorded in DVC like ``dvc repro`` would; the per-capture status rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task

from capture3d.config import load_params, section
from capture3d.flows.batch import FlowConfig, run_with_workers
from capture3d.flows.dvc_record import BODIES, PHOTOS, RESULTS_DIR, SCANS, record_stages
from capture3d.flows.fit_bodies import fit_bodies
from capture3d.flows.reconstruct import reconstruct
from capture3d.flows.register_scans import register_scans
from capture3d.flows.status import CaptureStatus
from capture3d.stages import synthesize as synthesize_stage
from capture3d.stages import synthesize_bodies as synthesize_bodies_stage
from capture3d.stages import synthesize_scans as synthesize_scans_stage

logger = logging.getLogger(__name__)

DEMO_CAPTURE = "demo"
DEMO_SCAN_CAPTURE = "demo_scans"
DEMO_BODY_CAPTURE = "demo_bodies"


@task(name="synthesize")
def synthesize_task(out: Path, params: dict) -> Path:
    """The ``synthesize`` stage as a Prefect task."""
    return synthesize_stage.run(out, synthesize_stage.load_config(params))


@task(name="synthesize_scans")
def synthesize_scans_task(out: Path, params: dict) -> Path:
    """The ``synthesize_scans`` stage as a Prefect task."""
    return synthesize_scans_stage.run(out, synthesize_scans_stage.load_config(params))


@task(name="synthesize_bodies")
def synthesize_bodies_task(out: Path, params: dict) -> Path:
    """The ``synthesize_bodies`` stage as a Prefect task."""
    return synthesize_bodies_stage.run(out, synthesize_bodies_stage.load_config(params))


@flow(name="demo", validate_parameters=False)
def demo(repo: Path) -> list[CaptureStatus]:
    """Synthesize the sample captures and run ``reconstruct``, ``register_scans`` and ``fit_bodies`` on them."""
    repo = Path(repo)
    params_file = repo / "params.yaml"
    params = load_params(params_file)
    photos = synthesize_task(repo / PHOTOS.captures_dir / DEMO_CAPTURE, params)
    scans = synthesize_scans_task(repo / SCANS.captures_dir / DEMO_SCAN_CAPTURE, params)
    bodies = synthesize_bodies_task(repo / BODIES.captures_dir / DEMO_BODY_CAPTURE, params)
    if section(params, "flows", FlowConfig).record_dvc:
        record_stages(repo, ["synthesize", "synthesize_scans", "synthesize_bodies"])
    statuses = run_with_workers(reconstruct, photos.parent, repo / RESULTS_DIR, [DEMO_CAPTURE], params_file, ())
    statuses += run_with_workers(register_scans, scans.parent, repo / RESULTS_DIR, [DEMO_SCAN_CAPTURE], params_file, ())
    statuses += run_with_workers(fit_bodies, bodies.parent, repo / RESULTS_DIR, [DEMO_BODY_CAPTURE], params_file, ())
    return statuses
