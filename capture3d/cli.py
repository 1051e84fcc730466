"""The ``capture3d`` command: one subcommand per stage (generated from the catalog), the demo and the flows.

Every stage subcommand (``sfm``, ``evaluate sfm``, ``register``, ``fit gaussians`` ...: each
catalog step's ``command``) has the flags of ``python -m capture3d.stages.<name>``
(:mod:`capture3d.stage_cli`: inputs, ``--params FILE``, ``--set SECTION.KEY=VALUE`` in the syntax
of ``dvc exp run -S``, one flag per params field) with ``--out`` defaulting to the step's output
folder, runs the stage and prints its metrics (:mod:`capture3d.cli_tables`). The other commands
run the Prefect flows (``demo``, ``reconstruct``, ``register-batch``, ``bodies-batch``, ``batch``,
``train fcgf --captures``), deploy and serve them, report, or fetch the real sample captures
(``samples``). Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from capture3d import catalog, stage_cli
from capture3d.cli_tables import print_demo, print_metrics, print_statuses, show_stage
from capture3d.config import load_params
from capture3d.errors import Capture3dError
from capture3d.stages.common import add_params_arguments, configure_logging, error_line

logger = logging.getLogger(__name__)

GROUPS = {
    "evaluate": "evaluate a stage's result",
    "train": "train a learned model",
    "fit": "fit 3D Gaussians or a NeRF to a posed capture, or bodies to keypoints",
}
FOLDER_RUNS = {
    "reconstruct": ("photos", "reconstruct: photo captures"),
    "register-batch": ("scans", "register_scans: scan captures"),
    "bodies-batch": ("bodies", "fit_bodies: body captures"),
}
"""command -> (capture kind, status table title): the batch flow over a folder of captures"""


def _prefect_environment() -> None:
    """Prefect settings for an offline machine: embedded server, no analytics."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # A fresh database (first run, new PREFECT_HOME) migrates before answering: more than the
    # default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _names(text: str) -> list[str] | None:
    return [n for n in text.split(",") if n] if text else None


def cmd_stage(args: argparse.Namespace) -> int:
    """Any catalog step: run the stage, print its metrics."""
    step = catalog.step(args.stage)
    module = importlib.import_module(step.module)
    call = stage_cli.invocation(module, step, args)
    args.label = call.label
    if step.name == "train_fcgf" and args.captures is not None:
        return _train_flow(args, call)
    out = stage_cli.run_invocation(module, call, args.params)
    if step.metrics:
        show_stage(step, json.loads((out / step.metrics).read_text()))
    return 0


