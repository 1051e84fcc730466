"""Prefect flow ``batch``, the one batch system: captures from a folder or ``s3://bucket/prefix``.

Inputs: the source URL, a work folder, the params (file + overrides; section ``batch``). For each
capture the source lists, in a task of its own and with at most ``batch.max_workers`` at once:

1. lock the capture (``work/locks/<name>.lock``: a second run waits for it, then finds it done);
2. skip it when ``work/manifests/<name>.json`` records the same work key (input ETags and sizes,
   the params sections its stages read, and the code version);
3. mirror its files into ``work/inbox/<name>`` fetching only new or changed ones (a folder run
   reads the captures where they are);
4. run its kind's steps (:mod:`capture3d.catalog`), each as a Prefect task of its own
   (:mod:`capture3d.flows.stage_tasks`), into ``work/results/<name>/`` (or the folder run's
   results root), skipping each step already finished under the same key
   (``work/state/<name>/stages``), so a killed batch resumes where it stopped; with
   ``batch.isolate_stages`` a heavy step runs in another process: a warm worker of the run's
   :class:`~capture3d.ops.workers.WorkerPool` (``batch.worker_pool``, thread runner), else a new
   child process per step;
5. ``dvc add`` + ``dvc push`` the results to the store's remote; write the manifest.

A folder run (:func:`run_folder`: ``capture3d reconstruct``, ``register-batch``, ``bodies-batch``,
the demo) is the same flow over a local folder of captures of one kind, with its work area in
``<out>/.capture3d``; inside the DVC project on its own paths the finished stages are recorded
with ``dvc commit`` so ``dvc status`` is clean afterwards.

Outputs: the folders above, ``work/runs/<run id>.json`` and ``.md`` (a row per capture: ok,
current, failed with the stage and reason, or refused), and a markdown artifact in Prefect.
One failing capture never stops the others. :func:`plan` decides what is pending without Prefect,
so a run with nothing to do returns in well under a second per hundred captures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from capture3d.catalog import batch_kinds, pipeline
from capture3d.config import load_params
from capture3d.errors import CaptureError, SourceError
from capture3d.flows.stage_tasks import stage_task
from capture3d.flows.status import CaptureStatus, rows_markdown
from capture3d.ops.batch_plan import (
    BatchConfig,
    Plan,
    PlannedCapture,
    WorkLayout,
    kind_sections,
    load_batch_config,
    plan,
)
from capture3d.ops.dvc_record import dvc_targets, record_stages
from capture3d.ops.dvc_store import ensure_store, push_outputs
from capture3d.ops.inbox import (
    Inbox,
    LocalInbox,
    SyncResult,
    clean_stale,
    open_inbox,
    sync,
)
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
from capture3d.ops.steps import warm_models
from capture3d.ops.workers import WorkerPool

logger = logging.getLogger(__name__)


def process_capture(
    inbox: Inbox,
    planned: PlannedCapture,
    layout: WorkLayout,
    params: dict[str, Any],
    config: BatchConfig,
    code: str,
    run_id: str,
    wait: bool,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Steps 1-5 of the module docstring for one capture; returns its status row. Raises
    :class:`CaptureError` (naming the stage) when the capture fails. ``pool``: where isolated heavy
    steps run (None: a child process each)."""
    capture = planned.listing
    name = capture.name
    with file_lock(layout.lock(name), wait=wait, timeout_s=config.lock_timeout_s) as held:
        if not held:
            if wait:
                raise CaptureError(name, f"another run held it for more than {config.lock_timeout_s:.0f} s")
            return {"capture": name, "kind": capture.kind, "status": "busy"}
        if is_current(read_json(layout.manifests / f"{name}.json"), planned.key):
            return {"capture": name, "kind": capture.kind, "status": "current"}
        if capture.kind not in batch_kinds():
            raise CaptureError(
                name, "no keypoints/, scans/ or images/ (nor point clouds or photos): unknown capture kind"
            )
        steps = pipeline(capture.kind).capture_steps
        started, t0 = now(), time.perf_counter()
        out = layout.results / name
        for folder, owned in ((layout.inbox, [name]), (layout.results, [name]), (out, None)):
            removed = clean_stale(folder, owned)
            if removed:
                logger.info("capture '%s': removed %d temporary folder(s) a killed run left", name, removed)
        if layout.in_place:
            folder, fetched = Path(inbox.url) / name, SyncResult(0, len(capture.files), 0)
        else:
            folder = layout.inbox / name
            fetched = sync(inbox, capture, folder, layout.state(name) / "inbox.json")
        metrics: dict[str, Any] = {}
        stages = []
        for step in steps:
            stamp_path = layout.state(name) / "stages" / f"{step.name}.json"
            stamp = read_json(stamp_path)
            if (
                stamp
                and stamp.get("work_key") == planned.key
                and (not stamp.get("produced") or (out / step.name).is_dir())
            ):
                metrics.update(stamp.get("metrics") or {})
                stages.append({"name": step.name, "reused": True, "seconds": stamp.get("seconds", 0.0)})
                continue
            s0 = time.perf_counter()
            try:
                result = (
                    stage_task(step.name)(
                        capture.kind,
                        step.name,
                        name,
                        folder,
                        out,
                        params,
                        config.isolate_stages,
                        config=config,
                        pool=pool,
                    )
                    or {}
                )
            except Exception as exc:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                text = text.removeprefix(f"capture '{name}': ")
                raise CaptureError(name, f"stage {step.name}: {text}") from exc
            seconds = time.perf_counter() - s0
            metrics.update(result)
            write_json(
                stamp_path,
                {
                    "work_key": planned.key,
                    "produced": (out / step.name).is_dir(),
                    "metrics": result,
                    "seconds": seconds,
                    "finished": now(),
                },
            )
            stages.append({"name": step.name, "reused": False, "seconds": round(seconds, 3)})
        outputs = [out / s.name for s in steps if (out / s.name).is_dir()]
        stored = push_outputs(layout.root, outputs, config.remote) if config.remote else []
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "capture": name,
            "kind": capture.kind,
            "status": finished_status(metrics),
            "work_key": planned.key,
            "run_id": run_id,
            "started": started,
            "finished": now(),
            "seconds": round(time.perf_counter() - t0, 3),
            "code_version": code,
            "git_commit": git_commit(),
            "params": {"hash": planned.params_digest, "sections": list(kind_sections(capture.kind))},
            "source": {
                "url": capture.source,
                "input_hash": capture.input_hash,
                "files": len(capture.files),
                "bytes": capture.total_bytes,
                "fetched": fetched.fetched,
                "reused": fetched.reused,
            },
            "inputs": [{"key": f.key, "etag": f.etag, "size": f.size} for f in capture.files],
            "dvc": {"remote": config.remote, "outputs": [s.as_dict() for s in stored]},
            "stages": stages,
            "metrics": metrics,
        }
        write_json(layout.manifests / f"{name}.json", manifest)
        return {
            "capture": name,
            "kind": capture.kind,
            "status": manifest["status"],
            "seconds": manifest["seconds"],
            "fetched": fetched.fetched,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        }


