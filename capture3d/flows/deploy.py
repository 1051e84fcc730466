"""Scheduled batch jobs: Prefect deployments of the ``batch`` flow on GPU and CPU work pools, and workers.

Inputs: the inbox URL, the work folder, the params (file + overrides; section ``batch``: pool names
and the schedule, cron or interval), optionally a schedule from the command line. Outputs: one
work pool per device kind (type ``process``, created when missing) and one deployment per pool,
``batch/batch-gpu`` and ``batch/batch-cpu``, each limited to the capture kinds whose stages need
that device (:func:`capture3d.catalog.Pipeline.device`): photos and bodies fit on the GPU, scans
register on the CPU. ``capture3d worker --pool NAME`` starts a Prefect process worker on a pool;
several workers, on several machines, can poll one pool and share artifacts through the DVC
remote. The deployments load the flow by module path (``capture3d.flows.batch.batch``), so a
worker needs the package installed, not this checkout.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.flows import EntrypointType

from capture3d.catalog import batch_kinds, pipeline
from capture3d.config import load_params, section
from capture3d.flows.batch import batch

logger = logging.getLogger(__name__)


def ensure_work_pool(name: str) -> bool:
    """Create the ``process`` work pool ``name`` when it does not exist; True when created."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            logger.info("created work pool %s", name)
            return True


def deploy_batch(
    source: str,
    work: Path,
    params_file: Path | None,
    overrides: Sequence[str],
    *,
    cron: str | None = None,
    interval_s: float | None = None,
    endpoint_url: str | None = None,
    remote: str | None = None,
    run_now: bool = False,
) -> list[str]:
    """Create or update the deployments of :func:`batch` (one per device pool). The schedule is
    ``cron`` or ``interval_s`` when given, else params ``batch.schedule_cron`` /
    ``batch.schedule_interval_s`` (both empty: run on demand only); ``run_now`` also schedules one
    run of each for now (a worker on the pool picks it up). Returns ``flow/deployment`` names."""
    from capture3d.ops.batch_plan import BatchConfig

    params = load_params(params_file, overrides)
    config = section(params, "batch", BatchConfig)
    cron = cron if cron is not None else (config.schedule_cron or None)
    interval = interval_s if interval_s is not None else (config.schedule_interval_s or None)
    if cron and interval:
        raise ValueError("give a cron schedule or an interval, not both")
    pools = {"gpu": config.gpu_pool, "cpu": config.cpu_pool}
    names = []
    for device, pool in pools.items():
        kinds = [kind for kind in batch_kinds() if pipeline(kind).device == device]
        if not kinds:
            continue
        ensure_work_pool(pool)
        deployment = batch.to_deployment(
            name=f"batch-{device}",
            cron=cron,
            interval=timedelta(seconds=interval) if interval else None,
            parameters={
                "source": source,
                "work": str(Path(work).resolve()),
                "params_file": str(Path(params_file).resolve()) if params_file else None,
                "overrides": list(overrides),
                "endpoint_url": endpoint_url,
                "remote": remote,
                "kinds": kinds,
            },
            work_pool_name=pool,
            work_queue_name=device,
            tags=["capture3d", device],
            description=f"capture3d batch of {', '.join(kinds)} captures from {source}",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        deployment_id = deployment.apply(work_pool_name=pool)
        names.append(f"batch/batch-{device}")
        if run_now:
            with get_client(sync_client=True) as client:
                client.create_flow_run_from_deployment(deployment_id)
        logger.info("deployment batch/batch-%s on pool %s (%s)", device, pool, cron or interval or "on demand")
    return names


def start_worker(pool: str, *, run_once: bool = False, limit: int | None = None) -> int:
    """Run a Prefect process worker on ``pool`` in the foreground; returns its exit status.

    A worker needs an API address. Without ``PREFECT_API_URL`` (the embedded-server setup of a
    single machine) this starts Prefect's local server on a free loopback port over the same
    database the deployments were written to, for as long as the worker runs."""
    from prefect.settings import PREFECT_API_URL

    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if run_once:
        cmd.append("--run-once")
    if limit:
        cmd += ["--limit", str(limit)]
    if PREFECT_API_URL.value():
        return subprocess.run(cmd, check=False).returncode
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    try:
        logger.info("local Prefect server for the worker at %s", server.api_url)
        return subprocess.run(cmd, env={**os.environ, "PREFECT_API_URL": server.api_url}, check=False).returncode
    finally:
        server.stop()
