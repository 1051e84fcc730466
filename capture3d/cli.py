"""The ``capture3d`` command: the demo, one subcommand per stage, evaluation, and batch flows.

Every subcommand reads ``params.yaml`` (or ``--params FILE``) and takes ``--set SECTION.KEY=VALUE``
overrides in the syntax of ``dvc exp run -S``. Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from capture3d.config import load_params
from capture3d.errors import Capture3dError
from capture3d.stages.common import add_params_arguments, configure_logging, error_line

logger = logging.getLogger(__name__)

SFM_TABLE_KEYS = (
    "registered_fraction", "num_registered", "num_images", "num_models", "num_points3d", "mean_track_length",
    "mean_reprojection_error_px", "rotation_error_deg_median", "rotation_error_deg_max", "position_error_median",
    "position_error_max", "auc_rel_pose_5deg",
)


REGISTRATION_TABLE_KEYS = (
    "num_scans", "num_placed", "num_low_confidence", "num_within_tolerance", "ape_rotation_deg_median", "ape_rotation_deg_max",
    "ape_translation_median", "ape_translation_max", "registration_recall", "num_pairs", "fused_chamfer",
    "fused_precision", "fused_recall", "fused_fscore", "voxel_size", "num_confident_pairs", "mean_pair_fitness",
    "mean_pair_inlier_rmse",
)


def _prefect_environment() -> None:
    """Prefect settings for an offline machine: embedded server, no analytics."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # A fresh database (first run, new PREFECT_HOME) migrates before answering: more than the
    # default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def print_metrics(title: str, metrics: dict[str, Any], keys: Sequence[str] = SFM_TABLE_KEYS) -> None:
    """A two-column table of the metrics that are present."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        if key in metrics:
            table.add_row(key, _fmt(metrics[key]))
    _console().print(table)


def print_statuses(rows: list[dict[str, Any]], title: str = "captures") -> None:
    """One row per capture: status, summary metrics, reason when failed."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    table = Table(title=title)
    for key in keys:
        table.add_column(key, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(k, "")) for k in keys))
    _console().print(table)


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cmd_sfm(args: argparse.Namespace) -> int:
    from capture3d.stages import sfm

    overrides = list(args.overrides)
    for key in ("mapper", "matcher", "camera_model", "camera_mode"):
        if getattr(args, key):
            overrides.append(f"sfm.{key}={getattr(args, key)}")
    if args.camera_params:
        overrides += [f"sfm.camera_params={args.camera_params}", "sfm.intrinsics=known"]
    if args.self_calibrate:
        overrides.append("sfm.intrinsics=self_calibrate")
    config = sfm.load_config(load_params(args.params, overrides))
    out = sfm.run(sfm.SfmInputs(args.images, args.name), args.out, config)
    metrics = json.loads((out / "metrics.json").read_text())
    print_metrics(f"sfm: {metrics['capture']}", metrics)
    return 0