@task(name="capture", task_run_name="capture-{name}", cache_policy=NO_CACHE)
def capture_task(
    name: str,
    source: str,
    settings: S3Settings,
    planned: PlannedCapture,
    layout: WorkLayout,
    params: dict[str, Any],
    config: BatchConfig,
    code: str,
    run_id: str,
    wait: bool,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """:func:`process_capture` as a Prefect task. It opens the inbox itself, so its inputs pickle
    (a Dask worker in another process or machine can run it; ``pool`` is then None)."""
    inbox = LocalInbox(Path(source)) if layout.in_place else open_inbox(source, settings)
    return process_capture(inbox, planned, layout, params, config, code, run_id, wait, pool)


@contextlib.contextmanager
def worker_pool(
    config: BatchConfig, pending: Sequence[PlannedCapture], params: dict[str, Any]
) -> Iterator[WorkerPool | None]:
    """The run's warm workers for the heavy steps (``batch.worker_pool`` with ``isolate_stages``
    and the thread runner, when a pending capture has a heavy step): one per capture running at
    once, started now, importing the heavy steps' stages and building their models
    (:func:`~capture3d.ops.steps.warm_models`) while the first captures are prepared; closed at
    exit. None otherwise (a Dask worker runs each heavy step in a child process of its own)."""
    heavy = [
        [s for s in pipeline(p.listing.kind).capture_steps if s.heavy]
        for p in pending
        if p.listing.kind in batch_kinds()
    ]
    users = sum(1 for kind_steps in heavy if kind_steps)
    if not (config.isolate_stages and config.worker_pool and config.runner == "threads" and users):
        yield None
        return
    size = max(1, min(config.max_workers, users))
    steps = list({s.name: s for kind_steps in heavy for s in kind_steps}.values())
    with WorkerPool(
        size,
        max_tasks_per_worker=config.max_tasks_per_worker,
        max_rss_mb=config.worker_max_rss_mb,
        preload=["capture3d.ops.steps", *dict.fromkeys(s.module for s in steps)],
        prestart=size,
        warmup=(warm_models, ([s.name for s in steps], params)),
    ) as pool:
        yield pool


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
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": max(1, config.max_workers),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": api_url},
        },
    )


