"""Benchmark: FCGF (shipped, float32 original, adapted) against FPFH on real pairs the model never saw.

Sets (``../shared/data/registration``; each skipped with a note when absent):

- ``3dmatch``: the 3DMatch pair (``3dmatch_pair``: ref -> src, the direction of the
  ``evaluate_features`` stage, which orders scans by name; FMR is one-way), 3DMatch protocol
  (inliers within 10 cm, FMR at 5 %; registered: rotation < 15 deg, translation < 30 cm).
- ``bunny``: the 10 Stanford bunny scans (``bun.conf``), every pair overlapping >= 30 %,
  distances x 0.1 (1 cm, 3 cm), as ``evaluate_features`` with ``threshold_scale: 0.1``.
- ``fragments``: the held-out ground-truth pairs of ``real_fragments/gt_pairs.json`` (redkitchen
  fragments, among them and against the 3DMatch pair) that overlap >= 30 % under the protocol's
  overlap (larger directed fraction within 3 voxels), 3DMatch protocol (x 1).
- ``car``: the lidar street pair 401 -> 400 (reference pose of undocumented origin), distances
  x 10 (1 m, 3 m) for its ~1 m voxels.
- ``heldout_ss``: self-supervised pairs (exact poses) cut from the held-out scans of
  ``real_fragments`` (the groups train_fcgf.data.exclude_groups names), 4 per scan, inliers within
  2 voxels of each scan (x 20 voxel).

Every set: ``register_scans`` preprocessing (auto voxel per capture or pair, outliers, normals),
then :func:`capture3d.tasks.fcgf.evaluate.evaluate_descriptors` with RANSAC + ICP exactly as
``register_scans.pair`` (global_method ransac, as ``evaluate_features``). FMR = feature-match
recall, IR = mean inlier ratio, RR = registration recall, time = descriptor extraction per scan
+ registration per pair (median, seconds). ``--adapt``: the shipped model is also adapted to the
bunny capture (``register_scans.fcgf`` adapt settings) and evaluated there.

Usage: python benchmarks/bench_fcgf_real.py [--checkpoint capture3d/models/fcgf_default.pt]
[--float32 models/fcgf/model_float32.pt] [--adapt] [--sets 3dmatch,bunny,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "registration"
SETS = ("3dmatch", "bunny", "fragments", "car", "heldout_ss")

logger = logging.getLogger("bench_fcgf_real")


def _scan(name: str, points: np.ndarray):
    from capture3d.tasks.registration.scan_io import Scan

    return Scan(name, np.asarray(points, dtype=np.float64), None)


def captures() -> dict[str, list[tuple[list, list[np.ndarray], float]]]:
    """Set name -> [(scans, world_from_scan poses, threshold_scale)] (each entry one 'capture')."""
    from capture3d.tasks.registration.scan_io import read_gt_poses, read_scan, read_scans

    out: dict[str, list] = {}
    pair = DATA / "3dmatch_pair"
    if pair.is_dir():
        src, ref = _scan("src", np.load(pair / "src.npy")), _scan("ref", np.load(pair / "ref.npy"))
        out["3dmatch"] = [([ref, src], [np.eye(4), np.load(pair / "gt.npy")], 1.0)]  # ref -> src, as evaluate_features
    bunny = DATA / "bunny"
    if bunny.is_dir():
        scans = read_scans(bunny)
        gt = read_gt_poses(bunny / "bun.conf", [s.name for s in scans], require_all=False)
        scans = [s for s in scans if s.name in gt]
        out["bunny"] = [(scans, [gt[s.name] for s in scans], 0.1)]
    frag = DATA / "real_fragments"
    if frag.is_dir():
        pairs = json.loads((frag / "gt_pairs.json").read_text())["pairs"]

        def load(name: str):
            if name.startswith("../3dmatch_pair/"):
                stem = name.split("/")[2].split(".")[0]
                return _scan(stem, np.load(DATA / "3dmatch_pair" / f"{stem}.npy"))
            return read_scan(frag / f"{name}.ply")

        fr, car = [], []
        for p in pairs:
            s, t = load(p["source"]), load(p["target"])
            T = np.asarray(p["T_source_to_target"], dtype=np.float64)
            entry = ([s, t], [T, np.eye(4)], 10.0 if "car" in p["source"] else 1.0)
            (car if "car" in p["source"] else fr).append(entry)
        out["fragments"], out["car"] = fr, car
    return out


def heldout_ss(per_scan: int, seed: int) -> list[tuple[list, list[np.ndarray], float]]:
    """Self-supervised pairs (exact poses) from the held-out real-fragment scans."""
    import yaml

    from capture3d.tasks.fcgf.self_supervised import SelfSupervisedConfig, make_pair
    from capture3d.tasks.registration.preprocess import auto_voxel_size
    from capture3d.tasks.registration.scan_io import read_scan

    frag = DATA / "real_fragments"
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train_fcgf"]["data"]
    groups, flags = set(params["exclude_groups"]), set(params["exclude_flags"])
    cfg = SelfSupervisedConfig(**{**params["self_supervised"], "voxel_jitter": 0.0})
    rng = np.random.default_rng(seed)
    out = []
    for entry in json.loads((frag / "fragments.json").read_text())["fragments"]:
        if (entry.get("group") or entry["name"]) not in groups and not set(entry.get("flags") or []) & flags:
            continue
        scan = read_scan(frag / entry["file"])
        voxel = auto_voxel_size([scan], 5000)
        for k in range(per_scan):
            p = make_pair(scan.points, voxel, cfg, rng)
            views = [_scan(f"{scan.name}/v{k}a", p.points0), _scan(f"{scan.name}/v{k}b", p.points1)]
            out.append((views, [p.T_1_from_0, np.eye(4)], 20.0 * voxel))  # pose0 = T: view 0 into view 1
    return out


def run_set(
    name: str, entries: list, models: dict, params: dict, adapt_for: set[str]
) -> tuple[dict[str, dict], list[dict]]:
    """Evaluate every descriptor on one set; (summary per descriptor, rows)."""
    from capture3d.config import section
    from capture3d.tasks.fcgf.evaluate import FeatureEvalConfig, evaluate_descriptors, summarize, with_global_method
    from capture3d.tasks.fcgf.features import fcgf_feature
    from capture3d.tasks.registration.capture import RegisterScansConfig
    from capture3d.tasks.registration.features import feature_registry
    from capture3d.tasks.registration.preprocess import auto_voxel_size, preprocess

    reg = section(params, "register_scans", RegisterScansConfig)
    pp = reg.preprocess
    pair_cfg = with_global_method(reg.pair, "ransac")
    rows: list[dict] = []
    extract_s: dict[str, list[float]] = {}
    extra: dict[str, dict] = {}
    for scans, poses, scale in entries:
        voxel = auto_voxel_size(scans, pp.auto_target_points)
        prepared = [
            preprocess(s, voxel, pp.outlier_neighbors, pp.outlier_std_ratio, pp.normal_radius_factor, min_points=10)
            for s in scans
        ]
        descriptors = {"fpfh": feature_registry()["fpfh"]}
        descriptors.update({k: fcgf_feature(m) for k, m in models.items()})
        if name in adapt_for and "fcgf" in models:
            adapted, info = _adapt(models["fcgf"], scans, voxel, params)
            descriptors["fcgf_adapted"] = fcgf_feature(adapted)
            extra["fcgf_adapted"] = info
        feats: dict[str, list[np.ndarray]] = {}
        for key, fn in descriptors.items():
            t = time.perf_counter()
            feats[key] = [fn(np.asarray(p.pcd.points), np.asarray(p.pcd.normals), voxel) for p in prepared]
            extract_s.setdefault(key, []).append((time.perf_counter() - t) / len(prepared))
        fe = FeatureEvalConfig(0.3, 0.10, 0.05, 15.0, 0.30, scale)
        r, _ = evaluate_descriptors(
            [s.name for s in scans], [p.pcd for p in prepared], feats, poses, voxel, pair_cfg, fe
        )
        rows += r
    summary = summarize(rows, list(extract_s))
    for key in summary:
        summary[key]["extract_s"] = statistics.median(extract_s[key])
        regs = [r["registration_s"] for r in rows if r["feature"] == key]
        summary[key]["registration_s"] = statistics.median(regs) if regs else None
        summary[key].update(extra.get(key, {}))
    return summary, rows


def _adapt(model, scans: list, voxel: float, params: dict):
    from capture3d.config import section
    from capture3d.tasks.fcgf.adapt import AdaptConfig, adapt_model
    from capture3d.tasks.registration.capture import RegisterScansConfig

    f = section(params, "register_scans", RegisterScansConfig).fcgf
    cfg = AdaptConfig(
        f.adapt_max_seconds,
        f.adapt_max_iterations,
        f.adapt_learning_rate,
        f.adapt_val_pairs,
        f.adapt_val_inlier_voxels,
        0.05,
        f.adapt_views,
    )
    res = adapt_model(model, [(s.name, s.points) for s in scans], voxel, cfg, f.adapt_seed)
    info = {
        "adapt_val_fmr_before": res.fmr_before,
        "adapt_val_fmr_after": res.fmr_after,
        "adapt_iterations": res.iterations,
        "adapt_s": res.seconds,
    }
    return res.model, info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="capture3d/models/fcgf_default.pt", help="shipped model ('' = none)")
    parser.add_argument("--float32", default="", help="the same model at float32 (the float16 cost)")
    parser.add_argument("--adapt", action="store_true", help="also adapt the shipped model to the bunny")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--ss-per-scan", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from capture3d.config import load_params
    from capture3d.tasks.fcgf.checkpoint import load_checkpoint

    torch.manual_seed(0)
    params = load_params(REPO / "params.yaml", [])
    models = {}
    if args.checkpoint:
        models["fcgf"] = load_checkpoint(
            REPO / args.checkpoint if not Path(args.checkpoint).is_absolute() else Path(args.checkpoint)
        )[0]
    if args.float32:
        models["fcgf_float32"] = load_checkpoint(Path(args.float32))[0]
    if not DATA.is_dir():
        print(f"{DATA} missing: nothing to measure")
        return 0
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    sets = captures()
    if "heldout_ss" in wanted and (DATA / "real_fragments").is_dir():
        sets["heldout_ss"] = heldout_ss(args.ss_per_scan, seed=12345)
    results = {}
    print(f"torch threads: {torch.get_num_threads()}")
    print("| set (pairs) | descriptor | FMR | inlier ratio | RR | extract s/scan | register s/pair |")
    print("|---|---|---|---|---|---|---|")
    for name in wanted:
        if name not in sets or not sets[name]:
            print(f"| {name} | (data missing) | | | | | |")
            continue
        summary, rows = run_set(name, sets[name], models, params, {"bunny"} if args.adapt else set())
        results[name] = {"summary": summary, "rows": rows}
        for key, s in summary.items():
            if not s["num_pairs"]:
                print(f"| {name} (0) | {key} | - | - | - | | |")
                continue
            print(
                f"| {name} ({s['num_pairs']}) | {key} | {s['feature_match_recall']:.3f} | {s['inlier_ratio']:.3f} "
                f"| {s['registration_recall']:.3f} | {s['extract_s']:.2f} | {s['registration_s']:.2f} |"
                + (
                    f" adapt: val FMR {s['adapt_val_fmr_before']:.3f} -> {s['adapt_val_fmr_after']:.3f}, "
                    f"{s['adapt_iterations']} its, {s['adapt_s']:.0f} s"
                    if "adapt_val_fmr_before" in s
                    else ""
                ),
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