def cmd_evaluate_sfm(args: argparse.Namespace) -> int:
    from capture3d.stages import evaluate_sfm

    overrides = list(args.overrides)
    if args.gt_format:
        overrides.append(f"evaluate_sfm.gt_format={args.gt_format}")
    config = evaluate_sfm.load_config(load_params(args.params, overrides))
    gt = args.gt if args.gt is not None else (evaluate_sfm.find_ground_truth(args.capture) if args.capture else None)
    out = args.out or (args.model.parent / "evaluate_sfm")
    inputs = evaluate_sfm.EvaluateSfmInputs(args.model, gt, args.num_images, args.name)
    metrics = evaluate_sfm.read_metrics(evaluate_sfm.run(inputs, out, config))
    print_metrics(f"evaluate sfm: {metrics['capture']}", metrics)
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from capture3d.stages import synthesize

    synthesize.run(args.out, synthesize.load_config(load_params(args.params, args.overrides)))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.batch import run_with_workers
    from capture3d.flows.reconstruct import reconstruct

    names = [n for n in args.names.split(",") if n] if args.names else None
    statuses = run_with_workers(reconstruct, args.captures, args.out, names, args.params, args.overrides)
    print_statuses([s.row() for s in statuses], "reconstruct: captures")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_batch(args: argparse.Namespace) -> int:
    from capture3d.ops.batch_plan import load_batch_config, plan
    from capture3d.ops.inbox import open_inbox

    names = [n for n in args.names.split(",") if n] if args.names else None
    params = load_params(args.params, args.overrides)
    config = load_batch_config(params, args.endpoint_url, args.remote)
    todo = plan(open_inbox(args.source, config.s3()), args.work, params, names)
    if not todo.pending:  # nothing to do: answer without starting Prefect
        print(f"batch: nothing to do ({len(todo.current)} current, {len(todo.refused)} refused)")
        rows = todo.rows()
    else:
        _prefect_environment()
        from capture3d.flows.inbox import run_batch_flow

        rows, regressions = run_batch_flow(args.source, args.work, args.params, args.overrides, args.endpoint_url,
                                           args.remote, names)
    print_statuses(rows, "batch: captures")
    if todo.pending:
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
    print(f"report: {result.path} ({result.num_captures} captures, {result.num_figures} figures, "
          f"{len(result.regressions)} regression(s) against {result.previous_run_id or 'no baseline'})")
    for r in result.regressions:
        print(f"  regression {r.capture}: {r.metric} {r.old:.4g} -> {r.new:.4g}")
    return 1 if result.regressions or result.newly_failed else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.deploy import deploy_batch

    names = deploy_batch(args.source, args.work, args.params, args.overrides, cron=args.cron,
                         interval_s=args.interval, endpoint_url=args.endpoint_url, remote=args.remote,
                         run_now=args.run_now)
    for name in names:
        print(f"deployment {name}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.deploy import start_worker

    return start_worker(args.pool, run_once=args.run_once, limit=args.limit)


def cmd_demo(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.demo import (
        DEMO_BODY_CAPTURE,
        DEMO_CAPTURE,
        DEMO_SCAN_CAPTURE,
        demo,
    )

    repo = Path(args.repo).resolve()
    statuses = demo(repo)
    for status in statuses:
        if status.ok and "bodies_fitted" in status.metrics:
            print_metrics(f"demo capture '{status.name}': body fits against ground truth", status.metrics,
                          BODY_STATUS_KEYS)
        elif status.ok and "num_placed" in status.metrics:
            print_metrics(f"demo capture '{status.name}': registration against ground truth", status.metrics,
                          REGISTRATION_TABLE_KEYS)
        elif status.ok:
            print_metrics(f"demo capture '{status.name}': SfM against ground truth; 3DGS and NeRF on held-out views",
                          status.metrics, SFM_TABLE_KEYS + ("gaussians_psnr", "gaussians_ssim", "nerf_psnr", "nerf_ssim"))
    for title, name in (("reconstruct: photo captures", DEMO_CAPTURE),
                        ("register_scans: scan captures", DEMO_SCAN_CAPTURE),
                        ("fit_bodies: body captures", DEMO_BODY_CAPTURE)):
        print_statuses([s.row() for s in statuses if s.name == name], title)
    return 0 if all(s.ok for s in statuses) else 1


def cmd_register(args: argparse.Namespace) -> int:
    from capture3d.stages import register_scans

    overrides = list(args.overrides)
    for flag, key in (("voxel", "preprocess.voxel_size"), ("features", "features"),
                      ("global_method", "pair.global_method"), ("icp", "pair.icp_method"), ("pairs", "multiway.pairs"),
                      ("sensor_origin", "sensor_origin")):
        if getattr(args, flag) is not None:
            overrides.append(f"register_scans.{key}={getattr(args, flag)}")
    config = register_scans.load_config(load_params(args.params, overrides))
    out = register_scans.run(register_scans.RegisterScansInputs(args.scans, args.name), args.out, config)
    metrics = json.loads((out / "metrics.json").read_text())
    print_metrics(f"register: {metrics['capture']}", metrics, REGISTRATION_TABLE_KEYS + ("num_points_fused",))
    console = Console()
    for name, reason in metrics["unplaced"].items():
        console.print(f"unplaced: {name}: {reason}")
    for name, reason in metrics.get("low_confidence", {}).items():
        console.print(f"low confidence: {name}: {reason}")
    console.print(f"status: {metrics['status']} (free-space test: {metrics['verification']['free_space_test']})")
    return 0


def cmd_evaluate_registration(args: argparse.Namespace) -> int:
    from capture3d.stages import evaluate_registration

    overrides = list(args.overrides)
    if args.gt_format:
        overrides.append(f"evaluate_registration.gt_format={args.gt_format}")
    config = evaluate_registration.load_config(load_params(args.params, overrides))
    out = args.out or (args.result.parent / "evaluate_registration")
    inputs = evaluate_registration.EvaluateRegistrationInputs(args.result, args.scans, args.gt, args.name)
    metrics = evaluate_registration.read_metrics(evaluate_registration.run(inputs, out, config))
    print_metrics(f"evaluate registration: {metrics['capture']}", metrics, REGISTRATION_TABLE_KEYS)
    return 0


def cmd_synthesize_scans(args: argparse.Namespace) -> int:
    from capture3d.stages import synthesize_scans

    synthesize_scans.run(args.out, synthesize_scans.load_config(load_params(args.params, args.overrides)))
    return 0


def cmd_register_batch(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.batch import run_with_workers
    from capture3d.flows.register_scans import register_scans

    names = [n for n in args.names.split(",") if n] if args.names else None
    statuses = run_with_workers(register_scans, args.captures, args.out, names, args.params, args.overrides)
    print_statuses([s.row() for s in statuses], "register_scans: scan captures")
    return 0 if all(s.ok for s in statuses) else 1


TRAIN_TABLE_KEYS = (
    "iterations", "resumed_from", "num_train_pairs", "num_val_pairs", "loss_first_50", "loss_last_50",
    "val_fmr_initial", "val_fmr", "val_inlier_ratio_initial", "val_inlier_ratio", "seconds_per_iteration",
    "wall_s", "device",
)
FEATURE_TABLE_KEYS = ("num_pairs", "feature_match_recall", "inlier_ratio", "registration_recall",
                      "median_rotation_error_deg", "median_translation_error", "extract_s_per_scan", "dimension")


def print_feature_table(title: str, features: dict[str, dict[str, Any]]) -> None:
    """One row per metric, one column per descriptor."""
    table = Table(title=title)
    table.add_column("metric")
    for name in features:
        table.add_column(name, justify="right")
    for key in FEATURE_TABLE_KEYS:
        table.add_row(key, *(_fmt(features[name].get(key)) for name in features))
    _console().print(table)


def cmd_train_fcgf(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (("iterations", "iterations"), ("device", "device"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"train_fcgf.{key}={getattr(args, flag)}")
    if args.extra_capture:
        overrides.append(f"train_fcgf.data.extra_captures=[{', '.join(map(str, args.extra_capture))}]")
    if args.captures is None:
        from capture3d.stages import train_fcgf

        out = train_fcgf.run(args.out, train_fcgf.load_config(load_params(args.params, overrides)))
        print_metrics("train fcgf", json.loads((out / "metrics.json").read_text()), TRAIN_TABLE_KEYS)
        return 0
    _prefect_environment()
    from capture3d.flows.train_fcgf import train_fcgf as train_flow

    names = [n for n in args.names.split(",") if n] if args.names else None
    trained, statuses = train_flow(args.out, args.captures, args.results, names, args.params, overrides)
    print_metrics("train fcgf", trained, TRAIN_TABLE_KEYS)
    print_statuses([s.row() for s in statuses], "evaluate_features: scan captures")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_evaluate_features(args: argparse.Namespace) -> int:
    from capture3d.stages import evaluate_features

    overrides = list(args.overrides)
    if args.features:
        overrides.append(f"evaluate_features.features=[{args.features}]")
    configs = evaluate_features.load_config(load_params(args.params, overrides))
    out = args.out or (Path("results") / (args.name or args.scans.name) / "evaluate_features")
    inputs = evaluate_features.EvaluateFeaturesInputs(args.scans, args.name, args.checkpoint, args.gt)
    metrics = json.loads((evaluate_features.run(inputs, out, configs) / "metrics.json").read_text())
    print_feature_table(f"features on {metrics['capture']} (voxel {metrics['voxel_size']:.3g}, "
                        f"{metrics['global_method']})", metrics["features"])
    return 0


NVS_TABLE_KEYS = ("psnr", "ssim", "psnr_init", "ssim_init", "num_train_views", "num_test_views", "resolution",
                  "num_init_points", "num_gaussians", "iterations", "stopped", "fit_s", "wall_s", "peak_memory_mb",
                  "device", "backend")


def cmd_fit(args: argparse.Namespace) -> int:
    from capture3d.stages import fit_gaussians, fit_nerf
    from capture3d.stages.nvs_common import NvsInputs

    stage = {"gaussians": fit_gaussians, "nerf": fit_nerf}[args.method]
    section_name = f"fit_{args.method}"
    overrides = list(args.overrides)
    for flag, key in (("iterations", "iterations"), ("max_seconds", "max_seconds"), ("device", "device"),
                      ("seed", "seed"), ("resolution_scale", "data.resolution_scale"), ("backend", "backend")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{section_name}.{key}={value}")
    config = stage.load_config(load_params(args.params, overrides))
    out = args.out or (Path("results") / (args.name or args.capture.name) / section_name)
    metrics = json.loads((stage.run(NvsInputs(args.capture, args.name), out, config) / "metrics.json").read_text())
    print_metrics(f"fit {args.method}: {metrics['capture']} (held-out views)", metrics, NVS_TABLE_KEYS)
    per_view = Table(title="held-out views")
    for col in ("view", "psnr", "ssim"):
        per_view.add_column(col, justify="right")
    for row in metrics["per_view"]:
        per_view.add_row(str(row["view"]), _fmt(row["psnr"]), _fmt(row["ssim"]))
    _console().print(per_view)
    return 0


BODY_TABLE_KEYS = ("people_fitted", "people_skipped", "bodies", "reference_2d", "median_error_px",
                   "median_error_norm", "median_pck_0.1", "median_mpjpe_mm", "median_pa_mpjpe_mm",
                   "mean_mpjpe_mm", "mean_pa_mpjpe_mm", "iterations", "fit_seconds", "seconds_per_iteration")
BODY_STATUS_KEYS = ("bodies_fitted", "bodies_skipped", "body_error_norm", "body_mpjpe_mm", "body_pa_mpjpe_mm")


def print_body_rows(metrics: dict[str, Any]) -> None:
    table = Table(title="bodies")
    for col in ("body", "error_px", "error_norm", "pck_0.1", "mpjpe_mm", "pa_mpjpe_mm"):
        table.add_column(col, justify="right")
    for row in metrics["per_body"]:
        table.add_row(*(_fmt(row[c]) if c in row else "" for c in
                        ("body", "error_px", "error_norm", "pck_0.1", "mpjpe_mm", "pa_mpjpe_mm")))
    _console().print(table)
    for skip in metrics.get("skipped", []):
        _console().print(f"skipped: {skip['person']}: {skip['reason']}")


def cmd_fit_bodies(args: argparse.Namespace) -> int:
    from capture3d.stages import fit_bodies

    overrides = list(args.overrides)
    for flag, key in (("model", "model"), ("model_file", "model_file"), ("device", "device"), ("seed", "seed"),
                      ("sequence", "sequence")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"fit_bodies.{key}={value}")
    config = fit_bodies.load_config(load_params(args.params, overrides))
    inputs = fit_bodies.inputs_from_args(args)
    out = args.out or (Path("results") / inputs.label / "fit_bodies")
    metrics = json.loads((fit_bodies.run(inputs, out, config) / "metrics.json").read_text())
    print_metrics(f"fit bodies: {metrics['capture']}", metrics, BODY_TABLE_KEYS)
    print_body_rows(metrics)
    return 0


def cmd_evaluate_bodies(args: argparse.Namespace) -> int:
    from capture3d.stages import evaluate_bodies

    config = evaluate_bodies.load_config(load_params(args.params, args.overrides))
    out = args.out or (args.result.parent / "evaluate_bodies")
    metrics = json.loads((evaluate_bodies.run(args.result, args.capture, out, config, args.name)
                          / "metrics.json").read_text())
    print_metrics(f"evaluate bodies: {metrics['capture']}", metrics, BODY_TABLE_KEYS)
    print_body_rows(metrics)
    return 0


def cmd_bodies_batch(args: argparse.Namespace) -> int:
    _prefect_environment()
    from capture3d.flows.batch import run_with_workers
    from capture3d.flows.fit_bodies import fit_bodies

    names = [n for n in args.names.split(",") if n] if args.names else None
    statuses = run_with_workers(fit_bodies, args.captures, args.out, names, args.params, args.overrides)
    print_statuses([s.row() for s in statuses], "fit_bodies: body captures")
    return 0 if all(s.ok for s in statuses) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capture3d", description="Captured photos and scans to 3D results.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthesize the sample capture and run the pipeline through Prefect")
    p.add_argument("--repo", default=".", help="the capture3d project folder (default: .)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synthesize", help="write the deterministic synthetic capture")
    p.add_argument("--out", type=Path, required=True)
    add_params_arguments(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("sfm", help="Structure-from-Motion on a folder of photos")
    p.add_argument("--images", type=Path, required=True, help="folder of photos (or a capture with images/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    p.add_argument("--name", default="", help="capture name for messages (default: folder name)")
    p.add_argument("--mapper", choices=["incremental", "global"])
    p.add_argument("--matcher", choices=["exhaustive", "sequential"])
    p.add_argument("--camera-mode", choices=["single", "per_image", "auto"])
    p.add_argument("--camera-model", help="COLMAP camera model, e.g. PINHOLE, SIMPLE_RADIAL, OPENCV")
    p.add_argument("--camera-params", help="known intrinsics for --camera-model, e.g. 'fx,fy,cx,cy'")
    p.add_argument("--self-calibrate", action="store_true", help="ignore intrinsics.json; estimate intrinsics")
    add_params_arguments(p)
    p.set_defaults(func=cmd_sfm)

    p = sub.add_parser("evaluate", help="evaluate a stage's result")
    ev = p.add_subparsers(dest="what", required=True)
    e = ev.add_parser("sfm", help="SfM metrics, against ground truth when given")
    e.add_argument("--model", type=Path, required=True, help="sfm output folder (or a COLMAP model folder)")
    e.add_argument("--gt", type=Path, help="ground-truth cameras")
    e.add_argument("--gt-format", choices=["auto", "strecha", "colmap", "transforms"])
    e.add_argument("--capture", type=Path, help="capture folder holding gt/ or gt_cameras/")
    e.add_argument("--num-images", type=int, help="number of input images (default: from the sfm metrics)")
    e.add_argument("--out", type=Path, help="output folder (default: <model>/../evaluate_sfm)")
    e.add_argument("--name", default="", help="capture name for messages")
    add_params_arguments(e)
    e.set_defaults(func=cmd_evaluate_sfm)

    p = sub.add_parser("synthesize-scans", help="write the deterministic synthetic scan capture")
    p.add_argument("--out", type=Path, required=True)
    add_params_arguments(p)
    p.set_defaults(func=cmd_synthesize_scans)

    p = sub.add_parser("register", help="multiway registration of a folder of scans")
    p.add_argument("--scans", type=Path, required=True, help="folder of point clouds (or a capture with scans/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    p.add_argument("--name", default="", help="capture name for messages (default: folder name)")
    p.add_argument("--voxel", help="voxel size in metres, or auto")
    p.add_argument("--features", help="feature name from the registry (fpfh, fcgf)")
    p.add_argument("--global-method", choices=["fgr", "ransac", "fgr_then_ransac"])
    p.add_argument("--icp", choices=["point_to_point", "point_to_plane", "colored", "generalized"])
    p.add_argument("--pairs", choices=["all", "sequential"])
    p.add_argument("--sensor-origin", choices=["auto", "scan_frame", "none"],
                   help="where each scan's sensor was, for the free-space test (default from params.yaml: auto)")
    add_params_arguments(p)
    p.set_defaults(func=cmd_register)

    e = ev.add_parser("registration", help="registration metrics against ground-truth poses")
    e.add_argument("--result", type=Path, required=True, help="register output folder")
    e.add_argument("--scans", type=Path, required=True, help="the scan capture folder")
    e.add_argument("--gt", type=Path, help="ground-truth poses (default: found in the capture)")
    e.add_argument("--gt-format", choices=["auto", "stanford", "3dmatch", "matrices", "json"])
    e.add_argument("--out", type=Path, help="output folder (default: <result>/../evaluate_registration)")
    e.add_argument("--name", default="", help="capture name for messages")
    add_params_arguments(e)
    e.set_defaults(func=cmd_evaluate_registration)

    e = ev.add_parser("features", help="FCGF vs FPFH: feature-match recall, inlier ratio, registration recall")
    e.add_argument("--scans", type=Path, required=True, help="scan capture folder with ground truth")
    e.add_argument("--checkpoint", type=Path, help="FCGF checkpoint (capture3d or official FCGF .pth)")
    e.add_argument("--features", help="comma-separated descriptors (default: evaluate_features.features)")
    e.add_argument("--gt", type=Path, help="ground-truth poses (default: found in the capture)")
    e.add_argument("--out", type=Path, help="output folder (default: results/<name>/evaluate_features)")
    e.add_argument("--name", default="", help="capture name for messages")
    add_params_arguments(e)
    e.set_defaults(func=cmd_evaluate_features)

    e = ev.add_parser("bodies", help="body fits against 2D / 3D ground truth: error, PCK, MPJPE, PA-MPJPE")
    e.add_argument("--result", type=Path, required=True, help="fit_bodies output folder")
    e.add_argument("--capture", type=Path, required=True, help="body capture with gt/")
    e.add_argument("--out", type=Path, help="output folder (default: <result>/../evaluate_bodies)")
    e.add_argument("--name", default="", help="capture name for messages")
    add_params_arguments(e)
    e.set_defaults(func=cmd_evaluate_bodies)

    p = sub.add_parser("train", help="train a learned model")
    tr = p.add_subparsers(dest="model", required=True)
    t = tr.add_parser("fcgf", help="train FCGF (PointInfoNCE or hardest-contrastive) on synthetic and given scan pairs")
    t.add_argument("--out", type=Path, default=Path("models/fcgf"), help="model folder (default: models/fcgf)")
    t.add_argument("--iterations", type=int)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int)
    t.add_argument("--extra-capture", type=Path, action="append", default=[],
                   help="scan capture with ground truth to train on as well (repeatable)")
    t.add_argument("--captures", type=Path, help="then evaluate on these scan captures (Prefect flow)")
    t.add_argument("--results", type=Path, help="results root for --captures (default: the captures folder)")
    t.add_argument("--names", default="", help="comma-separated captures for --captures (default: all)")
    add_params_arguments(t)
    t.set_defaults(func=cmd_train_fcgf)

    p = sub.add_parser("fit", help="fit 3D Gaussians or a NeRF to a posed capture, or bodies to keypoints")
    fit = p.add_subparsers(dest="method", required=True)
    for method, what in (("gaussians", "3D Gaussian Splatting"), ("nerf", "NeRF")):
        f = fit.add_parser(method, help=f"{what}, evaluated on every 8th view held out")
        f.add_argument("--capture", type=Path, required=True,
                       help="sfm output folder, COLMAP folder, transforms.json or LLFF folder (poses_bounds.npy)")
        f.add_argument("--out", type=Path, help=f"output folder (default: results/<name>/fit_{method})")
        f.add_argument("--name", default="", help="capture name for messages (default: folder name)")
        f.add_argument("--iterations", type=int)
        f.add_argument("--max-seconds", type=float, help="stop fitting after this long (0: no limit)")
        f.add_argument("--resolution-scale", type=float, help="scale images (and intrinsics) by this")
        f.add_argument("--device", choices=["auto", "cpu", "cuda"])
        if method == "gaussians":
            f.add_argument("--backend", choices=["auto", "cuda", "cpu"], help="rasterizer")
        f.add_argument("--seed", type=int)
        add_params_arguments(f)
        f.set_defaults(func=cmd_fit)
    f = fit.add_parser("bodies", help="SMPLify-style body fitting to 2D keypoints (single or multi-view, batched)")
    f.add_argument("--capture", type=Path, help="body capture folder (images/, keypoints/, cameras.json, gt/)")
    f.add_argument("--images", type=Path, help="photos folder")
    f.add_argument("--keypoints", type=Path, help="OpenPose / COCO keypoint JSON file or folder")
    f.add_argument("--cameras", type=Path, help="cameras.json or an sfm stage output: calibrated multi-view fit")
    f.add_argument("--gt", type=Path, help="ground truth folder (keypoints2d, joints3d.json)")
    f.add_argument("--out", type=Path, help="output folder (default: results/<name>/fit_bodies)")
    f.add_argument("--name", default="", help="capture name for messages (default: folder name)")
    f.add_argument("--model", choices=["anny", "smpl"])
    f.add_argument("--model-file", help="SMPL / SMPL-H / SMPL-X .npz or .pkl (with --model smpl)")
    f.add_argument("--sequence", choices=["true", "false"], help="video frames: temporal smoothness")
    f.add_argument("--device", choices=["auto", "cpu", "cuda"])
    f.add_argument("--seed", type=int)
    add_params_arguments(f)
    f.set_defaults(func=cmd_fit_bodies)

    p = sub.add_parser("register-batch", help="Prefect flow register_scans over a folder of scan captures")
    p.add_argument("--captures", type=Path, required=True, help="folder holding one sub-folder per scan capture")
    p.add_argument("--out", type=Path, required=True, help="results root: <out>/<capture>/register_scans")
    p.add_argument("--names", default="", help="comma-separated captures (default: all sub-folders)")
    add_params_arguments(p)
    p.set_defaults(func=cmd_register_batch)

    p = sub.add_parser("bodies-batch", help="Prefect flow fit_bodies over a folder of body captures")
    p.add_argument("--captures", type=Path, required=True, help="folder holding one sub-folder per body capture")
    p.add_argument("--out", type=Path, required=True, help="results root: <out>/<capture>/fit_bodies")
    p.add_argument("--names", default="", help="comma-separated captures (default: all sub-folders)")
    add_params_arguments(p)
    p.set_defaults(func=cmd_bodies_batch)

    p = sub.add_parser("batch", help="process an inbox of captures (folder or s3://bucket/prefix): fetch new or "
                       "changed ones, run their flows, push artifacts to the DVC remote, write manifests")
    p.add_argument("source", help="inbox: a folder or s3://BUCKET/PREFIX with one sub-folder per capture")
    p.add_argument("--work", type=Path, required=True,
                   help="work area: inbox/ mirror, results/, manifests/, runs/ (a DVC store when pushing)")
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
    p.add_argument("--previous", type=Path, default=None,
                   help="baseline run JSON (default: the last good run before the latest)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reconstruct", help="Prefect flow over a folder of photo captures")
    p.add_argument("--captures", type=Path, required=True, help="folder holding one sub-folder per capture")
    p.add_argument("--out", type=Path, required=True, help="results root: <out>/<capture>/{sfm,evaluate_sfm}")
    p.add_argument("--names", default="", help="comma-separated captures (default: all sub-folders)")
    add_params_arguments(p)
    p.set_defaults(func=cmd_reconstruct)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if sys.stderr.isatty():  # progress bars for a person at a terminal; plain logs otherwise
            from capture3d.progress import rich_progress

            with rich_progress():
                return int(args.func(args))
        return int(args.func(args))
    except Capture3dError as exc:
        logger.debug("failed", exc_info=True)
        folder = (getattr(args, "images", None) or getattr(args, "scans", None) or getattr(args, "capture", None)
                  or getattr(args, "keypoints", None))
        label = getattr(args, "name", "") or (Path(folder).name if folder else "")
        sys.stderr.write(f"error: {error_line(exc, label)}\n")
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
