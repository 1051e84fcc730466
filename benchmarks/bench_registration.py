"""Benchmark: scan registration -- FGR against RANSAC on real pairs, and the stage against plain Open3D.

Two tables, measured in one run (timings only compare numbers taken in this same run):

1. Global registration methods (``fgr``, ``ransac``, ``fgr_then_ransac``) on real pairs: the
   3DMatch demo pair (voxel 0.025 m; success = rotation < 15 deg and translation < 30 cm) and every
   pair (source i -> target j, i < j, sorted names, as the stage registers them) of the Stanford
   bunny scans whose ground-truth overlap (``overlap_ratio`` of the voxel-downsampled scans at
   radius = voxel, as ``evaluate_registration`` computes it) is at least 0.3 (voxel 0.0025 m;
   success thresholds scaled by 0.01 -> 15 deg / 3 mm, plus the stricter 2 deg / 2 mm). Each scan
   is preprocessed once (capture3d's ``preprocess`` + ``fpfh``); each pair then times
   ``register_pair`` (global registration + multi-scale ICP with params.yaml's
   ``register_scans.pair`` settings, ``global_method`` replaced). Time ratios are against FGR on
   the same dataset.
2. Pipeline overhead: the ``register_scans`` stage ``run()`` on the 10 bunny scans (voxel 0.0025,
   global ``fgr``, everything else from params.yaml) against a reference that does the same work
   with plain Open3D calls: read the PLYs (``o3d.io``), ``voxel_down_sample``,
   ``remove_statistical_outlier``, ``estimate_normals`` (+ the same normal orientation rule,
   without which FPFH and hence the registrations would differ), ``compute_fpfh_feature``, FGR +
   multi-scale point-to-plane ICP + information matrix for every pair, the confidence gate, a
   maximum-spanning-tree pose graph + ``global_optimization``, fuse + write the PLY. Runs
   alternate (reference, stage, reference, ...) ``--repeats`` times; medians are compared, per
   phase too (stage phases from its ``metrics.json`` timings). Target: stage overhead <= 5 %.

3. Trust on repeated structure: the ``register_scans`` + ``evaluate_registration`` stages on the
   synthetic courtyard scan captures (8 scans, seeds 0-9; a 4-scan ring 90 degrees apart; 5 scans
   with ``global_method: fgr``): scans placed, within tolerance, placed beyond tolerance, unplaced,
   low confidence, the capture's status, wall time and the verifier's time per pair (range images +
   free-space tests). Target: 0 beyond tolerance everywhere, >= 90 % placed.

Usage: python benchmarks/bench_registration.py [--repeats N] [--quick] [--bunny-voxel V] [--trust-seeds N] [-v]
(``--quick``: the 3DMatch pair and the first 10 overlapping bunny pairs in table 1). Needs
../shared/data/registration/{3dmatch_pair,bunny}; missing datasets are skipped with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d

from capture3d.config import load_params
from capture3d.stages import register_scans as register_stage
from capture3d.tasks.registration.capture import RegisterScansConfig
from capture3d.tasks.registration.evaluate import (
    fuse,
    overlap_ratio,
    relative_transform_errors,
)
from capture3d.tasks.registration.features import fpfh
from capture3d.tasks.registration.multiway import rigid_difference
from capture3d.tasks.registration.pair import PairConfig, register_pair
from capture3d.tasks.registration.preprocess import preprocess
from capture3d.tasks.registration.scan_io import read_gt_poses, read_scan, read_scans

logger = logging.getLogger("bench_registration")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "registration"
METHODS = ("fgr", "ransac", "fgr_then_ransac")
MATCH_VOXEL = 0.025  # 3DMatch pair, metres
BUNNY_SCALE = 0.01  # bunny translation thresholds: 30 cm * 0.01 = 3 mm
STRICT_ROT_DEG, STRICT_TRANS = 2.0, 0.002  # stricter bunny success: 2 deg / 2 mm
MIN_OVERLAP = 0.3
QUICK_BUNNY_PAIRS = 10

reg = o3d.pipelines.registration


# ----------------------------------------------------------------------------- table 1


@dataclass(frozen=True)
class Prepared:
    """A preprocessed scan and its FPFH features (N, 33) float32."""

    name: str
    pcd: o3d.geometry.PointCloud
    features: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """Preprocessed scans, the pairs to register (source, target, T_target_from_source ground truth)."""

    name: str
    voxel: float
    scans: dict[str, Prepared]
    pairs: list[tuple[str, str, np.ndarray]]
    rot_thresh: float
    trans_thresh: float
    trans_unit: tuple[str, float]  # ("cm", 100.0): how to print translations
    strict: tuple[float, float] | None  # (deg, metres) of the stricter success, or None


@dataclass(frozen=True)
class PairRun:
    """One timed ``register_pair`` and its errors against the ground truth."""

    seconds: float
    rot_deg: float
    trans: float
    ransac_ran: bool


def prepare(scans: Sequence[Any], voxel: float, params: dict[str, Any]) -> dict[str, Prepared]:
    """capture3d's ``preprocess`` + ``fpfh`` once per scan, with params.yaml's preprocessing settings."""
    pp = params["register_scans"]["preprocess"]
    out = {}
    for scan in scans:
        p = preprocess(
            scan,
            voxel,
            pp["outlier_neighbors"],
            pp["outlier_std_ratio"],
            pp["normal_radius_factor"],
            min_points=pp["min_points"],
        )
        features = fpfh(np.asarray(p.pcd.points), np.asarray(p.pcd.normals), voxel)  # (N, 33)
        out[scan.name] = Prepared(scan.name, p.pcd, features)
    return out


def load_3dmatch(params: dict[str, Any]) -> Dataset | None:
    folder = DATA / "3dmatch_pair"
    if not folder.is_dir():
        logger.warning("%s missing: 3DMatch pair skipped", folder)
        return None
    src, ref = read_scan(folder / "src.npy"), read_scan(folder / "ref.npy")
    gt = np.load(folder / "gt.npy")  # (4, 4) maps src into ref
    ev = params["evaluate_registration"]
    overlap = overlap_ratio(
        fuse([src.points], [np.eye(4)], MATCH_VOXEL), fuse([ref.points], [np.eye(4)], MATCH_VOXEL), gt, MATCH_VOXEL
    )
    logger.info("3DMatch pair: ground-truth overlap %.2f", overlap)
    return Dataset(
        "3DMatch",
        MATCH_VOXEL,
        prepare([src, ref], MATCH_VOXEL, params),
        [("src", "ref", gt)],
        ev["rotation_threshold_deg"],
        ev["translation_threshold"],
        ("cm", 100.0),
        None,
    )


def load_bunny(params: dict[str, Any], voxel: float, max_pairs: int | None) -> Dataset | None:
    folder = DATA / "bunny"
    if not folder.is_dir():
        logger.warning("%s missing: bunny skipped", folder)
        return None
    scans = read_scans(folder)
    names = [s.name for s in scans]
    gt = read_gt_poses(folder / "bun.conf", names, "stanford")
    sampled = {s.name: fuse([s.points], [np.eye(4)], voxel) for s in scans}  # as evaluate_registration does
    pairs = []
    for i, j in itertools.combinations(range(len(names)), 2):
        source, target = names[i], names[j]
        T_gt = np.linalg.inv(gt[target]) @ gt[source]  # (4, 4) target_from_source
        if overlap_ratio(sampled[source], sampled[target], T_gt, voxel) >= MIN_OVERLAP:
            pairs.append((source, target, T_gt))
    logger.info("bunny: %d of %d pairs overlap >= %.2f", len(pairs), len(names) * (len(names) - 1) // 2, MIN_OVERLAP)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    ev = params["evaluate_registration"]
    return Dataset(
        f"bunny @{voxel * 1000:g}mm",
        voxel,
        prepare(scans, voxel, params),
        pairs,
        ev["rotation_threshold_deg"],
        ev["translation_threshold"] * BUNNY_SCALE,
        ("mm", 1000.0),
        (STRICT_ROT_DEG, STRICT_TRANS),
    )


def run_pairs(data: Dataset, config: PairConfig) -> list[PairRun]:
    """Time ``register_pair`` on every pair of ``data``."""
    runs = []
    for source, target, T_gt in data.pairs:
        s, t = data.scans[source], data.scans[target]
        start = time.perf_counter()
        result = register_pair(source, s.pcd, s.features, target, t.pcd, t.features, data.voxel, config)
        seconds = time.perf_counter() - start
        rot, trans = relative_transform_errors(result.transformation, T_gt)
        runs.append(PairRun(seconds, rot, trans, "ransac" in result.method))
    return runs


def methods_table(datasets: list[Dataset], base: PairConfig) -> tuple[list[str], list[list[str]]]:
    """Table 1: per dataset and global method, recall, median errors and times."""
    header = [
        "dataset",
        "method",
        "pairs",
        "recall",
        "strict recall",
        "med rot deg",
        "med trans",
        "RANSAC ran",
        "total s",
        "med s/pair",
        "time / fgr",
    ]
    rows: list[list[str]] = []
    for data in datasets:
        first_source, first_target, _ = data.pairs[0]  # warm-up (first Open3D calls), not timed
        s, t = data.scans[first_source], data.scans[first_target]
        register_pair(
            first_source,
            s.pcd,
            s.features,
            first_target,
            t.pcd,
            t.features,
            data.voxel,
            dataclasses.replace(base, global_method="fgr"),
        )
        totals: dict[str, float] = {}
        for method in METHODS:
            runs = run_pairs(data, dataclasses.replace(base, global_method=method))  # type: ignore[arg-type]
            total = sum(r.seconds for r in runs)
            totals[method] = total
            n = len(runs)
            ok = sum(r.rot_deg < data.rot_thresh and r.trans < data.trans_thresh for r in runs)
            unit, factor = data.trans_unit
            strict = "-"
            if data.strict is not None:
                strict_ok = sum(r.rot_deg < data.strict[0] and r.trans < data.strict[1] for r in runs)
                strict = f"{strict_ok}/{n} {strict_ok / n:.2f}"
            rows.append(
                [
                    data.name,
                    method,
                    str(n),
                    f"{ok}/{n} {ok / n:.2f}",
                    strict,
                    f"{statistics.median(r.rot_deg for r in runs):.3f}",
                    f"{statistics.median(r.trans for r in runs) * factor:.3f} {unit}",
                    str(sum(r.ransac_ran for r in runs)),
                    f"{total:.2f}",
                    f"{statistics.median(r.seconds for r in runs):.3f}",
                    f"{total / totals['fgr']:.2f}",
                ]
            )
            logger.info("%s %s: %d/%d in %.2f s", data.name, method, ok, n, total)
    return header, rows


# ----------------------------------------------------------------------------- table 2

PHASES = ("read", "preprocess", "features", "pairs", "optimize", "fuse", "write+other")


def direct_reference(scan_paths: list[Path], out: Path, params: dict[str, Any], voxel: float) -> dict[str, Any]:
    """The stage's work with plain Open3D calls; returns per-phase seconds, poses and the wall time."""
    rs = params["register_scans"]
    pp, pair, mw = rs["preprocess"], rs["pair"], rs["multiway"]
    seconds: dict[str, float] = {}
    cpu = time.process_time()
    start = t = time.perf_counter()
    raw = [o3d.io.read_point_cloud(str(p)) for p in scan_paths]
    names = [p.stem for p in scan_paths]
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    clouds = []
    for pcd in raw:
        down = pcd.voxel_down_sample(voxel)
        kept, _ = down.remove_statistical_outlier(
            nb_neighbors=pp["outlier_neighbors"], std_ratio=pp["outlier_std_ratio"]
        )
        kept.estimate_normals(
            o3d.geometry.KDTreeSearchParamHybrid(radius=pp["normal_radius_factor"] * voxel, max_nn=30)
        )
        kept.normalize_normals()
        points = np.asarray(kept.points)
        if (points.min(axis=0) > 0).any() or (points.max(axis=0) < 0).any():  # origin outside: sensor frame
            kept.orient_normals_towards_camera_location(np.zeros(3))
        else:
            kept.orient_normals_consistent_tangent_plane(min(10, len(points) - 1))
            normals = np.asarray(kept.normals)
            outward = np.einsum("ij,ij->i", normals, points - points.mean(axis=0))
            if np.sum(outward > 0) < np.sum(outward < 0):
                kept.normals = o3d.utility.Vector3dVector(-normals)
        clouds.append(kept)
    seconds["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    feats = [
        reg.compute_fpfh_feature(c, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100)) for c in clouds
    ]
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    distance = pair["distance_factor"] * voxel
    finest = pair["icp_scales"][-1] * voxel
    edges: list[tuple[int, int, np.ndarray, np.ndarray, float, float]] = []  # i, j, T, info, fitness, rmse
    n = len(clouds)
    for i, j in itertools.combinations(range(n), 2):
        o3d.utility.random.seed(pair["seed"])
        guess = reg.registration_fgr_based_on_feature_matching(
            clouds[i],
            clouds[j],
            feats[i],
            feats[j],
            reg.FastGlobalRegistrationOption(maximum_correspondence_distance=distance),
        ).transformation
        for scale in pair["icp_scales"]:
            result = reg.registration_icp(
                clouds[i],
                clouds[j],
                scale * voxel,
                guess,
                reg.TransformationEstimationPointToPlane(),
                reg.ICPConvergenceCriteria(
                    relative_fitness=1e-6, relative_rmse=1e-6, max_iteration=pair["icp_max_iterations"]
                ),
            )
            guess = result.transformation
        info = reg.get_information_matrix_from_point_clouds(clouds[i], clouds[j], finest, guess)
        gate = pair["max_rmse_factor"] * voxel
        if result.fitness >= pair["min_fitness"] and result.fitness > 0 and result.inlier_rmse < gate:
            edges.append((i, j, np.asarray(guess), np.asarray(info), result.fitness, result.inlier_rmse))
    seconds["pairs"] = time.perf_counter() - t

    t = time.perf_counter()
    poses = {0: np.eye(4)}  # maximum spanning tree (fitness) from scan 0, as the stage
    tree: set[tuple[int, int]] = set()
    while frontier := [e for e in edges if (e[0] in poses) != (e[1] in poses)]:
        i, j, T, *_ = max(frontier, key=lambda e: (e[4], -e[5]))
        tree.add((i, j))
        if i in poses:
            poses[j] = poses[i] @ np.linalg.inv(T)
        else:
            poses[i] = poses[j] @ T
    order = sorted(poses)
    node = {k: m for m, k in enumerate(order)}
    graph = reg.PoseGraph()
    for k in order:
        graph.nodes.append(reg.PoseGraphNode(poses[k]))
    for i, j, T, info, _, _ in edges:
        if i in node and j in node:
            graph.edges.append(reg.PoseGraphEdge(node[i], node[j], T, info, uncertain=(i, j) not in tree))
    option = reg.GlobalOptimizationOption(
        max_correspondence_distance=mw["max_correspondence_factor"] * voxel,
        edge_prune_threshold=mw["edge_prune_threshold"],
        preference_loop_closure=mw["preference_loop_closure"],
        reference_node=node[0],
    )
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(
            graph, reg.GlobalOptimizationLevenbergMarquardt(), reg.GlobalOptimizationConvergenceCriteria(), option
        )
    final = {names[k]: np.asarray(graph.nodes[node[k]].pose) for k in order}
    seconds["optimize"] = time.perf_counter() - t

    t = time.perf_counter()
    fused = o3d.geometry.PointCloud()
    for k in order:
        fused += o3d.geometry.PointCloud(clouds[k]).transform(final[names[k]])
    fused = fused.voxel_down_sample(voxel * rs["fused_voxel_factor"])
    seconds["fuse"] = time.perf_counter() - t
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    o3d.io.write_point_cloud(str(out / "fused.ply"), fused)
    seconds["write+other"] = time.perf_counter() - t
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "phases": seconds, "poses": final}


