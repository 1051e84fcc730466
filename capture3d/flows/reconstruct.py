"""Prefect flow ``reconstruct``: SfM and its evaluation for one capture or a batch, concurrently.

Inputs: a folder of captures (each ``<root>/<name>/`` with ``images/`` or photos), the names to
process (default: every sub-folder), an output root, and the params (file + overrides). Outputs:
``<out_root>/<name>/sfm/`` and ``<out_root>/<name>/evaluate_sfm/`` per capture, written by the same
``capture3d.stages.*.run`` functions that ``dvc repro`` runs, and a status row per capture. One
failing capture does not stop the others. When run inside the DVC project on its own paths, the
stages that ran are recorded with ``dvc commit`` so ``dvc status`` is clean afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from capture3d.config import load_params, section
from capture3d.flows.dvc_record import dvc_targets, record_stages
from capture3d.flows.status import CaptureStatus, status_markdown
from capture3d.stages import evaluate_sfm as evaluate_stage
from capture3d.stages import sfm as sfm_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructConfig:
    """Settings of the flow (the ``reconstruct`` section)."""

    max_workers: int
    record_dvc: bool


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


def discover_captures(root: Path) -> list[str]:
    """Names of the capture folders under ``root`` (hidden folders skipped)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


@flow(name="reconstruct", task_runner=ThreadPoolTaskRunner(max_workers=2), validate_parameters=False)
def reconstruct(
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """Run SfM + evaluation on each capture concurrently; returns one status per capture."""
    run_logger = get_run_logger()
    params = load_params(params_file, overrides)
    config = section(params, "reconstruct", ReconstructConfig)
    captures_root, out_root = Path(captures_root), Path(out_root)
    names = list(names) if names else discover_captures(captures_root)
    futures: dict[str, tuple[PrefectFuture, PrefectFuture]] = {}
    for name in names:
        capture = captures_root / name
        sfm_out = out_root / name / "sfm"
        f_sfm = sfm_task.submit(name, capture, sfm_out, params)
        f_eval = evaluate_task.submit(name, f_sfm, capture, out_root / name / "evaluate_sfm", params)
        futures[name] = (f_sfm, f_eval)
    statuses = [CaptureStatus.from_futures(name, [("sfm", futures[name][0]), ("evaluate_sfm", futures[name][1])])
                for name in names]
    if config.record_dvc and not overrides:
        done = [s.name for s in statuses if s.ok]
        repo = Path(params_file).resolve().parent if params_file else Path.cwd()
        record_stages(repo, dvc_targets(repo, captures_root, out_root, done))
    elif config.record_dvc:
        run_logger.warning("overrides given: outputs not recorded in DVC (they differ from params.yaml)")
    run_logger.info("reconstruct finished:\n%s", status_markdown(statuses))
    return statuses


def run_reconstruct(
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """Run the ``reconstruct`` flow with ``reconstruct.max_workers`` captures at a time."""
    config = section(load_params(params_file, overrides), "reconstruct", ReconstructConfig)
    runner = ThreadPoolTaskRunner(max_workers=max(1, config.max_workers))
    return reconstruct.with_options(task_runner=runner)(captures_root, out_root, names, params_file, overrides)
