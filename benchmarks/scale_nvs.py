"""The "nvs" and "batch planning" sections of ``bench_scale.py`` (kept here so the shared script stays short).

nvs: synthetic posed captures (procedural JPEG photos + ``transforms.json`` + a PLY of random
points, written once into a temporary folder) fitted in a fresh child process per row, which
reports its wall times and peak resident memory (``ru_maxrss``: loading the capture included):

- 3DGS against the number of photos (small resolution, fixed number of Gaussians),
- 3DGS against the number of Gaussians (the PLY's points, no densification),
- 3DGS and NeRF on 300 photos of 1920x1080 (the bounded-memory target: < 6 GB peak RSS), with
  the default image cache (all photos fit as uint8) and with a small one (``--nvs-low-cache-mb``:
  photos decoded again when used; NeRF, drawing rays from every photo each step, pays most).

Time per iteration is the mean over the iterations after the first (``log_every`` 1). Growth
exponents are least-squares slopes of log(cost) against log(size).

batch planning: N tiny body captures (one keypoints JSON each) in a local inbox, with manifests
that record their current work key (so there is nothing to do); a child process times
``load_params`` + :func:`capture3d.ops.batch_plan.plan` (listing + one manifest read per
capture) and reports its peak RSS.

Run as a child: ``python benchmarks/scale_nvs.py --child JSON``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scale_common import run_child, slope  # noqa: E402 (benchmarks/ is the script's folder)

GIB = 1 << 30
MEMORY_TARGET_GB = 6.0


# ----------------------------------------------------------------------------- synthetic captures


def write_capture(
    folder: Path, views: int, width: int, height: int, points: int, subsets: tuple[int, ...] = (), seed: int = 0
) -> Path:
    """``views`` procedural JPEGs on a ring looking at the origin, ``transforms.json`` and ``points.ply``.

    Returns the folder. Also writes ``transforms_<n>.json`` (the first n frames) for every n of
    ``subsets``, so sweeps over the number of photos share the files.
    """
    from PIL import Image

    from capture3d.tasks.cameras import PinholeCamera, look_at, write_transforms_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    f = 0.5 * width / np.tan(np.radians(30.0))
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cams = []
    for i in range(views):
        a = 2 * np.pi * i / views
        centre = np.array([4 * np.cos(a), 4 * np.sin(a), 1.0 + 0.3 * np.sin(3 * a)])
        pose = look_at(centre, np.zeros(3), np.array([0.0, 0.0, 1.0]))
        phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
        img = np.stack(
            [0.5 + 0.4 * np.sin(xx * (0.01 + 0.004 * c) + yy * 0.007 * (c + 1) + phase[c]) for c in range(3)], -1
        )
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        name = f"{i:04d}.jpg"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / "images" / name, quality=90)
        cams.append(PinholeCamera(name, width, height, K, pose[:3, :3], pose[:3, 3]))
    _write_ply(folder / "points.ply", rng.uniform(-1, 1, (points, 3)).astype(np.float32), rng)
    write_transforms_json(
        folder / "transforms.json", cams, file_prefix="images/", ply_file_path="points.ply", nerfstudio_world=False
    )
    for n in subsets:
        if n <= views:
            write_transforms_json(
                folder / f"transforms_{n}.json",
                cams[:n],
                file_prefix="images/",
                ply_file_path="points.ply",
                nerfstudio_world=False,
            )
    return folder


def _write_ply(path: Path, xyz: np.ndarray, rng: np.random.Generator) -> None:
    """Binary little-endian PLY of points (P, 3) with random uchar colours."""
    rgb = rng.integers(0, 256, (len(xyz), 3), dtype=np.uint8)
    rec = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["r"], rec["g"], rec["b"] = rgb.T
    header = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty float x\nproperty float y\n"
        "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path.write_bytes(header.encode() + rec.tobytes())


# ----------------------------------------------------------------------------- children


def _nvs_child(spec: dict) -> dict:
    import torch

    from capture3d.config import load_params
    from capture3d.stages import fit_gaussians as gs_stage
    from capture3d.stages import fit_nerf as nerf_stage
    from capture3d.tasks.nvs.data import load_scene
    from capture3d.tasks.nvs.fit_gaussians import fit_gaussians
    from capture3d.tasks.nvs.fit_nerf import fit_nerf
    from capture3d.tasks.nvs.scene import holdout_split

    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)
    iterations = spec["iterations"]
    start = time.perf_counter()
    scene = load_scene(Path(spec["capture"]), "bench", 1.0, spec["points"], spec["cache_mb"])
    load_s = time.perf_counter() - start
    train_idx, _ = holdout_split(len(scene.views))
    train = scene.subset(train_idx)
    if spec["method"] == "3dgs":
        sets = [
            f"fit_gaussians.iterations={iterations}",
            "fit_gaussians.cpu_compile=false",
            "fit_gaussians.init_random_points=0",
            f"fit_gaussians.densify.refine_start={iterations + 1}",
            f"fit_gaussians.sh_degree={spec['sh_degree']}",
            "fit_gaussians.log_every=1",
            "fit_gaussians.max_seconds=0",
            "fit_gaussians.device=cpu",
        ]
        config = gs_stage.load_config(load_params(REPO / "params.yaml", sets))
        result = fit_gaussians(train, scene, config, 0, "cpu", None)
        seconds = [row["seconds"] for row in result.curve]
        size = int(result.splats["means"].shape[0])
    else:
        sets = [f"fit_nerf.iterations={iterations}", "fit_nerf.log_every=1", "fit_nerf.max_seconds=0"]
        config = nerf_stage.load_config(load_params(REPO / "params.yaml", sets + ["fit_nerf.device=cpu"]))
        result = fit_nerf(list(train), scene, config, 0, "cpu", None)
        seconds = [row["seconds"] for row in result.curve]
        size = int(config.rays_per_batch)
    per_it = (seconds[-1] - seconds[0]) / max(len(seconds) - 1, 1)
    cache = scene.image_cache
    return {
        **spec,
        "views_loaded": len(scene.views),
        "width": scene.views[0].width,
        "height": scene.views[0].height,
        "size": size,
        "load_s": load_s,
        "first_iteration_s": seconds[0],
        "per_iteration_s": per_it,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_peak_mb": cache.peak_bytes / 2**20 if cache is not None else 0.0,
        "cache_misses": cache.misses if cache is not None else 0,
    }


def _plan_child(spec: dict) -> dict:
    from capture3d.config import load_params
    from capture3d.ops.batch_plan import load_batch_config, plan
    from capture3d.ops.inbox import open_inbox

    times, pending, current = [], 0, 0
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        params = load_params(REPO / "params.yaml")
        todo = plan(open_inbox(spec["inbox"], load_batch_config(params).s3()), Path(spec["work"]), params)
        times.append(time.perf_counter() - start)
        pending, current = len(todo.pending), len(todo.current)
    return {
        **spec,
        "wall_s": float(np.median(times)),
        "worst_s": max(times),
        "pending": pending,
        "current": current,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ----------------------------------------------------------------------------- sections


def nvs_section(args: argparse.Namespace) -> None:
    """3DGS against photos and Gaussians, and the 300 x 1080p memory rows of 3DGS and NeRF."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-nvs-") as tmp:
        root = Path(tmp)
        w, h = args.nvs_small
        t0 = time.perf_counter()
        small = write_capture(root / "small", max(args.nvs_views), w, h, max(args.nvs_gaussians), args.nvs_views)
        print(f"\n(wrote {max(args.nvs_views)} photos of {w}x{h} in {time.perf_counter() - t0:.0f} s)")
        base = {"threads": args.threads, "cache_mb": args.nvs_cache_mb, "sh_degree": 1}
        views_rows = []
        for n in args.nvs_views:
            json_path = small / f"transforms_{n}.json"
            spec = {**base, "method": "3dgs", "capture": str(json_path), "points": args.nvs_fixed_gaussians}
            views_rows.append(run_child(__file__, {**spec, "views": n, "iterations": args.nvs_iterations}))
        _print_nvs(
            f"3DGS (CPU rasterizer, SH degree 1, no densification) against the number of photos: {w}x{h}, "
            f"{args.nvs_fixed_gaussians} Gaussians, {args.nvs_iterations} iterations, {args.threads} thread(s)",
            views_rows,
            "views",
        )
        gauss_rows = []
        n_views = min(args.nvs_views)
        for g in args.nvs_gaussians:
            json_path = small / f"transforms_{n_views}.json"
            spec = {**base, "method": "3dgs", "capture": str(json_path), "points": g, "views": n_views}
            gauss_rows.append(run_child(__file__, {**spec, "iterations": args.nvs_iterations}))
        _print_nvs(
            f"3DGS against the number of Gaussians: {n_views} photos of {w}x{h}, {args.nvs_iterations} iterations",
            gauss_rows,
            "size",
        )
        if not args.nvs_big:
            print("(300 x 1080p memory rows skipped: --nvs-big 0)")
            return
        t0 = time.perf_counter()
        big = write_capture(root / "big", args.nvs_big, 1920, 1080, 10_000)
        nbytes = sum(p.stat().st_size for p in (big / "images").iterdir())
        print(
            f"\n(wrote {args.nvs_big} JPEGs of 1920x1080, {nbytes / 2**20:.0f} MiB on disk, "
            f"in {time.perf_counter() - t0:.0f} s)"
        )
        rows = []
        spec = {**base, "capture": str(big / "transforms.json"), "points": 10_000, "views": args.nvs_big}
        rows.append(run_child(__file__, {**spec, "method": "3dgs", "iterations": args.nvs_big_iterations}))
        rows.append(run_child(__file__, {**spec, "method": "nerf", "iterations": 20}))
        if args.nvs_low_cache_mb > 0:  # the same with a cache far smaller than the photos: decoded again on use
            low = {**spec, "cache_mb": args.nvs_low_cache_mb}
            rows.append(run_child(__file__, {**low, "method": "3dgs", "iterations": args.nvs_big_iterations}))
            rows.append(run_child(__file__, {**low, "method": "nerf", "iterations": 4}))
        float32_gb = args.nvs_big * 1920 * 1080 * 3 * 4 / 1e9
        print(
            f"\n{args.nvs_big} photos of 1920x1080 on the CPU: peak RSS (loading included) against the "
            f"{MEMORY_TARGET_GB:.0f} GB target. Before (every photo "
            f"as float32 in the scene): {float32_gb:.2f} GB for the photos alone, plus a float32 copy per "
            "training photo as 3DGS targets, or per-pixel rays (56 B a pixel) for NeRF"
        )
        print(
            "| method | photos | cache cap MiB | load s | first iteration s | s / iteration | peak RSS MB "
            "| cache peak MiB | decodes | < 6 GB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if "failed" in r:
                print(f"| {r['method']} | {r['views']} | failed: {r['failed']} |")
                continue
            ok = "yes" if r["peak_rss_mb"] * 2**20 < MEMORY_TARGET_GB * 1e9 else "NO"
            print(
                f"| {r['method']} | {r['views_loaded']} | {r['cache_mb']:.0f} | {r['load_s']:.1f} "
                f"| {r['first_iteration_s']:.2f} | {r['per_iteration_s']:.3f} | {r['peak_rss_mb']:.0f} "
                f"| {r['cache_peak_mb']:.0f} | {r['cache_misses']} | {ok} |"
            )


def _print_nvs(title: str, rows: list[dict], key: str) -> None:
    print(f"\n{title}")
    ok = [r for r in rows if "failed" not in r]
    ref = ok[0] if ok else None
    print(f"| {key} | load s | s / iteration | ratio | peak RSS MB | ratio | cache peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r.get(key, r.get('points'))} | failed: {r['failed']} |")
            continue
        print(
            f"| {r[key]} | {r['load_s']:.2f} | {r['per_iteration_s']:.3f} "
            f"| {r['per_iteration_s'] / ref['per_iteration_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_mb'] / ref['peak_rss_mb']:.2f} | {r['cache_peak_mb']:.1f} |"
        )
    if len(ok) > 1:
        sizes = [r[key] for r in ok]
        print(
            f"growth exponent (log s per iteration / log {key}): "
            f"{slope(sizes, [r['per_iteration_s'] for r in ok]):.2f}; "
            f"peak RSS: {slope(sizes, [r['peak_rss_mb'] for r in ok]):.2f}"
        )


def batch_plan_section(args: argparse.Namespace) -> None:
    """No-op ``plan`` over N captures that are all current."""
    from capture3d.config import load_params
    from capture3d.ops.batch_plan import load_batch_config, plan
    from capture3d.ops.inbox import open_inbox
    from capture3d.ops.manifest import MANIFEST_VERSION, write_json

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-plan-") as tmp:
        for n in args.plan_captures:
            inbox, work = Path(tmp) / f"inbox-{n}", Path(tmp) / f"work-{n}"
            for i in range(n):
                (inbox / f"cap{i:05d}" / "keypoints").mkdir(parents=True)
                (inbox / f"cap{i:05d}" / "keypoints" / "000.json").write_text('{"people": []}\n')
            params = load_params(REPO / "params.yaml")
            todo = plan(open_inbox(str(inbox), load_batch_config(params).s3()), work, params)
            for p in todo.pending:  # record every capture as done under its current key
                manifest = {"status": "ok", "work_key": p.key, "manifest_version": MANIFEST_VERSION}
                write_json(work / "manifests" / f"{p.listing.name}.json", manifest)
            rows.append(
                run_child(__file__, {"section": "plan", "inbox": str(inbox), "work": str(work), "n": n, "repeats": 3})
            )
    print(
        "\nBatch planning: no-op plan() over N tiny body captures (one keypoints JSON each) that are all "
        "current; load_params + listing + one manifest read per capture, median of 3 in a child process"
    )
    ok = [r for r in rows if "failed" not in r]
    ref = ok[0] if ok else None
    print("| captures | pending | wall s (median) | worst s | ms / capture | ratio | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n']} | failed: {r['failed']} |")
            continue
        print(
            f"| {r['n']} | {r['pending']} | {r['wall_s']:.3f} | {r['worst_s']:.3f} | {1000 * r['wall_s'] / r['n']:.2f} "
            f"| {r['wall_s'] / ref['wall_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    if len(ok) > 1:
        sizes = [r["n"] for r in ok]
        print(
            f"growth exponent (log wall / log N): {slope(sizes, [r['wall_s'] for r in ok]):.2f}; "
            f"peak RSS: {slope(sizes, [r['peak_rss_mb'] for r in ok]):.2f}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of these sections on ``bench_scale.py``'s command line."""
    parser.add_argument("--nvs-views", type=int, nargs="*", default=[25, 100, 300])
    parser.add_argument("--nvs-gaussians", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--nvs-fixed-gaussians", type=int, default=10_000)
    parser.add_argument("--nvs-small", type=int, nargs=2, default=[320, 180], metavar=("W", "H"))
    parser.add_argument("--nvs-iterations", type=int, default=4)
    parser.add_argument("--nvs-big", type=int, default=300, help="photos of 1920x1080 (0: skip those rows)")
    parser.add_argument("--nvs-big-iterations", type=int, default=3)
    parser.add_argument("--nvs-cache-mb", type=float, default=2048.0)
    parser.add_argument("--nvs-low-cache-mb", type=float, default=256.0, help="1080p rows again with this cap (0: no)")
    parser.add_argument("--plan-captures", type=int, nargs="*", default=[100, 1000])


def _child_main() -> None:
    spec = json.loads(sys.argv[sys.argv.index("--child") + 1])
    print(json.dumps(_plan_child(spec) if spec.get("section") == "plan" else _nvs_child(spec)))


if __name__ == "__main__":
    _child_main()
