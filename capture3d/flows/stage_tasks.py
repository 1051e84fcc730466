"""One Prefect task per catalog step, so every stage shows in the Prefect UI on its own.

Input: a step name of :mod:`capture3d.catalog`. Output: a Prefect task running
:func:`capture3d.ops.steps.run_step` (the stage's own ``run``, in a child process for a heavy
step when isolating), named after the step, with a run name ``<step>-<capture>``, returning the
step's summary metrics. Called inside the batch flow's per-capture task, each is a nested task run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from capture3d.catalog import steps
from capture3d.ops.steps import run_step

logger = logging.getLogger(__name__)


def _make(step_name: str) -> Task:
    return task(name=step_name, task_run_name=f"{step_name}-{{name}}", cache_policy=NO_CACHE)(run_step)


STAGE_TASKS: Mapping[str, Task] = {s.name: _make(s.name) for s in steps()}
"""The Prefect task of every step, by step name (built once, from the catalog)."""


def stage_task(step_name: str) -> Task:
    """The Prefect task of a catalog step."""
    return STAGE_TASKS[step_name]