def stage(capture: Path, out: Path, config: RegisterScansConfig) -> dict[str, Any]:
    """Runs the stage; per-phase seconds from its metrics, the rest of the wall time as write+other."""
    cpu = time.process_time()
    start = time.perf_counter()
    register_stage.run(register_stage.RegisterScansInputs(capture), out, config)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    phases = {
        "read": timings["read_s"],
        "preprocess": timings["preprocess_s"],
        "features": timings["features_s"],
        "pairs": timings["multiway_pairs_s"],
        "optimize": timings["multiway_optimize_s"],
        "fuse": timings["fuse_s"],
    }
    registration = sum(timings[k] for k in ("read_s", "preprocess_s", "features_s", "multiway_total_s", "fuse_s"))
    phases["write+other"] = wall - sum(phases.values())
    data = json.loads((out / "poses.json").read_text())["poses"]
    return {
        "wall": wall,
        "cpu": cpu,
        "phases": phases,
        "own": wall - registration,
        "poses": {k: np.asarray(v) for k, v in data.items()},
    }


def pose_agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str:
    """Largest rotation / translation difference between two pose sets, on their common scans."""
    common = sorted(set(a) & set(b))
    diffs = [rigid_difference(a[k], b[k]) for k in common]
    rot = max((d[0] for d in diffs), default=0.0)
    trans = max((d[1] for d in diffs), default=0.0)
    return f"{len(a)} vs {len(b)} scans placed; max difference {rot:.2g} deg, {trans * 1000:.2g} mm"


