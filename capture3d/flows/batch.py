"""Prefect flow ``batch``: process an inbox of captures (a folder or ``s3://bucket/prefix``) unattended.

Inputs: the inbox URL, a work folder, the params (file + overrides; section ``batch``). For each
capture the inbox lists, in a task of its own and with at most ``batch.max_workers`` at once:

1. lock the capture (``work/locks/<name>.lock``: a second run waits for it, then finds it done);
2. skip it when ``work/manifests/<name>.json`` records the same work key (input ETags and sizes,
   the params sections its stages read, and the code version);
3. mirror its files into ``work/inbox/<name>`` fetching only new or changed ones;
4. run its kind's stages (:mod:`capture3d.flows.pipelines`) into ``work/results/<name>/``,
   skipping each stage already finished under the same key (``work/state/<name>/stages``), so a
   killed batch resumes where it stopped;
5. ``dvc add`` + ``dvc push`` the results to the store's remote; write the manifest.

Outputs: the folders above, ``work/runs/<run id>.json`` and ``.md`` (a row per capture: ok,
current, failed with the stage and reason, or refused), and a markdown artifact in Prefect.
One failing capture never stops the others. :func:`plan` decides what is pending without Prefect,
so a run with nothing to do returns in well under a second per hundred captures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from capture3d.config import load_params
from capture3d.errors import CaptureError
from capture3d.flows.pipelines import PIPELINES, run_step, sections
from capture3d.flows.status import rows_markdown
from capture3d.ops.batch_plan import (
    BatchConfig,
    Plan,
    PlannedCapture,
    WorkLayout,
    load_batch_config,
    plan,
)
from capture3d.ops.dvc_store import ensure_store, push_outputs
from capture3d.ops.inbox import Inbox, clean_stale, open_inbox, sync
from capture3d.ops.locks import file_lock
from capture3d.ops.manifest import (
    MANIFEST_VERSION,
    finished_status,
    git_commit,
    is_current,
    now,
    read_json,
    write_json,
)
from capture3d.ops.report import build_report, last_good_run
from capture3d.ops.s3 import S3Settings

logger = logging.getLogger(__name__)


def process_capture(inbox: Inbox, planned: PlannedCapture, layout: WorkLayout, params: dict[str, Any],
                    config: BatchConfig, code: str, run_id: str, wait: bool) -> dict[str, Any]:
    """Steps 1-5 of the module docstring for one capture; returns its status row. Raises
    :class:`CaptureError` (naming the stage) when the capture fails."""
    capture = planned.listing
    name = capture.name
    with file_lock(layout.lock(name), wait=wait, timeout_s=config.lock_timeout_s) as held:
        if not held:
            if wait:
                raise CaptureError(name, f"another run held it for more than {config.lock_timeout_s:.0f} s")
            return {"capture": name, "kind": capture.kind, "status": "busy"}
        if is_current(read_json(layout.manifests / f"{name}.json"), planned.key):
            return {"capture": name, "kind": capture.kind, "status": "current"}
        if capture.kind not in PIPELINES:
            raise CaptureError(name, "no keypoints/, scans/ or images/ (nor point clouds or photos): unknown capture kind")
        started, t0 = now(), time.perf_counter()
        out = layout.results / name
        for folder, owned in ((layout.inbox, [name]), (layout.results, [name]), (out, None)):
            removed = clean_stale(folder, owned)
            if removed:
                logger.info("capture '%s': removed %d temporary folder(s) a killed run left", name, removed)
        fetched = sync(inbox, capture, layout.inbox / name, layout.state(name) / "inbox.json")
        metrics: dict[str, Any] = {}
        stages = []
        for step in PIPELINES[capture.kind]:
            stamp_path = layout.state(name) / "stages" / f"{step.name}.json"
            stamp = read_json(stamp_path)
            if stamp and stamp.get("work_key") == planned.key and (not stamp.get("produced") or (out / step.name).is_dir()):
                metrics.update(stamp.get("metrics") or {})
                stages.append({"name": step.name, "reused": True, "seconds": stamp.get("seconds", 0.0)})
                continue
            s0 = time.perf_counter()
            try:
                result = run_step(capture.kind, step, name, layout.inbox / name, out, params, dict(metrics),
                                  config.isolate_stages) or {}
            except Exception as exc:  # noqa: BLE001 - reported as this capture's failure
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                text = text.removeprefix(f"capture '{name}': ")
                raise CaptureError(name, f"stage {step.name}: {text}") from exc
            seconds = time.perf_counter() - s0
            metrics.update(result)
            write_json(stamp_path, {"work_key": planned.key, "produced": (out / step.name).is_dir(),
                                    "metrics": result, "seconds": seconds, "finished": now()})
            stages.append({"name": step.name, "reused": False, "seconds": round(seconds, 3)})
        outputs = [out / s.name for s in PIPELINES[capture.kind] if (out / s.name).is_dir()]
        stored = push_outputs(layout.root, outputs, config.remote) if config.remote else []
        manifest = {
            "manifest_version": MANIFEST_VERSION, "capture": name, "kind": capture.kind, "status": finished_status(metrics),
            "work_key": planned.key, "run_id": run_id, "started": started, "finished": now(),
            "seconds": round(time.perf_counter() - t0, 3), "code_version": code, "git_commit": git_commit(),
            "params": {"hash": planned.params_digest, "sections": list(sections(capture.kind))},
            "source": {"url": capture.source, "input_hash": capture.input_hash, "files": len(capture.files),
                       "bytes": capture.total_bytes, "fetched": fetched.fetched, "reused": fetched.reused},
            "inputs": [{"key": f.key, "etag": f.etag, "size": f.size} for f in capture.files],
            "dvc": {"remote": config.remote, "outputs": [s.as_dict() for s in stored]},
            "stages": stages, "metrics": metrics,
        }
        write_json(layout.manifests / f"{name}.json", manifest)
        return {"capture": name, "kind": capture.kind, "status": manifest["status"], "seconds": manifest["seconds"],
                "fetched": fetched.fetched, **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}


@task(name="capture", task_run_name="capture-{name}", cache_policy=NO_CACHE)
def capture_task(name: str, source: str, settings: S3Settings, planned: PlannedCapture, layout: WorkLayout,
                 params: dict[str, Any], config: BatchConfig, code: str, run_id: str, wait: bool) -> dict[str, Any]:
    """:func:`process_capture` as a Prefect task. It opens the inbox itself, so its inputs pickle
    (a Dask worker in another process or machine can run it)."""
    return process_capture(open_inbox(source, settings), planned, layout, params, config, code, run_id, wait)


def task_runner(config: BatchConfig) -> TaskRunner:
    """Threads in this process, or Dask: a LocalCluster of ``max_workers`` single-thread worker
    processes, or the scheduler at ``dask_address`` (several machines sharing the DVC remote)."""
    if config.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max(1, config.max_workers))
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # The worker processes must report to this run's API (an embedded server has no fixed address,
    # and each process would otherwise start one of its own).
    from prefect.client.orchestration import get_client

    api_url = str(get_client(sync_client=True).api_url)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": max(1, config.max_workers), "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "env": {"PREFECT_API_URL": api_url}})


@flow(name="batch", validate_parameters=False)
def batch(source: str, work: str, params_file: str | None = None, overrides: list[str] | None = None,
          endpoint_url: str | None = None, remote: str | None = None, names: list[str] | None = None,
          kinds: list[str] | None = None) -> list[dict[str, Any]] | State:
    """Process every pending capture of the inbox ``source`` (of ``kinds``, default all) into
    ``work``; one row per capture. Captures run on :func:`task_runner`."""
    params = load_params(Path(params_file) if params_file else None, overrides or ())
    config = load_batch_config(params, endpoint_url, remote)
    inbox = open_inbox(source, config.s3())
    todo = plan(inbox, Path(work), params, names, kinds)
    table, flagged = run_plan(source, todo, Path(work), params, config)
    if flagged:  # the run's state says so: a scheduled run with regressions shows as failed
        return Failed(message=f"{len(flagged)} regression(s) against the last good run: {flagged[0]}", data=table)
    return table


def run_plan(source: str, todo: Plan, work: Path, params: dict[str, Any],
             config: BatchConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Submit the pending captures (those another run holds again at the end, waiting for them)
    and write the run summary (``runs/<run id>.json`` and ``.md``, a Prefect markdown artifact)
    and the HTML report (``runs/<run id>.html``), compared with the last good run. Returns the
    rows and the regressions found (one line each)."""
    run_logger = get_run_logger()
    layout = WorkLayout(work)
    run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}"
    if config.remote and todo.pending:
        ensure_store(layout.root, config.remote, config.s3().endpoint_url)
    rows: dict[str, dict[str, Any]] = {row["capture"]: row for row in todo.rows()}
    settings = config.s3()
    with task_runner(config) as runner:
        for wait in (False, True):  # a capture another run holds is retried at the end, waiting for it
            batch_todo = [p for p in todo.pending if rows.get(p.listing.name, {}).get("status") in (None, "busy")]
            futures = {p.listing.name: runner.submit(capture_task, parameters={
                "name": p.listing.name, "source": source, "settings": settings, "planned": p, "layout": layout,
                "params": params, "config": config, "code": todo.code, "run_id": run_id, "wait": wait})
                for p in batch_todo}
            for name, future in futures.items():
                future.wait()
                state = future.state
                if state.is_completed():
                    rows[name] = future.result()
                else:
                    error = future.result(raise_on_failure=False)
                    reason = str(error) if isinstance(error, BaseException) else (state.message or state.name)
                    kind = next(p.listing.kind for p in batch_todo if p.listing.name == name)
                    rows[name] = {"capture": name, "kind": kind, "status": "failed", "reason": reason.splitlines()[0]}
    table = [rows[n] for n in sorted(rows)]
    summary = {"run_id": run_id, "code_version": todo.code, "finished": now(), "captures": table}
    write_json(layout.runs / f"{run_id}.json", summary)
    previous = last_good_run(layout.runs, exclude=run_id)
    report = build_report(layout.root, layout.runs / f"{run_id}.html", previous=previous)
    flagged = [f"{r.capture}: {r.metric} {r.old:.4g} -> {r.new:.4g}" for r in report.regressions]
    flagged += [f"{name}: newly failed" for name in report.newly_failed]
    summary.update(report=str(report.path), baseline=report.previous_run_id, regressions=flagged)
    write_json(layout.runs / f"{run_id}.json", summary)
    markdown = rows_markdown(table)
    if flagged:
        markdown += f"\n\n**Regressions against run {report.previous_run_id}:**\n" + "\n".join(f"- {f}" for f in flagged)
    (layout.runs / f"{run_id}.md").write_text(markdown + "\n")
    create_markdown_artifact(markdown=markdown, key="batch-summary", description=f"capture3d batch {run_id}")
    run_logger.info("batch %s finished (report %s):\n%s", run_id, report.path, markdown)
    return table, flagged


def run_batch_flow(source: str, work: Path, params_file: Path | None, overrides: Sequence[str],
                   endpoint_url: str | None, remote: str | None,
                   names: Sequence[str] | None) -> tuple[list[dict[str, Any]], str]:
    """Run the ``batch`` flow (from the command line): the rows, and the failure message of a run
    that found regressions ("" otherwise)."""
    state = batch(source, str(work), str(params_file) if params_file else None, list(overrides), endpoint_url,
                  remote, list(names) if names else None, return_state=True)
    rows = state.result(raise_on_failure=False)
    if isinstance(rows, BaseException):
        raise rows
    return rows, "" if state.is_completed() else (state.message or state.name)