@flow(name="batch", validate_parameters=False)
def batch(
    source: str,
    work: str,
    params_file: str | None = None,
    overrides: list[str] | None = None,
    endpoint_url: str | None = None,
    remote: str | None = None,
    names: list[str] | None = None,
    kinds: list[str] | None = None,
    folder_kind: str | None = None,
    results: str | None = None,
) -> list[dict[str, Any]] | State:
    """Process every pending capture of ``source`` (of ``kinds``, default all) into ``work``; one
    row per capture. Captures run on :func:`task_runner`. ``folder_kind``: a folder run (see the
    module docstring): every sub-folder of the local ``source`` is a capture of that kind, read in
    place, with its results under ``results``."""
    params = load_params(Path(params_file) if params_file else None, overrides or ())
    config = load_batch_config(params, endpoint_url, remote)
    if folder_kind is not None:
        inbox: Inbox = LocalInbox(Path(source), include_empty=True)
        layout = WorkLayout(Path(work), Path(results) if results else None, in_place=True)
    else:
        inbox, layout = open_inbox(source, config.s3()), WorkLayout(Path(work))
    todo = plan(inbox, Path(work), params, names, kinds, force_kind=folder_kind)
    table, flagged = run_plan(source, todo, layout, params, config)
    if folder_kind is not None and config.record_dvc:
        record_folder_run(folder_kind, Path(source), layout.results, table, params_file, overrides or ())
    if flagged:  # the run's state says so: a scheduled run with regressions shows as failed
        return Failed(message=f"{len(flagged)} regression(s) against the last good run: {flagged[0]}", data=table)
    return table


def record_folder_run(
    kind: str,
    captures_root: Path,
    results: Path,
    rows: Sequence[dict[str, Any]],
    params_file: str | None,
    overrides: Sequence[str],
) -> None:
    """Inside the DVC project on its own paths: ``dvc commit`` the finished captures' stages (only
    when the run used params.yaml as is: overrides make outputs that differ from it)."""
    if overrides:
        get_run_logger().warning("overrides given: outputs not recorded in DVC (they differ from params.yaml)")
        return
    done = [r["capture"] for r in rows if r.get("status") in ("ok", "partial", "current")]
    repo = Path(params_file).resolve().parent if params_file else Path.cwd()
    record_stages(repo, dvc_targets(repo, captures_root, results, done, kind))