def overhead_table(voxel: float, repeats: int) -> list[tuple[str, str]] | None:
    """Table 2 as (key, value) rows, like bench_sfm."""
    folder = DATA / "bunny"
    if not folder.is_dir():
        logger.warning("%s missing: overhead table skipped", folder)
        return None
    params = load_params(
        REPO / "params.yaml",
        [
            f"register_scans.preprocess.voxel_size={voxel}",
            "register_scans.pair.global_method=fgr",
            "register_scans.pair.num_hypotheses=1",
        ],
    )  # as the reference
    config = register_stage.load_config(params)
    scan_paths = sorted(folder.glob("*.ply"))
    refs, stages = [], []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i in range(repeats):
            refs.append(direct_reference(scan_paths, tmp / f"ref{i}", params, voxel))
            stages.append(stage(folder, tmp / f"stage{i}", config))
            logger.info("repeat %d: direct %.2f s, stage %.2f s", i, refs[-1]["wall"], stages[-1]["wall"])
    load_after = os.getloadavg()[0]
    ref_walls = [r["wall"] for r in refs]
    stage_walls = [s["wall"] for s in stages]
    ref, st = statistics.median(ref_walls), statistics.median(stage_walls)
    own = statistics.median(s["own"] for s in stages)
    n_pairs = len(scan_paths) * (len(scan_paths) - 1) // 2
    ref_cpu, stage_cpu = statistics.median(r["cpu"] for r in refs), statistics.median(s["cpu"] for s in stages)
    rows = [
        ("scans", f"{len(scan_paths)} bunny scans, voxel {voxel:g} m, global fgr, {n_pairs} pairs"),
        ("repeats", str(repeats)),
        ("Open3D direct, median s", f"{ref:.2f}  ({', '.join(f'{t:.2f}' for t in ref_walls)})"),
        ("register_scans stage, median s", f"{st:.2f}  ({', '.join(f'{t:.2f}' for t in stage_walls)})"),
        ("ratio stage / direct (medians)", f"{st / ref:.3f}"),
        ("ratio stage / direct (minima)", f"{min(stage_walls) / min(ref_walls):.3f}"),
        ("CPU time direct / stage, median s", f"{ref_cpu:.2f} / {stage_cpu:.2f}  (ratio {stage_cpu / ref_cpu:.3f})"),
        (
            "1-min load avg before / after (incl. this run)",
            f"{load_before:.2f} / {load_after:.2f}  ({os.cpu_count()} CPUs)",
        ),
        ("stage time outside its Open3D steps, median s", f"{own:.3f}  ({own / ref * 100:.1f} % of direct)"),
    ]
    for phase in PHASES:
        r = statistics.median(x["phases"][phase] for x in refs)
        s = statistics.median(x["phases"][phase] for x in stages)
        rows.append((f"  phase {phase}: direct / stage s", f"{r:.3f} / {s:.3f}  ({s - r:+.3f})"))
    rows += [
        ("same result (last repeat)", pose_agreement(refs[-1]["poses"], stages[-1]["poses"])),
        ("overhead", f"{(st / ref - 1) * 100:+.1f} %  (target <= +5 %)"),
    ]
    return rows


