"""What the batch flows share: finding captures, running one chain of stage tasks per capture,
collecting a status per capture, and recording the finished stages in DVC.

Inputs: capture names and a function that submits one capture's chain of Prefect tasks.
Outputs: a :class:`CaptureStatus` per capture (a failing capture never stops the others).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from capture3d.config import load_params, section
from capture3d.flows.dvc_record import BatchLayout, dvc_targets, record_stages
from capture3d.flows.status import CaptureStatus, status_markdown

logger = logging.getLogger(__name__)

Chain = list[tuple[str, PrefectFuture]]  # (stage name, future), in order


@dataclass(frozen=True)
class FlowConfig:
    """Settings shared by the batch flows (the ``flows`` section)."""

    max_workers: int
    record_dvc: bool


def discover_captures(root: Path) -> list[str]:
    """Names of the capture folders under ``root`` (hidden folders skipped)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def run_batch(
    flow_name: str,
    layout: BatchLayout,
    chain: Callable[[str, Path, Path, dict[str, Any]], Chain],
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None,
    params_file: Path | None,
    overrides: Sequence[str],
) -> list[CaptureStatus]:
    """The body of a batch flow: ``chain(name, capture, capture_out, params)`` per capture, concurrently;
    then the finished captures are recorded in DVC and the status table is logged."""
    params = load_params(params_file, overrides)
    config = section(params, "flows", FlowConfig)
    captures_root, out_root = Path(captures_root), Path(out_root)
    names = list(names) if names else discover_captures(captures_root)
    statuses = run_chains(names, lambda name: chain(name, captures_root / name, out_root / name, params))
    finish_batch(flow_name, statuses, layout, captures_root, out_root, params_file, overrides, config.record_dvc)
    return statuses


def run_chains(names: Sequence[str], submit: Callable[[str], Chain]) -> list[CaptureStatus]:
    """Submit every capture's chain first (so they run concurrently), then wait for each."""
    chains = {name: submit(name) for name in names}
    return [CaptureStatus.from_futures(name, chains[name]) for name in names]


def run_with_workers(
    batch_flow: Flow,
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None,
    params_file: Path | None,
    overrides: Sequence[str],
) -> list[CaptureStatus]:
    """Run a batch flow with ``flows.max_workers`` captures at a time."""
    config = section(load_params(params_file, overrides), "flows", FlowConfig)
    runner = ThreadPoolTaskRunner(max_workers=max(1, config.max_workers))
    return batch_flow.with_options(task_runner=runner)(captures_root, out_root, names, params_file, overrides)


def finish_batch(
    flow_name: str,
    statuses: list[CaptureStatus],
    layout: BatchLayout,
    captures_root: Path,
    out_root: Path,
    params_file: Path | None,
    overrides: Sequence[str],
    record_dvc: bool,
) -> None:
    """Record finished captures in DVC (when the run used params.yaml as is) and log the table."""
    run_logger = get_run_logger()
    if record_dvc and not overrides:
        done = [s.name for s in statuses if s.ok]
        repo = Path(params_file).resolve().parent if params_file else Path.cwd()
        record_stages(repo, dvc_targets(repo, captures_root, out_root, done, layout))
    elif record_dvc:
        run_logger.warning("overrides given: outputs not recorded in DVC (they differ from params.yaml)")
    run_logger.info("%s finished:\n%s", flow_name, status_markdown(statuses))
