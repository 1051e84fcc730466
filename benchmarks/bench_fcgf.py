"""Benchmark: the pure-PyTorch sparse convolution against dense conv3d, and FCGF extraction against FPFH.

Two tables, measured in one run on one device (``--device cpu|cuda``; CUDA also runs the CPU
table unless ``--cuda-only``):

1. **Sparse vs dense convolution** on a 3DMatch-sized fragment: the 3DMatch demo fragment
   (``../shared/data/registration/3dmatch_pair/src.npy``) voxelised at 2.5 cm (about 20k occupied
   voxels; a synthetic surface of the same size when the data is absent). For C_in -> C_out in
   (32 -> 32, 32 -> 64, 64 -> 64), kernel 3, stride 1: forward and forward + backward time
   (median of ``--repeats``) and peak memory of :func:`capture3d.tasks.fcgf.sparse.sparse_conv` on the
   occupied voxels, against ``torch.nn.functional.conv3d`` (padding 1) on the dense occupied
   bounding grid. Each measurement runs in a fresh subprocess, so the CPU peak is that process's
   peak resident memory above its idle baseline (on CUDA, ``torch.cuda.max_memory_allocated``).
2. **Descriptor extraction per fragment**: FCGF ResUNetBN2C (32-dim, conv1 k=5; weights do not
   change the cost) against Open3D FPFH (radius 5 voxels, max 100 neighbours, normals given) on
   the same downsampled fragment, median of ``--repeats``; FCGF time includes voxelisation and the
   per-point lookup.

Ratios are against the dense (table 1) or FPFH (table 2) time measured in this same run.
Usage: python benchmarks/bench_fcgf.py [--device cpu|cuda] [--repeats N] [--voxel 0.025]
(``BENCH_FRAGMENT=path.npy`` points it at another (N, 3) fragment).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(
    os.environ.get("BENCH_FRAGMENT", REPO.parent / "shared" / "data" / "registration" / "3dmatch_pair" / "src.npy")
)
CHANNELS = ((32, 32), (32, 64), (64, 64))

logger = logging.getLogger("bench_fcgf")


def fragment() -> tuple[np.ndarray, str]:
    """(N, 3) points of the 3DMatch demo fragment, or a synthetic room-sized surface."""
    if DATA.is_file():
        return np.load(DATA).astype(np.float64), "3DMatch demo fragment (src.npy)"
    logger.warning("%s missing: using a synthetic surface", DATA)
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 3.0, size=(2, 200_000))
    return np.stack([u, v, 0.3 * np.sin(2 * u) * np.cos(3 * v)], 1), "synthetic surface 3 x 3 m"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def one_conv(kind: str, cin: int, cout: int, device: str, voxel: float, repeats: int) -> dict:
    """Runs inside the measuring subprocess: time and peak memory of one convolution variant."""
    import torch
    import torch.nn.functional as F

    from capture3d.tasks.fcgf.sparse import (
        SparseTensor,
        batch_coords,
        quantize,
        sparse_conv,
    )

    torch.manual_seed(0)
    pts, _ = fragment()
    coords3, _, _ = quantize(torch.as_tensor(pts), voxel)  # (M, 3)
    coords = batch_coords([coords3 - coords3.min(0).values])  # (M, 4)
    extent = (coords[:, 1:].max(0).values + 1).tolist()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    weight = torch.randn(27, cin, cout, device=device, requires_grad=True)
    feats = torch.randn(coords.shape[0], cin, device=device, requires_grad=True)
    if kind == "sparse":
        x_coords = coords.to(device)

        def step(backward: bool) -> None:
            y = sparse_conv(SparseTensor(feats, x_coords), weight, 3)  # fresh kernel map each call
            if backward:
                y.features.sum().backward()
    else:
        dense = torch.zeros(1, cin, *extent, device=device)
        c = coords[:, 1:].to(device)
        dense[0, :, c[:, 0], c[:, 1], c[:, 2]] = feats.detach().T
        dense.requires_grad_(True)
        w = torch.randn(cout, cin, 3, 3, 3, device=device, requires_grad=True)  # same cost as the sparse weight

        def step(backward: bool) -> None:
            y = F.conv3d(dense, w, padding=1)  # (1, C_out, X, Y, Z)
            if backward:
                y.sum().backward()

    out = {"voxels": int(coords.shape[0]), "grid": extent}
    for backward in (False, True):
        step(backward)  # warm-up
        times = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            step(backward)
            _sync(device)
            times.append(time.perf_counter() - t)
        out["fwd_bwd_s" if backward else "fwd_s"] = statistics.median(times)
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return out


def conv_table(device: str, voxel: float, repeats: int) -> list[str]:
    lines = [
        "| C_in -> C_out | variant | voxels / grid | fwd s | fwd+bwd s | peak MiB | fwd+bwd vs dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for cin, cout in CHANNELS:
        res = {}
        for kind in ("dense", "sparse"):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                kind,
                str(cin),
                str(cout),
                "--device",
                device,
                "--voxel",
                str(voxel),
                "--repeats",
                str(repeats),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                res[kind] = None
                logger.warning("%s %d->%d failed: %s", kind, cin, cout, proc.stderr.strip().splitlines()[-1:])
                continue
            res[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        for kind in ("dense", "sparse"):
            r = res[kind]
            if r is None:
                lines.append(f"| {cin} -> {cout} | {kind} | failed (out of memory?) | | | | |")
                continue
            size = f"{r['voxels']}" if kind == "sparse" else "x".join(map(str, r["grid"]))
            ratio = f"{r['fwd_bwd_s'] / res['dense']['fwd_bwd_s']:.3f}" if res.get("dense") else "n/a"
            lines.append(
                f"| {cin} -> {cout} | {kind} | {size} | {r['fwd_s']:.4f} | {r['fwd_bwd_s']:.4f} | "
                f"{r['peak_mb']:.0f} | {ratio} |"
            )
    return lines


def extraction_table(device: str, voxel: float, repeats: int) -> list[str]:
    import torch

    from capture3d.tasks.fcgf.model import ResUNetBN2C, extract_features
    from capture3d.tasks.fcgf.sparse import quantize

    pts, _ = fragment()
    try:
        import open3d as o3d

        from capture3d.tasks.registration.features import fpfh
    except ImportError:  # a GPU machine without Open3D: FCGF alone, on voxel centres
        o3d = None
    if o3d is not None:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)).voxel_down_sample(voxel)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
        down, normals = np.asarray(pcd.points), np.asarray(pcd.normals)
    else:
        down = (quantize(torch.as_tensor(pts), voxel)[0].double().numpy() + 0.5) * voxel
    torch.manual_seed(0)
    model = ResUNetBN2C(1, 32, bn_momentum=0.05, conv1_kernel_size=5).to(device).eval()

    def run_fcgf() -> None:
        extract_features(model, down, voxel)
        _sync(device)

    timings = {}
    runs = [(f"FCGF ({device})", run_fcgf)]
    if o3d is not None:
        runs.insert(0, ("FPFH (Open3D, cpu)", lambda: fpfh(down, normals, voxel)))
    for name, fn in runs:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        timings[name] = statistics.median(times)
    ref = timings.get("FPFH (Open3D, cpu)")
    lines = [
        f"{len(down)} points after {voxel} m downsampling",
        "",
        "| descriptor | s per fragment | vs FPFH |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} | {f'{v / ref:.2f}' if ref else 'n/a'} |" for k, v in timings.items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--voxel", type=float, default=0.025)
    parser.add_argument("--cuda-only", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "CIN", "COUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        kind, cin, cout = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(one_conv(kind, cin, cout, args.device, args.voxel, args.repeats)))
        return 0
    _, source = fragment()
    devices = ["cuda"] if args.cuda_only else (["cpu", "cuda"] if args.device == "cuda" else ["cpu"])
    for device in devices:
        print(f"\n## {source}, voxel {args.voxel} m, device {device}, median of {args.repeats}\n")
        print("\n".join(conv_table(device, args.voxel, args.repeats)))
        print()
        print("\n".join(extraction_table(device, args.voxel, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
