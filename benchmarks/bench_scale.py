"""Benchmark: how cost grows with the size of a capture (issue "captures at real size").

For each size N the work runs in a fresh child process, which reports its wall time and its peak
resident memory (``ru_maxrss``); the growth exponent is the least-squares slope of log(wall time)
against log(N). One table per stage measured.

Measured so far:

- **bodies**: one synthetic person filmed for N frames (``synthesize_sequence``: one view, COCO-17,
  1 px noise), fitted as a sequence by the ``fit_bodies`` path: one batch up to ``chunk_frames``,
  else chunks (``capture3d.tasks.body.sequence``). The schedule is params.yaml's with every stage's
  iterations times ``--iteration-scale`` and the settings of ``--set`` (default: no pose hypotheses:
  18 starts per frame would make 10,000 frames take hours on 2 cores; the scaling is what is
  measured). Reported: throughput against one batch of 256 frames in the same run, and the mean
  joint speed at the chunk seams against the median speed inside the chunks.

- **nvs** and **batch planning** (code in ``benchmarks/scale_nvs.py``): 3DGS time per iteration
  and peak RSS against the number of photos (25, 100, 300 at 320x180) and of Gaussians (10k, 100k,
  1M), the 3DGS and NeRF peak RSS on 300 photos of 1920x1080 against the 6 GB target, each in a
  child process on synthetic JPEGs + transforms.json + PLY; and a no-op
  ``capture3d.ops.batch_plan.plan`` over 100 and 1,000 captures that are all current (wall time,
  RSS, exponent).

- **sfm** (code in ``benchmarks/scale_sfm.py``): exhaustive against retrieval matching (and the
  hierarchical mapper) on synthetic captures of N views (25, 50, 100, 200 at 320x240): extraction,
  retrieval, matching and mapping times, pairs matched, registered fraction, rotation error against
  ground truth, peak RSS and the growth exponent of matching time.

- **registration** (code in ``benchmarks/scale_registration.py``): multiway registration of the
  synthetic courtyard ring of N range scans (8, 16, 32, 64): the scalable candidates (sequential
  odometry + loop closures) at every N and all pairs where N <= ``max_all_pairs_scans``: wall time,
  peak RSS, pairs tried, scans placed, largest pose error against ground truth, growth exponent.

Usage: python benchmarks/bench_scale.py [--frames 64 1000 10000] [--iteration-scale 0.25]
       [--threads 1] [--set KEY=JSON ...] [--sections all | bodies nvs batch-planning sfm registration]
       [--nvs-views 25 100 300] [--nvs-gaussians 10000 100000 1000000] [--nvs-big 300]
       [--plan-captures 100 1000] [--views 25 50 100 200] [--sfm-features 1024]
       [--scans 8 16 32 64] [--reg-size 96 72] [--reg-points 2000] [--reg-set KEY=JSON ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scale_common import slope  # noqa: E402 (benchmarks/ is the script's folder)


def _bodies_child(frames: int, scale: float, sets: list[str], threads: int) -> dict:
    import torch

    from capture3d.config import load_params
    from capture3d.stages import fit_bodies as stage
    from capture3d.tasks.body.fit import BodyFitConfig, fit_bodies, world_keypoints
    from capture3d.tasks.body.metrics import pa_mpjpe
    from capture3d.tasks.body.model import COCO17
    from capture3d.tasks.body.sequence import ChunkConfig, fit_sequence, windows
    from capture3d.tasks.synthesis.bodies import observations, synthesize_sequence

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    section = {**load_params(REPO / "params.yaml")["fit_bodies"], "device": "cpu", "sequence": True}
    section["stages"] = [{**s, "iterations": max(1, round(s["iterations"] * scale))} for s in section["stages"]]
    for item in sets:
        key, _, value = item.partition("=")
        section[key] = json.loads(value)
    config = stage.load_config({"fit_bodies": section})
    fit_config = BodyFitConfig(**{f: getattr(config, f) for f in BodyFitConfig.__dataclass_fields__})
    model = stage.build_model(config, torch.device("cpu"))
    syn = synthesize_sequence(model, frames=frames, names=COCO17, seed=0)

    obs = observations(syn, sequence=True)
    chunk = ChunkConfig(config.chunk_frames, config.chunk_overlap, config.shape_frames)
    start = time.perf_counter()
    if frames > chunk.chunk_frames:
        result = fit_sequence(model, obs, fit_config, chunk)
    else:
        result = fit_bodies(model, obs, fit_config)
    wall = time.perf_counter() - start
    with torch.no_grad():
        points = world_keypoints(model, result.pose, result.scale, COCO17).double().numpy()
    speed = np.linalg.norm(np.diff(points, axis=0), axis=-1).mean(1)  # (F-1,)
    cuts = windows(frames, chunk)
    seams = [s for s, _ in cuts[1:]] + [e - 1 for _, e in cuts[:-1]]
    boundary = float(np.mean([speed[s - 1 : s + 1].max() for s in seams])) if seams else float("nan")
    return {
        "frames": frames,
        "wall_s": wall,
        "fps": frames / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pa_mpjpe_mm": float(np.median(pa_mpjpe(points, syn.points))) * 1000,
        "seam_speed_ratio": boundary / float(np.median(speed)) if seams else float("nan"),
        "chunks": len(cuts) if frames > chunk.chunk_frames else 1,
        "iterations": sum(s.iterations for s in config.stages),
        "pose_hypotheses": config.pose_hypotheses,
        "pose_prior": config.pose_prior,
    }


def _run_child(args: argparse.Namespace, frames: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(frames), "--iteration-scale", str(args.iteration_scale)]
    cmd += ["--threads", str(args.threads), "--set", *args.set]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[64, 1000, 10000])
    parser.add_argument("--iteration-scale", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=["pose_hypotheses=0"], metavar="KEY=JSON")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--sections", nargs="*", default=["all"], help="all, or some of: bodies nvs batch-planning sfm registration"
    )
    import scale_nvs  # the nvs and batch-planning sections (benchmarks/scale_nvs.py)

    scale_nvs.add_arguments(parser)
    import scale_sfm  # the sfm section (benchmarks/scale_sfm.py)

    scale_sfm.add_arguments(parser)
    import scale_registration  # the registration section (benchmarks/scale_registration.py)

    scale_registration.add_arguments(parser)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_bodies_child(args.child, args.iteration_scale, args.set, args.threads)))
        return
    sections = set(args.sections)
    if sections & {"all", "nvs"}:
        scale_nvs.nvs_section(args)
    if sections & {"all", "batch-planning"}:
        scale_nvs.batch_plan_section(args)
    if sections & {"all", "sfm"}:
        scale_sfm.sfm_section(args)
    if sections & {"all", "registration"}:
        scale_registration.registration_section(args)
    if not sections & {"all", "bodies"}:
        return
    reference = _run_child(args, 256)  # one batch of 256 frames: the throughput reference
    rows = [_run_child(args, n) for n in args.frames]
    print(
        f"\nBodies: one synthetic person, N video frames, {reference['iterations']} iterations, pose prior "
        f"{reference['pose_prior']}, {reference['pose_hypotheses']} pose hypotheses, {args.threads} thread(s); "
        f"reference one batch of 256 frames: {reference['fps']:.2f} frames/s, {reference['peak_rss_mb']:.0f} MB"
    )
    print(
        "| frames | chunks | wall s | frames/s | throughput / batch of 256 | peak RSS MB "
        "| seam speed / median | PA-MPJPE mm |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['frames']} | {r['chunks']} | {r['wall_s']:.1f} | {r['fps']:.2f} | {r['fps'] / reference['fps']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {r['seam_speed_ratio']:.2f} | {r['pa_mpjpe_mm']:.1f} |"
        )
    print(
        f"growth exponent (log wall / log N): {slope([r['frames'] for r in rows], [r['wall_s'] for r in rows]):.2f}; "
        f"peak RSS: {slope([r['frames'] for r in rows], [r['peak_rss_mb'] for r in rows]):.2f}"
    )


if __name__ == "__main__":
    main()
