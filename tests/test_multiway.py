"""Multiway registration (capture3d.tasks.registration.multiway) on synthetic crops and the Stanford bunny scans.

bun.conf convention (checked numerically): with R the rotation of the quaternion (qi, qj, qk, qr)
= (x, y, z, w), a scan point p lands at ``R^T p + t``; with R instead of R^T, bun000 and bun045
overlap at 0.5% of points within 1 mm, with R^T at 89% (and every other scan at 99-100% against
the union of the others, except chin at 67%).

Measured (voxel 2 mm, FPFH, FGR + point-to-plane ICP, all 45 pairs, 2 CPU cores): all 10 scans
placed within 0.46 deg and 0.9 mm of the ground truth, unplaced none, in ~22-40 s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from registration_helpers import preprocess, random_rigid, transform_points

from capture3d.tasks.registration.graph import fuse_clouds
from capture3d.tasks.registration.multiway import (
    MultiwayConfig,
    candidate_pairs,
    pair_mode,
    register_multiway,
    rigid_difference,
)
from capture3d.tasks.registration.pair import PairConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BUNNY = DATA / "registration" / "bunny"

PAIR = PairConfig(
    global_method="fgr",
    ransac_max_iterations=20000,
    mutual_filter=True,
    distance_factor=1.5,
    icp_method="point_to_plane",
    icp_scales=(3.0, 1.5, 0.75),
    icp_max_iterations=30,
    min_fitness=0.3,
    max_rmse_factor=0.75,
    seed=0,
)
MULTIWAY = MultiwayConfig(
    pairs="all",
    window=2,
    max_all_pairs_scans=12,
    edge_prune_threshold=0.25,
    preference_loop_closure=2.0,
    max_correspondence_factor=1.5,
)


def bumpy_surface(rng: np.random.Generator, n: int = 40000) -> np.ndarray:
    """(n, 3) points of a 1.5 m x 1 m height field with many random Gaussian bumps (3-8 cm wide).

    The bumps must be small and dense: on a gently curved surface two non-overlapping crops can be
    laid onto each other with a high ICP fitness, which no fitness gate can tell from an overlap.
    """
    xy = rng.uniform([-0.75, -0.5], [0.75, 0.5], (n, 2))
    z = np.zeros(n)
    for centre, height, width in zip(
        rng.uniform([-0.75, -0.5], [0.75, 0.5], (80, 2)), rng.uniform(-0.08, 0.08, 80), rng.uniform(0.03, 0.08, 80)
    ):
        z += height * np.exp(-np.sum((xy - centre) ** 2, axis=1) / (2 * width**2))
    return np.column_stack([xy, z])


# ----------------------------------------------------------------------------- pure helpers


def test_candidate_pairs() -> None:
    assert candidate_pairs(4, MULTIWAY) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sequential = dataclasses.replace(MULTIWAY, pairs="sequential", window=2)
    assert candidate_pairs(4, sequential) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    capped = dataclasses.replace(MULTIWAY, max_all_pairs_scans=3, window=1)
    # above the limit: the scalable scheme's odometry pairs first (loop closures follow, test_registration_scale)
    assert pair_mode(4, capped) == "scalable" and pair_mode(3, capped) == "all"
    assert candidate_pairs(4, capped) == [(0, 1), (1, 2), (2, 3)]
    assert candidate_pairs(1, MULTIWAY) == []


def test_fuse_clouds_applies_poses() -> None:
    a = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.zeros((1, 3))))
    shift = np.eye(4)
    shift[:3, 3] = [1.0, 0.0, 0.0]
    fused = fuse_clouds([a, a], [np.eye(4), shift], voxel=0.1)
    np.testing.assert_allclose(np.sort(np.asarray(fused.points)[:, 0]), [0.0, 1.0], atol=1e-9)
    with pytest.raises(ValueError):
        fuse_clouds([a], [], 0.1)


# ----------------------------------------------------------------------------- synthetic


def synthetic_scans(
    outlier_first: bool,
) -> tuple[list[str], list[o3d.geometry.PointCloud], list[np.ndarray], dict[str, np.ndarray], float]:
    """Four overlapping crops of one surface and a sphere far away, each rigidly perturbed.

    Returns names, clouds, features, the true world_from_scan (4, 4) per name, and the voxel.
    """
    rng = np.random.default_rng(11)
    voxel = 0.02
    surface = bumpy_surface(rng)
    crops = {
        f"crop{k}": surface[(surface[:, 0] >= lo) & (surface[:, 0] <= lo + 0.8)]
        for k, lo in enumerate((-0.75, -0.5, -0.25, -0.05))
    }
    sphere = rng.normal(size=(8000, 3))
    crops["sphere"] = 0.3 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True) + [3.0, 0.0, 0.0]
    order = sorted(crops, key=lambda name: (name != "sphere") if outlier_first else (name == "sphere", name))
    names, clouds, features, truth = [], [], [], {}
    for name in order:
        perturbation = random_rigid(rng, np.pi, 0.3)  # scan frame <- world
        noisy = crops[name] + rng.normal(0, 0.002, crops[name].shape)
        cloud, feature = preprocess(transform_points(noisy, perturbation), voxel)
        names.append(name)
        clouds.append(cloud)
        features.append(feature)
        truth[name] = np.linalg.inv(perturbation)  # world_from_scan
    return names, clouds, features, truth, voxel


@pytest.mark.parametrize("outlier_first", [False, True])
def test_multiway_synthetic_places_overlapping_and_rejects_outlier(outlier_first: bool) -> None:
    names, clouds, features, truth, voxel = synthetic_scans(outlier_first)
    result = register_multiway(names, clouds, features, voxel, PAIR, MULTIWAY)

    # The sphere overlaps nothing. crop0's pair with crop2 comes out confidently wrong on this bumpy
    # surface, which contradicts crop0's only other link: crop0 may be left unplaced, with a reason,
    # but never placed wrongly.
    assert "sphere" in result.unplaced and set(result.unplaced) <= {"sphere", "crop0"}
    assert "no confident pair" in result.unplaced["sphere"]
    assert "best fitness" in result.unplaced["sphere"]
    assert len(result.pairs) == 10
    assert {"crop1", "crop2", "crop3"} <= set(result.poses)
    reference = result.reference
    np.testing.assert_allclose(result.poses[reference], np.eye(4), atol=1e-9)
    world = np.linalg.inv(truth[reference])  # the reference scan's frame <- true world
    for name, pose in result.poses.items():
        angle, shift = rigid_difference(pose, world @ truth[name])
        assert angle < 0.5 and shift < 0.5 * voxel, (name, angle, shift)
    kept = set(result.kept_edges)
    assert all("sphere" not in edge for edge in kept)
    assert set(result.seconds) >= {"pairs_s", "optimize_s", "total_s"}


def test_multiway_single_scan() -> None:
    names, clouds, features, _, voxel = synthetic_scans(False)
    result = register_multiway(names[:1], clouds[:1], features[:1], voxel, PAIR, MULTIWAY)
    assert list(result.poses) == names[:1] and not result.unplaced and not result.pairs
    np.testing.assert_allclose(result.poses[names[0]], np.eye(4))


# ----------------------------------------------------------------------------- bunny


def bunny_ground_truth() -> dict[str, np.ndarray]:
    """File name -> world_from_scan (4, 4) from bun.conf: p lands at R^T p + t."""
    poses = {}
    for line in (BUNNY / "bun.conf").read_text().splitlines():
        fields = line.split()
        if not fields or fields[0] != "bmesh":
            continue
        tx, ty, tz, x, y, z, w = map(float, fields[2:9])
        rotation = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        pose = np.eye(4)
        pose[:3, :3] = rotation.T
        pose[:3, 3] = [tx, ty, tz]
        poses[fields[1]] = pose
    return poses


@pytest.mark.slow
def test_bunny_multiway(record_property) -> None:
    if not BUNNY.is_dir():
        pytest.skip(f"{BUNNY} is absent: bunny test skipped")
    voxel = 0.002  # the bunny is ~15 cm: ~4-7k points per scan
    truth = bunny_ground_truth()
    files = sorted(truth, key=lambda f: (f != "bun000.ply", f))  # bun000 first: the reference
    rng = np.random.default_rng(7)
    names, clouds, features, world_from_scan = [], [], [], {}
    for file in files:
        perturbation = random_rigid(rng, np.pi, 0.1)  # perturbed scan <- original scan
        points = np.asarray(o3d.io.read_point_cloud(str(BUNNY / file)).points)
        cloud, feature = preprocess(transform_points(points, perturbation), voxel)
        name = file.removesuffix(".ply")
        names.append(name)
        clouds.append(cloud)
        features.append(feature)
        world_from_scan[name] = truth[file] @ np.linalg.inv(perturbation)

    result = register_multiway(names, clouds, features, voxel, PAIR, MULTIWAY)

    reference = np.linalg.inv(world_from_scan["bun000"])  # bun000's (perturbed) frame <- bun.conf world
    errors = {name: rigid_difference(pose, reference @ world_from_scan[name]) for name, pose in result.poses.items()}
    record_property("bunny_errors_deg_m", errors)
    record_property("bunny_unplaced", result.unplaced)
    record_property("bunny_seconds", result.seconds)
    good = [n for n, (angle, shift) in errors.items() if angle < 2.0 and shift < 0.002]
    assert len(good) >= 8, errors
    for name in set(names) - set(good):  # not within tolerance: unplaced, or at least not grossly wrong
        if name in errors:
            assert errors[name][0] < 10.0 and errors[name][1] < 0.01, (name, errors[name])
        else:
            assert name in result.unplaced
    assert set(result.poses) | set(result.unplaced) == set(names)
    assert result.reference == "bun000"
    assert len(result.pairs) == 45


@pytest.mark.parametrize("with_origins", [True, False])
def test_repeated_structure_fgr_only_never_wrong_and_confident(with_origins: bool) -> None:
    """Five scans of the symmetric synthetic courtyard with FGR only: many confident pair hypotheses
    are wrong (measured: up to 150 deg off at fitness 0.41). With the sensor origins (the scans are
    in their sensor frames) the free-space test must place every scan within 2 deg / 5 cm; without
    them no scan may be placed wrongly with high confidence.

    Measured (seed 0): with origins 3 of 5 placed, all within 0.1 deg, 2 unplaced: FGR (4 modes by
    peeling) never finds the right mode of pairs 0-1 and 2-3 that would join {1, 2} to {0, 3, 4}.
    The issue's target is 90 % placed; the gap is FGR's hypotheses, not the verifier (with
    ``fgr_then_ransac`` all 5 are placed, see test_register_scans_stage)."""
    from capture3d.tasks.registration.evaluate import absolute_pose_errors
    from capture3d.tasks.registration.features import fpfh
    from capture3d.tasks.registration.preprocess import auto_voxel_size, preprocess
    from capture3d.tasks.registration.visibility import range_image
    from capture3d.tasks.synthesis.scans import render_scans

    scans, gt = render_scans(num_scans=5, seed=0)
    voxel = auto_voxel_size(scans)
    prepared = [preprocess(s, voxel) for s in scans]
    features = [fpfh(np.asarray(p.pcd.points), np.asarray(p.pcd.normals), voxel) for p in prepared]
    pair_config = PairConfig("fgr", 100000, False, 1.5, "point_to_plane", (3.0, 1.5, 0.75), 50, 0.3, 1.0, 0)
    config = MultiwayConfig("all", 3, 30, 0.25, 2.0, 1.5)
    views = [range_image(s.points, np.zeros(3)) for s in scans] if with_origins else None
    result = register_multiway(
        [s.name for s in scans], [p.pcd for p in prepared], features, voxel, pair_config, config, views
    )
    assert set(result.poses) | set(result.unplaced) == {s.name for s in scans}
    errors = absolute_pose_errors(result.poses, gt, result.reference) if len(result.poses) > 1 else {}
    wrong = {n for n, e in errors.items() if e["rotation_error_deg"] >= 2.0 or e["translation_error"] >= 0.05}
    assert not wrong & {n for n, c in result.confidence.items() if c == "high"}, (errors, result.confidence)
    assert set(result.low_confidence) == {n for n, c in result.confidence.items() if c == "low"}
    if with_origins:
        assert result.verification["free_space_test"] == "used"
        assert len(result.poses) == 5 and not wrong and not result.low_confidence, (errors, result.unplaced)
    else:
        assert result.verification["scans_with_sensor_origin"] == 0
        assert "not possible" in str(result.verification["free_space_test"])


def test_ambiguous_pair_hypotheses_are_rejected() -> None:
    """Two distinct poses of one pair that both pass the free-space test: the clearly better one stays;
    with agreement too close to tell, both go."""
    from capture3d.tasks.registration.graph import (
        Candidate,
        Check,
        _resolve_ambiguous_pairs,
    )
    from capture3d.tasks.registration.visibility import VisibilityScore

    turn = np.diag([-1.0, -1.0, 1.0, 1.0])

    def cand(T: np.ndarray, agree: int) -> Candidate:
        c = Candidate(0, 1, 0, T, 0.5, 0.01, "test")
        c.check = Check(True, "", (VisibilityScore(0, agree, 500, 0), VisibilityScore(0, agree, 500, 0)), None)
        return c

    right, wrong = cand(np.eye(4), 2000), cand(turn, 800)
    rejected: list = []
    assert _resolve_ambiguous_pairs([right, wrong], rejected) == [right]
    assert rejected[0][0] is wrong and "more agreement" in rejected[0][1]
    close = cand(turn, 1900)
    rejected = []
    assert _resolve_ambiguous_pairs([right, close], rejected) == []
    assert len(rejected) == 2
