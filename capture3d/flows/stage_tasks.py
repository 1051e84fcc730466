"""One Prefect task per catalog step, so every stage shows in the Prefect UI on its own.

Input: a step name of :mod:`capture3d.catalog`. Output: a Prefect task running
:func:`run_resumable_step` -- :func:`capture3d.ops.steps.run_step` (the stage's own ``run``, in a
child process for a heavy step when isolating) -- named after the step, with a run name
``<step>-<capture>``, returning the step's summary metrics. Called inside the batch flow's
per-capture task, each is a nested task run.

A long fit (a catalog step with ``resume_state``) run while the batch has a remote (``batch.remote``, or the
``config`` the batch passes) and ``batch.checkpoint_every_s > 0`` keeps its resume state on that
remote too (:func:`capture3d.ops.remote_state.synced`): fetched before the fit when this worker
has none, uploaded while it runs, deleted when it succeeded. The state's key names the capture,
the step and a digest of the step's params sections, the code version and its input data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from capture3d.catalog import Step, fill, step, steps
from capture3d.ops.batch_plan import BatchConfig, load_batch_config
from capture3d.ops.manifest import code_version, params_hash
from capture3d.ops.remote_state import RemoteStore, data_digest, state_key, synced
from capture3d.ops.steps import run_step, template_values
from capture3d.stages.common import state_path_for

logger = logging.getLogger(__name__)


def step_paths(
    spec: Step, name: str, capture: Path, results: Path, params: Mapping[str, Any], out: Path | None
) -> tuple[Path, list[Path]]:
    """The step's output folder and the data it reads: its DVC deps that exist, else its inputs
    (from the catalog's templates, without importing the stage)."""

    values = template_values(name, capture, results, params)

    def filled(template: str) -> Path:
        return Path(fill(template, **values))

    out_path = Path(out) if out is not None else filled(spec.out_template)
    deps = [p for p in (filled(t) for t in spec.deps) if p.exists()]
    return out_path, deps or [filled(t) for t in spec.inputs.values()]


def resume_key(spec: Step, name: str, params: Mapping[str, Any], data: list[Path]) -> str:
    """The remote key of a step's resume state: capture, step, and the digest of its params
    sections, the code version and its input data."""
    identity = (params_hash(params, spec.params_sections), code_version(), data_digest(data))
    return state_key(name, spec.name, identity)


def _remote_config(params: Mapping[str, Any], config: BatchConfig | None) -> BatchConfig | None:
    if config is not None:
        return config
    return load_batch_config(dict(params)) if "batch" in params else None


def run_resumable_step(
    kind: str,
    step_name: str,
    name: str,
    capture: Path,
    results: Path,
    params: Mapping[str, Any],
    isolate: bool = False,
    out: Path | None = None,
    config: BatchConfig | None = None,
    pool: Any = None,
) -> dict[str, Any]:
    """:func:`capture3d.ops.steps.run_step`; for a long fit with a remote (``config``, default
    the params' ``batch`` section) and ``checkpoint_every_s > 0``, with its resume state kept
    on the remote (see the module docstring). ``pool``: the warm workers ``run_step`` may use."""
    batch = _remote_config(params, config)
    spec = step(step_name)
    if batch is None or not batch.remote or batch.checkpoint_every_s <= 0 or not spec.resume_state:
        return run_step(kind, step_name, name, capture, results, params, isolate, out, pool)
    out_path, data = step_paths(spec, name, Path(capture), Path(results), params, out)
    local = state_path_for(out_path, spec.resume_state)
    store = RemoteStore(batch.remote, batch.s3())
    key = resume_key(spec, name, params, data)
    with synced(store, key, local, batch.checkpoint_every_s) as report:
        result = run_step(kind, step_name, name, capture, results, params, isolate, out, pool)
    if report.pulled:
        resumed = _resumed_from(out_path / spec.metrics) if spec.metrics else None
        if resumed:
            logger.info("capture '%s': %s resumed at iteration %d from %s", name, step_name, resumed, store.url(key))
        else:
            logger.warning("capture '%s': %s did not resume the state fetched from %s", name, step_name, store.url(key))
    if report.failed_uploads:
        logger.warning(
            "capture '%s': %s: %d upload(s) of the resume state failed", name, step_name, report.failed_uploads
        )
    return result


def _resumed_from(metrics: Path) -> int | None:
    try:
        return int(json.loads(metrics.read_text()).get("resumed_from") or 0)
    except (OSError, ValueError, TypeError):
        return None


def _make(step_name: str) -> Task:
    return task(name=step_name, task_run_name=f"{step_name}-{{name}}", cache_policy=NO_CACHE)(run_resumable_step)


STAGE_TASKS: Mapping[str, Task] = {s.name: _make(s.name) for s in steps()}
"""The Prefect task of every step, by step name (built once, from the catalog)."""


def stage_task(step_name: str) -> Task:
    """The Prefect task of a catalog step."""
    return STAGE_TASKS[step_name]
