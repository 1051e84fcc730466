"""Benchmark: the body fit on real 3D poses (``../shared/data/body``), single view and calibrated multi-view.

For each dataset sample set (a small, fixed, seeded choice of person-frames the fit never saw:
see :mod:`capture3d.tasks.body.real_eval`), the ground-truth 3D joints are projected through the
dataset's cameras ("ground-truth 2D input") and the ``fit_bodies`` stage is run with the
repository's params.yaml (overlays off):

- ``1`` view: one uncalibrated view per frame (no cameras.json: focal length from params' fov_deg);
  the ground truth is in that camera's frame;
- ``N`` views: calibrated multi-view (cameras.json with groups, N >= 3), world frame.

One table: dataset, views, joints compared (the 12 limb joints), frames, median PA-MPJPE
(protocol 2), median root-aligned MPJPE (protocol 1, root = mid-hip), median MPJPE in the output
frame (meaningful for calibrated multi-view only), and fit seconds per frame (the whole sample
set fitted in one batched call).

Usage: python benchmarks/bench_bodies_real.py [--data DIR] [--frames N] [--seed S] [--threads T]
       [--only DATASET ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capture3d.config import load_params  # noqa: E402
from capture3d.stages import fit_bodies  # noqa: E402
from capture3d.tasks.body.real_eval import (  # noqa: E402
    LIMB_JOINTS,
    PANOPTIC_FULL_VIEW_CAMERAS,
    choose_views,
    load_dataset,
    write_capture,
)

_SINGLE = ("mpi_inf_3dhp", "panoptic", "campus", "shelf", "mocap_cmu")
# (dataset, views, preferred cameras for multi-view or None, camera known); virtual cameras for
# mocap_cmu. One view with the camera unknown: no cameras.json, the focal length from fov_deg; with
# it known: cameras.json holds the view's intrinsics and pose (as EXIF or an SfM scene would give).
SETS = (
    *((d, 1, None, False) for d in _SINGLE),
    *((d, 1, None, True) for d in _SINGLE),
    ("panoptic", 5, PANOPTIC_FULL_VIEW_CAMERAS, True),
    ("campus", 3, ("cam0", "cam1", "cam2"), True),
    ("shelf", 5, ("cam0", "cam1", "cam2", "cam3", "cam4"), True),
    ("mocap_cmu", 4, None, True),
)


def run_set(
    data: Path, dataset: str, views: int, preferred, known: bool, frames: int, seed: int, config, model, work: Path
) -> dict:
    poses = load_dataset(data, dataset, frames=frames, seed=seed, views=views)
    rng = np.random.default_rng(seed)
    bodies = [(p, choose_views(p, views, rng, preferred)) for p in poses]
    tag = f"{dataset}_{views}v_{'known' if known else 'fov'}"
    write_capture(work / tag, bodies, calibrated=known)
    out = fit_bodies.run(fit_bodies.BodyInputs.from_capture(work / tag), work / f"fit_{tag}", config, model)
    metrics = json.loads((out / "metrics.json").read_text())
    # one frame alone: the time per frame without batching
    write_capture(work / f"{tag}_one", bodies[:1], calibrated=known)
    start = time.perf_counter()
    fit_bodies.run(fit_bodies.BodyInputs.from_capture(work / f"{tag}_one"), work / f"fit_{tag}_one", config, model)
    single_s = time.perf_counter() - start
    rows = metrics["per_body"]
    compared = metrics.get("joints_compared", [])
    return {
        "dataset": dataset,
        "views": views,
        "camera": "known" if known else "unknown",
        "s_single": single_s,
        "joints": len(compared),
        "frames": len(rows),
        "pa": float(np.median([r["pa_mpjpe_mm"] for r in rows])),
        "root": float(np.median([r["root_mpjpe_mm"] for r in rows])),
        "abs": float(np.median([r["mpjpe_mm"] for r in rows])),
        "pa_range": (min(r["pa_mpjpe_mm"] for r in rows), max(r["pa_mpjpe_mm"] for r in rows)),
        "px": metrics.get("median_error_px", float("nan")),
        "s_per_frame": metrics["fit_seconds"] / max(len(rows), 1),
        "compared": compared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "body")
    parser.add_argument("--frames", type=int, default=12, help="at most this many person-frames per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="datasets to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="4 frames per set, a 40-iteration schedule")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help='fit_bodies overrides as JSON values, e.g. pose_prior="none" pose_hypotheses=8',
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no real data at {args.data}")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    params = load_params(REPO / "params.yaml")
    section = {**params["fit_bodies"], "overlays": False, "device": "cpu"}
    if args.quick:
        args.frames = 4
        section["stages"] = [{**s, "iterations": 10} for s in section["stages"]]
    for item in args.set:
        key, _, value = item.partition("=")
        section[key] = json.loads(value)
    config = fit_bodies.load_config({"fit_bodies": section})
    model = fit_bodies.build_model(config, torch.device("cpu"))
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, views, preferred, known in SETS:
            if args.only and dataset not in args.only:
                continue
            results.append(
                run_set(args.data, dataset, views, preferred, known, args.frames, args.seed, config, model, Path(tmp))
            )
            r = results[-1]
            print(
                f"  {dataset} {views}v camera {r['camera']}: {r['frames']} frames, PA-MPJPE {r['pa']:.1f} mm "
                f"(range {r['pa_range'][0]:.0f}-{r['pa_range'][1]:.0f}), root MPJPE {r['root']:.1f} mm, "
                f"2D {r['px']:.2f} px, {r['s_per_frame']:.2f} s/frame",
                flush=True,
            )
    iters = sum(s["iterations"] for s in section["stages"])
    print(
        f"\nReal-data body fit: Anny, pose prior {config.pose_prior}, {config.pose_hypotheses} pose hypotheses, "
        f"ground-truth 2D input, {iters} iterations, {args.threads} threads, seed {args.seed}, "
        f"{time.perf_counter() - start:.0f} s in all; overrides {args.set or 'none'}"
    )
    print(f"joints compared: {', '.join(LIMB_JOINTS)}; root = mid-hip (mean of the hips)\n")
    head = (
        "| dataset | views | camera | joints compared | frames | median PA-MPJPE mm | median root-aligned MPJPE mm "
        "| median MPJPE mm (world) | s / frame batched | s / frame alone |"
    )
    print(head)
    print("|" + "---|" * 10)
    for r in results:
        world = f"{r['abs']:.1f}" if r["views"] > 1 else "-"  # one view: the depth is a guess
        print(
            f"| {r['dataset']} | {r['views']} | {r['camera']} | {r['joints']} limb | {r['frames']} | {r['pa']:.1f} | "
            f"{r['root']:.1f} | {world} | {r['s_per_frame']:.2f} | {r['s_single']:.2f} |"
        )


if __name__ == "__main__":
    main()
