"""The "registration" section of ``bench_scale.py``: multiway scan registration against the number of scans.

For each N of ``--scans`` the synthetic courtyard ring (``render_scans``, seed 0, a
``--reg-size`` sensor, sensor origins known so the free-space test is used) is registered in a
fresh child process by ``register_multiway`` with params.yaml's ``register_scans`` pair and
multiway sections, the ``--reg-set`` overrides (default ``pair.global_method="fgr"``: RANSAC's
100,000 iterations cost ~2 s per pair on 2 shared cores, which would make the 64-scan rows take
tens of minutes; the growth with N is what is measured) and the candidate scheme forced:
``scalable`` (sequential odometry within ``window`` plus loop closures) at every N, and ``all``
pairs where N <= ``max_all_pairs_scans``. The voxel is the capture's auto voxel for
``--reg-points`` points per scan. Each row: wall time of the registration (preprocessing and
features excluded, reported apart), peak resident memory (``ru_maxrss``), the pairs registered,
the scans placed and with low confidence, and the largest rotation / translation error of a placed
scan against the ground truth (in the reference scan's frame). Growth exponents are least-squares
slopes of log(wall time) against log(N), and the time at the largest N over the time at 16 scans.

Run as a child: ``python benchmarks/scale_registration.py --child JSON``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scale_common import run_child, slope  # noqa: E402 (benchmarks/ is the script's folder)


def _registration_child(spec: dict) -> dict:
    import dataclasses

    from capture3d.config import load_params
    from capture3d.stages import register_scans as stage
    from capture3d.tasks.registration.evaluate import absolute_pose_errors
    from capture3d.tasks.registration.features import fpfh
    from capture3d.tasks.registration.multiway import register_multiway
    from capture3d.tasks.registration.preprocess import auto_voxel_size, preprocess
    from capture3d.tasks.registration.visibility import range_image
    from capture3d.tasks.synthesis.scans import render_scans

    section = load_params(REPO / "params.yaml")["register_scans"]
    for item in spec["sets"]:
        key, _, value = item.partition("=")
        head, _, leaf = key.rpartition(".")
        target = section
        for part in head.split(".") if head else []:
            target = target[part]
        target[leaf] = json.loads(value)
    config = stage.load_config({"register_scans": section})
    multiway = dataclasses.replace(config.multiway, pairs=spec["mode"])
    width, height = spec["size"]
    start = time.perf_counter()
    scans, truth = render_scans(num_scans=spec["n"], seed=0, width=width, height=height)
    voxel = auto_voxel_size(scans, spec["points"])
    prepared = [preprocess(s, voxel) for s in scans]
    features = [fpfh(np.asarray(p.pcd.points), np.asarray(p.pcd.normals), voxel) for p in prepared]
    views = [range_image(s.points, np.zeros(3)) for s in scans]
    prep = time.perf_counter() - start
    start = time.perf_counter()
    result = register_multiway(
        [s.name for s in scans], [p.pcd for p in prepared], features, voxel, config.pair, multiway, views
    )
    wall = time.perf_counter() - start
    errors = absolute_pose_errors(result.poses, truth, result.reference) if len(result.poses) > 1 else {}
    return {
        **spec,
        "wall_s": wall,
        "prep_s": prep,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs": len(result.pairs),
        "by_source": result.verification["num_pairs_by_source"],
        "placed": len(result.poses),
        "low": len(result.low_confidence),
        "max_rot_deg": max((e["rotation_error_deg"] for e in errors.values()), default=float("nan")),
        "max_trans_m": max((e["translation_error"] for e in errors.values()), default=float("nan")),
        "pairs_s": result.seconds["pairs_s"],
        "voxel": voxel,
    }


def registration_section(args: argparse.Namespace) -> None:
    """Run the rows (scalable at every N, all pairs where allowed) and print the table."""
    from capture3d.config import load_params

    limit = load_params(REPO / "params.yaml")["register_scans"]["multiway"]["max_all_pairs_scans"]
    base = {"size": list(args.reg_size), "points": args.reg_points, "sets": list(args.reg_set)}
    rows = []
    for n in args.scans:
        rows.append(run_child(__file__, {**base, "n": n, "mode": "scalable"}))
        if n <= limit:
            rows.append(run_child(__file__, {**base, "n": n, "mode": "all"}))
    print(
        f"\nRegistration: synthetic courtyard ring of N range scans ({args.reg_size[0]}x{args.reg_size[1]} sensor, "
        f"~{args.reg_points} points per scan, sensor origins known), params.yaml register_scans with "
        f"{' '.join(args.reg_set) or 'no overrides'}; all pairs only up to max_all_pairs_scans = {limit}"
    )
    print(
        "| N | pairs mode | wall s | wall / scalable N=16 | pairs tried (seq + overlap + descriptor) "
        "| placed | low conf. | max rot err deg | max trans err mm | peak RSS MB | prep s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ref = next((r for r in rows if r["n"] == 16 and r["mode"] == "scalable" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            print(f"| {r['n']} | {r['mode']} | failed: {r['error']} |")
            continue
        src = r["by_source"]
        parts = "+".join(str(src.get(k, 0)) for k in ("sequential", "loop_closure_overlap", "loop_closure_descriptor"))
        tried = f"{r['pairs']}" + (f" ({parts})" if r["mode"] == "scalable" else "")
        ratio = f"{r['wall_s'] / ref['wall_s']:.2f}" if ref else "n/a"
        print(
            f"| {r['n']} | {r['mode']} | {r['wall_s']:.1f} | {ratio} | {tried} | {r['placed']}/{r['n']} | {r['low']} "
            f"| {r['max_rot_deg']:.3f} | {1000 * r['max_trans_m']:.1f} | {r['peak_rss_mb']:.0f} | {r['prep_s']:.1f} |"
        )
    for mode in ("scalable", "all"):
        series = [r for r in rows if r["mode"] == mode and "error" not in r]
        if len(series) > 1:
            sizes = [r["n"] for r in series]
            print(
                f"{mode}: growth exponent (log wall / log N): {slope(sizes, [r['wall_s'] for r in series]):.2f}; "
                f"of pairs tried: {slope(sizes, [r['pairs'] for r in series]):.2f}; "
                f"of peak RSS: {slope(sizes, [r['peak_rss_mb'] for r in series]):.2f}"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this section on ``bench_scale.py``'s command line."""
    parser.add_argument("--scans", type=int, nargs="*", default=[8, 16, 32, 64], help="registration: scans per capture")
    parser.add_argument("--reg-size", type=int, nargs=2, default=[96, 72], metavar=("W", "H"))
    parser.add_argument("--reg-points", type=int, default=2000, help="registration: auto voxel target points per scan")
    parser.add_argument(
        "--reg-set",
        nargs="*",
        default=['pair.global_method="fgr"'],
        metavar="KEY=JSON",
        help="registration: overrides of params.yaml register_scans (dotted keys)",
    )


def _child_main() -> None:
    spec = json.loads(sys.argv[sys.argv.index("--child") + 1])
    print(json.dumps(_registration_child(spec)))


if __name__ == "__main__":
    _child_main()