def run_plan(
    source: str, todo: Plan, layout: WorkLayout, params: dict[str, Any], config: BatchConfig
) -> tuple[list[dict[str, Any]], list[str]]:
    """Submit the pending captures (those another run holds again at the end, waiting for them)
    and write the run summary (``runs/<run id>.json`` and ``.md``, a Prefect markdown artifact)
    and the HTML report (``runs/<run id>.html``), compared with the last good run. Returns the
    rows and the regressions found (one line each)."""
    run_logger = get_run_logger()
    run_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}"
    if config.remote and todo.pending:
        ensure_store(layout.root, config.remote, config.s3().endpoint_url)
    rows: dict[str, dict[str, Any]] = {row["capture"]: row for row in todo.rows()}
    settings = config.s3()
    with task_runner(config) as runner, worker_pool(config, todo.pending, params) as pool:
        for wait in (False, True):  # a capture another run holds is retried at the end, waiting for it
            batch_todo = [p for p in todo.pending if rows.get(p.listing.name, {}).get("status") in (None, "busy")]
            futures = {
                p.listing.name: runner.submit(
                    capture_task,
                    parameters={
                        "name": p.listing.name,
                        "source": source,
                        "settings": settings,
                        "planned": p,
                        "layout": layout,
                        "params": params,
                        "config": config,
                        "code": todo.code,
                        "run_id": run_id,
                        "wait": wait,
                        "pool": pool,
                    },
                )
                for p in batch_todo
            }
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
    summary = {
        "run_id": run_id,
        "code_version": todo.code,
        "finished": now(),
        "params_hashes": {p.listing.name: p.params_digest for p in todo.pending},
        "captures": table,
    }
    write_json(layout.runs / f"{run_id}.json", summary)
    previous = last_good_run(layout.runs, exclude=run_id)
    report = build_report(layout.root, layout.runs / f"{run_id}.html", previous=previous, results_root=layout.results)
    flagged = [f"{r.capture}: {r.metric} {r.old:.4g} -> {r.new:.4g}" for r in report.regressions]
    flagged += [f"{name}: newly failed" for name in report.newly_failed]
    summary.update(report=str(report.path), baseline=report.previous_run_id, regressions=flagged)
    write_json(layout.runs / f"{run_id}.json", summary)
    markdown = rows_markdown(table)
    if flagged:
        markdown += f"\n\n**Regressions against run {report.previous_run_id}:**\n" + "\n".join(
            f"- {f}" for f in flagged
        )
    (layout.runs / f"{run_id}.md").write_text(markdown + "\n")
    create_markdown_artifact(markdown=markdown, key="batch-summary", description=f"capture3d batch {run_id}")
    run_logger.info("batch %s finished (report %s):\n%s", run_id, report.path, markdown)
    return table, flagged


def run_batch_flow(
    source: str,
    work: Path,
    params_file: Path | None,
    overrides: Sequence[str],
    endpoint_url: str | None,
    remote: str | None,
    names: Sequence[str] | None,
) -> tuple[list[dict[str, Any]], str]:
    """Run the ``batch`` flow (from the command line): the rows, and the failure message of a run
    that found regressions ("" otherwise)."""
    state = batch(
        source,
        str(work),
        str(params_file) if params_file else None,
        list(overrides),
        endpoint_url,
        remote,
        list(names) if names else None,
        return_state=True,
    )
    return _rows(state), "" if state.is_completed() else (state.message or state.name)


def folder_work_area(out_root: Path) -> Path:
    """The work area of a folder run whose results go to ``out_root`` (never versioned)."""
    return Path(out_root) / ".capture3d"


def run_folder(
    kind: str,
    captures_root: Path,
    out_root: Path,
    names: Sequence[str] | None = None,
    params_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[CaptureStatus]:
    """A folder run of the ``batch`` flow (``capture3d reconstruct`` / ``register-batch`` /
    ``bodies-batch``, the demo): every sub-folder of ``captures_root`` (or ``names``) is a capture of
    ``kind``; results in ``<out_root>/<capture>/<step>``, work area in ``<out_root>/.capture3d``."""
    if not Path(captures_root).is_dir():  # one line before any Prefect run starts
        raise SourceError(f"captures folder '{captures_root}' not found")
    out_root = Path(out_root)
    work = folder_work_area(out_root)
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")  # the work area is never versioned
    state = batch(
        str(captures_root),
        str(work),
        str(params_file) if params_file else None,
        list(overrides),
        names=list(names) if names else None,
        folder_kind=kind,
        results=str(out_root),
        return_state=True,
    )
    return [CaptureStatus.from_row(row, WorkLayout(work).manifests) for row in _rows(state)]


def _rows(state: State) -> list[dict[str, Any]]:
    """The rows of a finished ``batch`` run (a run flagged with regressions carries them as its
    data); the exception of a run that failed outright is raised."""
    rows = state.result(raise_on_failure=False)
    if isinstance(rows, BaseException):
        raise rows
    return rows