def _train_flow(args: argparse.Namespace, call: stage_cli.Invocation) -> int:
    _prefect_environment()
    from capture3d.flows.train_fcgf import train_fcgf

    trained, statuses = train_fcgf(
        call.out, args.captures, args.results, _names(args.names), args.params, call.overrides
    )
    print_metrics("train fcgf", trained, catalog.step("train_fcgf").display)
    print_statuses([s.row() for s in statuses], "evaluate_features: scan captures")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_folder(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.batch import run_folder

    kind, title = FOLDER_RUNS[args.command]
    statuses = run_folder(kind, args.captures, args.out, _names(args.names), args.params, args.overrides)
    print_statuses([s.row() for s in statuses], title, kind)
    return 0 if all(s.ok for s in statuses) else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from capture3d.ops.batch_plan import load_batch_config, plan
    from capture3d.ops.inbox import open_inbox

    params = load_params(args.params, args.overrides)
    config = load_batch_config(params, args.endpoint_url, args.remote)
    todo = plan(open_inbox(args.source, config.s3()), args.work, params, _names(args.names))
    if not todo.pending:  # nothing to do: answer without starting Prefect
        print(f"batch: nothing to do ({len(todo.current)} current, {len(todo.refused)} refused)")
        print_statuses(todo.rows(), "batch: captures")
        return 0 if all(r.get("status") in ("ok", "partial", "current") for r in todo.rows()) else 1
    _prefect_environment()
    from capture3d.flows.batch import run_batch_flow

    rows, regressions = run_batch_flow(
        args.source, args.work, args.params, args.overrides, args.endpoint_url, args.remote, _names(args.names)
    )
    print_statuses(rows, "batch: captures")
    report = sorted(Path(args.work, "runs").glob("*.html"))
    print(f"report: {report[-1]}" if report else "report: none")
    if regressions:
        print(f"batch: {regressions}")
        return 1
    return 0 if all(r.get("status") in ("ok", "partial", "current") for r in rows) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from capture3d.ops.report import build_report, last_good_run, load_run

    runs = sorted(Path(args.work, "runs").glob("*.json"), key=lambda p: str((load_run(p) or {}).get("finished", "")))
    latest = (load_run(runs[-1]) or {}).get("run_id") if runs else None
    previous = args.previous or last_good_run(Path(args.work, "runs"), exclude=latest)
    result = build_report(args.work, args.out or Path(args.work, "report.html"), previous=previous)
    print(
        f"report: {result.path} ({result.num_captures} captures, {result.num_figures} figures, "
        f"{len(result.regressions)} regression(s) against {result.previous_run_id or 'no baseline'})"
    )
    for r in result.regressions:
        print(f"  regression {r.capture}: {r.metric} {r.old:.4g} -> {r.new:.4g}")
    return 1 if result.regressions or result.newly_failed else 0


def cmd_results(args: argparse.Namespace) -> int:
    from capture3d import results

    text = results.write(results.load(args.path), args.format, args.out)
    if args.out is not None:
        print(f"results: {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from capture3d.ops.project import init

    for path in init(args.dir):
        print(f"init: {path}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from capture3d.ops.project import add

    target = add(args.project, args.kind, args.capture_name, args.path)
    print(f"add: {args.kind} capture '{args.capture_name}' -> {target}")
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    """``samples list`` / ``samples fetch``: the registry's real captures (capture3d.ops.samples)."""
    from capture3d.ops import samples

    registry = samples.load_registry()
    if args.samples_command == "list":
        print("\n".join(samples.describe(registry)))
        return 0
    mirror, failed = samples.resolve_mirror(args.mirror), 0
    for s in samples.select(registry, args.names):
        try:
            r = samples.fetch_sample(s, args.to, mirror, attempts=args.retries)
        except Capture3dError as exc:
            sys.stderr.write(f"error: {exc}\n")
            failed += 1
            continue
        print(f"samples: {r.name} -> {r.path} ({r.downloaded} downloaded, {r.present} already present)")
    return Capture3dError.exit_code if failed else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.deploy import deploy_batch

    for name in deploy_batch(
        args.source,
        args.work,
        args.params,
        args.overrides,
        cron=args.cron,
        interval_s=args.interval,
        endpoint_url=args.endpoint_url,
        remote=args.remote,
        run_now=args.run_now,
    ):
        print(f"deployment {name}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.deploy import start_worker

    return start_worker(args.pool, run_once=args.run_once, limit=args.limit)


def cmd_demo(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.demo import demo, demo_report_path

    repo = Path(args.repo).resolve()
    statuses = demo(repo)
    samples = []  # (title, sample capture name) per kind
    for kind, title in FOLDER_RUNS.values():
        spec = catalog.pipeline(kind)
        samples += [
            (title, Path(catalog.fill(s.out_template, data=spec.captures_dir)).name)
            for s in spec.steps
            if not s.per_capture
        ]
    print_demo(statuses, samples)
    print(f"\nreport: {demo_report_path(repo)}")
    print("every metric: `capture3d results` (--format table|csv|parquet) or `dvc metrics show`")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_pose_prior(args: argparse.Namespace) -> int:
    from capture3d.tasks.body.anny_model import AnnyBody
    from capture3d.tasks.body.pose_prior import SHIPPED_PRIOR, learn_pose_prior, load_mocap_clips
    from capture3d.tasks.body.real_eval import MOCAP_EVAL_CLIPS

    out = args.out or SHIPPED_PRIOR
    try:
        clips, names = load_mocap_clips(args.mocap, MOCAP_EVAL_CLIPS if args.exclude is None else args.exclude)
    except (OSError, KeyError, ValueError) as exc:
        raise Capture3dError(f"train pose-prior: {exc}") from None
    prior = learn_pose_prior(AnnyBody(), clips, names, components=args.components, stride=args.stride, seed=args.seed)
    prior.save(out)
    print(f"pose prior: {len(prior.joints)} Anny bones, {args.components} components -> {out}")
    for key in ("frames", "samples", "retarget_error_deg_median", "retarget_error_deg_p95", "seconds"):
        print(f"  {key}: {prior.info[key]}")
    return 0


def _add_pose_prior_command(train: argparse._SubParsersAction) -> None:
    p = train.add_parser(
        "pose-prior",
        help="learn Anny's Gaussian-mixture pose prior from motion capture (retargeted joint positions)",
    )
    p.add_argument("--mocap", type=Path, required=True, help="joints21_30fps.npz-style clips (metres, y up)")
    p.add_argument(
        "--exclude",
        nargs="*",
        default=None,
        help="clips left out (default: the real-data evaluation clips, real_eval.MOCAP_EVAL_CLIPS)",
    )
    p.add_argument("--stride", type=int, default=2, help="use every n-th frame (default 2: 15 fps)")
    p.add_argument("--components", type=int, default=8, help="Gaussians in the mixture (SMPLify: 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="prior file (default: the shipped one, replaced)")
    p.set_defaults(func=cmd_pose_prior)


def _stage_commands(sub: argparse._SubParsersAction, words: Sequence[str] | None) -> None:
    """One subcommand per catalog step; only the one ``words`` names gets its flags (building them
    imports the stage module), unless ``words`` is None (every one)."""
    groups: dict[str, argparse._SubParsersAction] = {}
    for step in (s for s in catalog.steps() if s.command):
        *group, word = step.command
        parent = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help=GROUPS.get(group[0], ""))
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", required=True)
            parent = groups[group[0]]
        p = parent.add_parser(word, help=step.help, description=step.help)
        if words is None or list(words[: len(step.command)]) == list(step.command):
            stage_cli.add_stage_arguments(p, importlib.import_module(step.module), step, default_out=True)
            if step.name == "train_fcgf":
                p.add_argument("--captures", type=Path, help="then evaluate on these scan captures (Prefect flow)")
                p.add_argument(
                    "--results", type=Path, help="results root for --captures (default: the captures folder)"
                )
                p.add_argument("--names", default="", help="comma-separated captures for --captures (default: all)")
        p.set_defaults(func=cmd_stage, stage=step.name)
    _add_pose_prior_command(groups["train"])


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``capture3d`` parser; with ``argv`` only the stage subcommand it names gets its flags
    (the others stay cheap: no stage module imported), without it every one."""
    parser = argparse.ArgumentParser(prog="capture3d", description="Captured photos and scans to 3D results.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="synthesize the sample captures and run every pipeline through Prefect")
    p.add_argument("--repo", default=".", help="the capture3d project folder (default: .)")
    p.set_defaults(func=cmd_demo)
    _stage_commands(sub, None if argv is None else [a for a in argv if not a.startswith("-")])
    for command, (_, title) in FOLDER_RUNS.items():
        p = sub.add_parser(command, help=f"Prefect flow over a folder of {title.split(': ')[1]}")
        p.add_argument("--captures", type=Path, required=True, help="folder holding one sub-folder per capture")
        p.add_argument("--out", type=Path, required=True, help="results root: <out>/<capture>/<step>")
        p.add_argument("--names", default="", help="comma-separated captures (default: all sub-folders)")
        add_params_arguments(p)
        p.set_defaults(func=cmd_folder)

    p = sub.add_parser(
        "batch",
        help="process an inbox of captures (folder or s3://bucket/prefix): fetch new or "
        "changed ones, run their flows, push artifacts to the DVC remote, write manifests",
    )
    p.add_argument("source", help="inbox: a folder or s3://BUCKET/PREFIX with one sub-folder per capture")
    p.add_argument(
        "--work",
        type=Path,
        required=True,
        help="work area: inbox/ mirror, results/, manifests/, runs/ (a DVC store when pushing)",
    )
    p.add_argument("--endpoint-url", default=None, help="S3 API endpoint (default: params batch.endpoint_url)")
    p.add_argument("--remote", default=None, help="DVC remote URL for the artifacts (default: params batch.remote)")
    p.add_argument("--names", default="", help="comma-separated captures (default: all)")
    add_params_arguments(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("deploy", help="Prefect deployments of the batch flow on the GPU and CPU work pools")
    p.add_argument("source", help="inbox: a folder or s3://BUCKET/PREFIX")
    p.add_argument("--work", type=Path, required=True, help="work area of the scheduled runs")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help="cron schedule (default: params batch.schedule_cron)")
    when.add_argument("--interval", type=float, default=None, help="interval in seconds (default: params)")
    p.add_argument("--endpoint-url", default=None, help="S3 API endpoint")
    p.add_argument("--remote", default=None, help="DVC remote URL for the artifacts")
    p.add_argument("--run-now", action="store_true", help="also schedule one run of each deployment now")
    add_params_arguments(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("worker", help="start a Prefect worker on a work pool (runs the deployed batches)")
    p.add_argument("--pool", required=True, help="work pool: params batch.gpu_pool or batch.cpu_pool")
    p.add_argument("--run-once", action="store_true", help="take the runs that are due, then exit")
    p.add_argument("--limit", type=int, default=None, help="most flow runs at once")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("report", help="HTML quality report of a batch work area (runs, captures, regressions)")
    p.add_argument("--work", type=Path, required=True, help="the work area of `capture3d batch`")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default: <work>/report.html)")
    p.add_argument(
        "--previous", type=Path, default=None, help="baseline run JSON (default: the last good run before the latest)"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "results",
        help="every metric of a work area, a folder run or a project as one tidy table (pandas): print or write it",
    )
    p.add_argument("path", nargs="?", type=Path, default=Path("."), help="work area, results root or project (.)")
    p.add_argument("--format", choices=("table", "csv", "parquet"), default="table", help="output format")
    p.add_argument("--out", type=Path, default=None, help="write to this file (parquet: required)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("init", help="scaffold a capture3d project: params.yaml, dvc.yaml, .dvc/, .gitignore")
    p.add_argument("dir", nargs="?", type=Path, default=Path("."), help="project folder (default: .)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("add", help="add a capture to the project in . (copied to its kind's folder; dvc.yaml updated)")
    p.add_argument("kind", choices=catalog.batch_kinds(), help="capture kind")
    p.add_argument("capture_name", metavar="name", help="capture name (letters, digits, '.', '_', '-')")
    p.add_argument("path", type=Path, help="the capture folder")
    p.add_argument("--project", type=Path, default=Path("."), help="project folder (default: .)")
    p.set_defaults(func=cmd_add)
    _add_samples_command(sub)
    return parser


def _add_samples_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("samples", help="list or fetch the small real sample captures (sha256-checked, resumable)")
    ss = p.add_subparsers(dest="samples_command", required=True)
    ss.add_parser("list", help="the samples: folder, size, source, licence").set_defaults(func=cmd_samples)
    p = ss.add_parser("fetch", help="download samples into DIR/<kind>/<name>, sha256-verified, resuming cut downloads")
    p.add_argument("names", nargs="*", metavar="NAME", help="samples to fetch (default: all; see `samples list`)")
    p.add_argument("--to", type=Path, default=Path("samples"), help="target folder (default: samples)")
    p.add_argument(
        "--mirror",
        default=None,
        help="base URL (or folder) laid out like the samples folder (default: $CAPTURE3D_SAMPLES_URL, "
        "else the public upstream copies, which only the unchanged files have)",
    )
    p.add_argument("--retries", type=int, default=5, help="attempts per file (exponential backoff between)")
    p.set_defaults(func=cmd_samples)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    configure_logging(args.verbose)
    try:
        if sys.stderr.isatty():  # progress bars for a person at a terminal; plain logs otherwise
            from capture3d.progress import rich_progress

            with rich_progress():
                return int(args.func(args))
        return int(args.func(args))
    except Capture3dError as exc:
        logger.debug("failed", exc_info=True)
        folder = getattr(args, "capture", None) or getattr(args, "keypoints", None)
        label = getattr(args, "label", "") or getattr(args, "name", "") or (Path(folder).name if folder else "")
        sys.stderr.write(f"error: {error_line(exc, label)}\n")
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