# ----------------------------------------------------------------------------- table 3


def trust_rows(num_seeds: int) -> tuple[list[str], list[list[str]]]:
    """Table 3: the stages on synthetic courtyard captures (see the module docstring)."""
    from capture3d.stages import evaluate_registration as evaluate_stage
    from capture3d.stages import synthesize_scans

    cases = [(f"seed {s}", 8, s, []) for s in range(num_seeds)]
    cases += [("ring of 4 (90 deg)", 4, 0, []), ("5 scans, FGR only", 5, 0, ["register_scans.pair.global_method=fgr"])]
    header = ["capture", "placed", "within", "beyond", "unplaced", "low conf", "status", "s", "verify ms/pair"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, num, seed, extra in cases:
            params = load_params(
                REPO / "params.yaml", [f"synthesize_scans.num_scans={num}", f"synthesize_scans.seed={seed}", *extra]
            )
            capture = synthesize_scans.run(
                synthesize_scans.Inputs(), tmp / f"{num}_{seed}_{len(extra)}", synthesize_scans.load_config(params)
            )
            t = time.perf_counter()
            try:
                out = register_stage.run(
                    register_stage.RegisterScansInputs(capture), tmp / "reg", register_stage.load_config(params)
                )
            except Exception as exc:  # noqa: BLE001 - a refused capture is a row
                rows.append(
                    [
                        label,
                        "0",
                        "0",
                        "0",
                        str(num),
                        "0",
                        f"refused: {str(exc)[:40]}",
                        f"{time.perf_counter() - t:.1f}",
                        "-",
                    ]
                )
                continue
            seconds = time.perf_counter() - t
            reg_m = json.loads((out / "metrics.json").read_text())
            ev = evaluate_stage.read_metrics(
                evaluate_stage.run(
                    evaluate_stage.EvaluateRegistrationInputs(out, capture, None),
                    tmp / "eval",
                    evaluate_stage.load_config(params),
                )
            )
            verify = reg_m["timings"]["range_images_s"] + reg_m["timings"]["multiway_verify_s"]
            rows.append(
                [
                    label,
                    str(reg_m["num_placed"]),
                    str(ev["num_within_tolerance"]),
                    str(len(ev["placed_beyond_tolerance"])),
                    str(len(reg_m["unplaced"])),
                    str(reg_m["num_low_confidence"]),
                    reg_m["status"],
                    f"{seconds:.1f}",
                    f"{1000 * verify / max(1, reg_m['num_pairs']):.1f}",
                ]
            )
    return header, rows


# ----------------------------------------------------------------------------- output


def format_columns(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_pairs(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of table 2 (default 2)")
    parser.add_argument("--quick", action="store_true", help=f"table 1 on 3DMatch + {QUICK_BUNNY_PAIRS} bunny pairs")
    parser.add_argument("--bunny-voxel", type=float, default=0.0025, help="bunny voxel in metres (default 0.0025)")
    parser.add_argument("--trust-seeds", type=int, default=10, help="courtyard seeds in table 3 (default 10)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    start = time.perf_counter()
    params = load_params(REPO / "params.yaml")
    base = register_stage.load_config(params).pair
    datasets = [
        d
        for d in (load_3dmatch(params), load_bunny(params, args.bunny_voxel, QUICK_BUNNY_PAIRS if args.quick else None))
        if d is not None and d.pairs
    ]
    out = []
    if datasets:
        header, rows = methods_table(datasets, base)
        out.append(
            "Global registration + ICP per pair (register_pair, params.yaml pair settings; "
            "success: 3DMatch 15 deg / 30 cm, bunny 15 deg / 3 mm, strict 2 deg / 2 mm)"
        )
        out.append(format_columns(header, rows))
    overhead = overhead_table(args.bunny_voxel, args.repeats)
    if overhead is not None:
        out.append("\nregister_scans stage against Open3D called directly (alternating runs)")
        out.append(format_pairs(overhead))
    header, rows = trust_rows(args.trust_seeds)
    out.append("\nTrust on repeated structure: synthetic courtyard captures (register_scans + evaluate_registration)")
    out.append(format_columns(header, rows))
    out.append(f"\nbenchmark wall time {time.perf_counter() - start:.1f} s")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
