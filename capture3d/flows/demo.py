"""Prefect flow ``demo``: generate the embedded sample captures, then run every capture kind's pipeline on them.

Inputs: the project folder (its params.yaml). Outputs, for each batch pipeline of
:mod:`capture3d.catalog` (photos, scans, bodies): its sample capture written by its sample step
(``synthesize``, ``synthesize_scans``, ``synthesize_bodies``) into the kind's captures folder, and
``results/<sample>/<step>/`` from a folder run of the ``batch`` flow, recorded in DVC like
``dvc repro`` would; the per-capture status rows; and one HTML report of all of them
(:func:`demo_report_path`, in the folder runs' work area beside their own reports).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow

from capture3d.catalog import PIPELINES, fill
from capture3d.config import load_params
from capture3d.flows.batch import folder_work_area, run_folder
from capture3d.flows.stage_tasks import stage_task
from capture3d.flows.status import CaptureStatus
from capture3d.ops.batch_plan import load_batch_config
from capture3d.ops.dvc_record import RESULTS_DIR, record_stages
from capture3d.ops.report import build_report

logger = logging.getLogger(__name__)


def demo_report_path(repo: Path) -> Path:
    """The demo's HTML report: every sample capture's results and the demo's runs."""
    return folder_work_area(Path(repo) / RESULTS_DIR) / "runs" / "demo.html"


@flow(name="demo", validate_parameters=False)
def demo(repo: Path) -> list[CaptureStatus]:
    """Write each kind's sample capture, then run the kind's steps on it (a folder run)."""
    repo = Path(repo)
    params_file = repo / "params.yaml"
    params = load_params(params_file)
    samples: list[tuple[str, Path]] = []
    for spec in (p for p in PIPELINES if p.batch):
        for step in (s for s in spec.steps if not s.per_capture):
            out = repo / fill(step.out_template, data=spec.captures_dir)
            stage_task(step.name)(spec.kind, step.name, out.name, out, out, params, False, out)
            samples.append((spec.kind, out))
    if load_batch_config(params).record_dvc:
        record_stages(repo, [s.name for p in PIPELINES if p.batch for s in p.steps if not s.per_capture])
    statuses: list[CaptureStatus] = []
    for kind, capture in samples:
        statuses += run_folder(kind, capture.parent, repo / RESULTS_DIR, [capture.name], params_file, ())
    report = demo_report_path(repo)
    build_report(folder_work_area(repo / RESULTS_DIR), report, results_root=repo / RESULTS_DIR)
    logger.info("demo report: %s", report)
    return statuses
