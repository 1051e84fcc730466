"""Scan and ground-truth pose I/O: every format round-trips, bad inputs fail with one line, real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from capture3d.tasks.registration.scan_io import (
    Scan,
    list_scan_files,
    quaternion_to_rotation,
    read_gt_poses,
    read_scan,
    read_scans,
    write_point_cloud,
    write_poses_json,
)


def _points(n: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 3))


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(rng.normal(size=4))
    T[:3, 3] = rng.normal(size=3)
    return T


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


# --------------------------------------------------------------------------- scans


def test_ply_round_trip_with_colours_and_normals(tmp_path: Path) -> None:
    pts, cols = _points(), np.random.default_rng(1).random((200, 3))
    write_point_cloud(tmp_path / "a.ply", pts, cols, normals=np.tile([0.0, 0.0, 1.0], (200, 1)))
    scan = read_scan(tmp_path / "a.ply")
    assert scan.name == "a"
    np.testing.assert_allclose(scan.points, pts, atol=1e-6)
    assert scan.colors is not None and scan.colors.shape == (200, 3)
    np.testing.assert_allclose(scan.colors, cols, atol=1 / 255 + 1e-6)  # PLY stores 8-bit colours
    assert scan.points.dtype == np.float64
    assert read_scan(tmp_path / "a.ply").points.shape == (200, 3)
    assert (tmp_path / "a.ply").read_bytes()[:40].find(b"binary") > 0


def test_pcd_and_mesh_ply_vertices(tmp_path: Path) -> None:
    pts = _points()
    o3d.io.write_point_cloud(str(tmp_path / "b.pcd"), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts)))
    scan = read_scan(tmp_path / "b.pcd")
    np.testing.assert_allclose(scan.points, pts, atol=1e-6)
    assert scan.colors is None
    mesh = o3d.geometry.TriangleMesh.create_box()
    o3d.io.write_triangle_mesh(str(tmp_path / "box.ply"), mesh)
    assert read_scan(tmp_path / "box.ply").points.shape == (8, 3)


def test_xyz_formats(tmp_path: Path) -> None:
    pts = _points(50)
    np.savetxt(tmp_path / "plain.xyz", pts)
    scan = read_scan(tmp_path / "plain.xyz")
    np.testing.assert_allclose(scan.points, pts, atol=1e-12)
    assert scan.colors is None
    cols255 = np.random.default_rng(2).integers(0, 256, size=(50, 3))
    cols255[0] = [255, 3, 2]  # makes the 0-255 range unambiguous
    np.savetxt(tmp_path / "rgb255.xyz", np.hstack([pts, cols255]))
    scan = read_scan(tmp_path / "rgb255.xyz")
    np.testing.assert_allclose(scan.colors, cols255 / 255.0)
    cols01 = np.random.default_rng(3).random((50, 3))
    np.savetxt(tmp_path / "rgb01.xyz", np.hstack([pts, cols01]))
    np.testing.assert_allclose(read_scan(tmp_path / "rgb01.xyz").colors, cols01, atol=1e-12)


def test_npy_formats(tmp_path: Path) -> None:
    pts = _points(30)
    np.save(tmp_path / "p3.npy", pts.astype(np.float32))
    scan = read_scan(tmp_path / "p3.npy")
    assert scan.points.dtype == np.float64 and scan.colors is None
    np.testing.assert_allclose(scan.points, pts, atol=1e-6)
    cols = np.random.default_rng(4).random((30, 3))
    np.save(tmp_path / "p6.npy", np.hstack([pts, cols]))
    np.testing.assert_allclose(read_scan(tmp_path / "p6.npy").colors, cols)


def test_bad_scans_raise_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "empty.xyz")
    _one_line(exc, "empty.xyz", "no points")
    pts = _points(20)
    pts[[3, 7, 9]] = np.nan
    np.save(tmp_path / "nan.npy", pts)
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "nan.npy")
    _one_line(exc, "nan.npy", "3 of 20")
    np.save(tmp_path / "shape.npy", np.zeros((10, 4)))
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "shape.npy")
    _one_line(exc, "shape.npy", "(10, 4)")
    (tmp_path / "junk.ply").write_text("this is not a ply file")
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "junk.ply")
    _one_line(exc, "junk.ply")
    (tmp_path / "words.xyz").write_text("1 2 three\n")
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "words.xyz")
    _one_line(exc, "words.xyz")
    with pytest.raises(ValueError) as exc:
        read_scan(tmp_path / "missing.ply")
    _one_line(exc, "missing.ply")


def test_list_scan_files_skips_non_scans(tmp_path: Path) -> None:
    write_point_cloud(tmp_path / "s2.ply", _points())
    np.save(tmp_path / "s1.npy", _points())
    np.save(tmp_path / "gt.npy", np.eye(4))  # a 4x4 transform, not a cloud
    np.savetxt(tmp_path / "s3.xyz", _points(10))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.ply").write_bytes((tmp_path / "s2.ply").read_bytes())
    for sub in ("gt", "poses"):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "x.npy", _points())
    (tmp_path / "more").mkdir()
    np.save(tmp_path / "more" / "s4.npy", _points())
    names = [p.name for p in list_scan_files(tmp_path)]
    assert names == ["s4.npy", "s1.npy", "s2.ply", "s3.xyz"]
    assert [s.name for s in read_scans(tmp_path)] == ["s4", "s1", "s2", "s3"]


def test_read_scans_empty_folder(tmp_path: Path) -> None:
    np.save(tmp_path / "gt.npy", np.eye(4))
    with pytest.raises(ValueError) as exc:
        read_scans(tmp_path)
    _one_line(exc, str(tmp_path), "no point-cloud scans")


# --------------------------------------------------------------------------- ground truth


def test_json_round_trip_and_bare_mapping(tmp_path: Path) -> None:
    poses = {"a": _rigid(0), "b": _rigid(1)}
    write_poses_json(tmp_path / "gt" / "poses.json", poses)
    back = read_gt_poses(tmp_path / "gt" / "poses.json", ["a", "b"])
    for k, T in poses.items():
        np.testing.assert_allclose(back[k], T, atol=1e-12)
    (tmp_path / "bare.json").write_text(json.dumps({k: v.tolist() for k, v in poses.items()}))
    np.testing.assert_allclose(read_gt_poses(tmp_path / "bare.json", ["b"])["b"], poses["b"], atol=1e-12)


def test_matrices_folder(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "a.txt", _rigid(2))
    np.save(tmp_path / "b.npy", _rigid(3))
    poses = read_gt_poses(tmp_path, ["a", "b"])
    np.testing.assert_allclose(poses["a"], _rigid(2), atol=1e-9)
    np.testing.assert_allclose(poses["b"], _rigid(3), atol=1e-12)


def test_stanford_conf_convention(tmp_path: Path) -> None:
    q = np.array([0.1, -0.3, 0.2, 0.9])
    q /= np.linalg.norm(q)
    (tmp_path / "x.conf").write_text(
        "camera 0 0 0 0 0 0 1\nbmesh a.ply 0 0 0 0 0 0 1\nbmesh b.ply 1 2 3 " + " ".join(map(str, q)) + "\n"
    )
    poses = read_gt_poses(tmp_path / "x.conf", ["a", "b"])
    np.testing.assert_allclose(poses["a"], np.eye(4))
    np.testing.assert_allclose(poses["b"][:3, :3], quaternion_to_rotation(q).T, atol=1e-12)  # R^T p + t
    np.testing.assert_allclose(poses["b"][:3, 3], [1, 2, 3])


def _write_log(path: Path, blocks: dict[tuple[int, int], np.ndarray], n: int) -> None:
    lines = []
    for (i, j), T in blocks.items():
        lines.append(f"{i}\t{j}\t{n}")
        lines += ["\t".join(f"{v:.12f}" for v in row) for row in T]
    path.write_text("\n".join(lines) + "\n")


def test_3dmatch_log_convention_and_chaining(tmp_path: Path) -> None:
    # world poses of fragments 0..3; gt.log holds T (i <- j) = inv(P_i) @ P_j
    P = [_rigid(10 + k) for k in range(4)]

    def rel(i: int, j: int) -> np.ndarray:
        return np.linalg.inv(P[i]) @ P[j]

    _write_log(tmp_path / "gt.log", {(0, 1): rel(0, 1), (0, 2): rel(0, 2), (2, 3): rel(2, 3)}, 4)
    names = [f"cloud_bin_{k}" for k in range(4)]
    poses = read_gt_poses(tmp_path / "gt.log", names)
    for k in range(4):  # relative to fragment 0; fragment 3 is reached through 2
        np.testing.assert_allclose(poses[names[k]], rel(0, k), atol=1e-9)
    # names in another order: trailing integers, not positions, pick the fragments
    shuffled = ["cloud_bin_2", "cloud_bin_0", "cloud_bin_3", "cloud_bin_1"]
    poses = read_gt_poses(tmp_path / "gt.log", shuffled)
    np.testing.assert_allclose(poses["cloud_bin_0"], rel(2, 0), atol=1e-9)


def test_gt_missing_scan_and_non_rigid(tmp_path: Path) -> None:
    write_poses_json(tmp_path / "poses.json", {"a": np.eye(4), "b": _rigid(5)})
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "poses.json", ["a", "b", "c"])
    _one_line(exc, "poses.json", "c")
    assert set(read_gt_poses(tmp_path / "poses.json", ["a", "b", "c"], require_all=False)) == {"a", "b"}
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "poses.json", ["x", "y"], require_all=False)
    _one_line(exc, "poses.json", "none of the scans")
    scaled = _rigid(6)
    scaled[:3, :3] *= 1.01
    (tmp_path / "bad.json").write_text(json.dumps({"a": np.eye(4).tolist(), "b": scaled.tolist()}))
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "bad.json", ["a", "b"])
    _one_line(exc, "bad.json", "'b'", "not a rigid transform")
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])
    (tmp_path / "mirror.json").write_text(json.dumps({"a": mirror.tolist()}))
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "mirror.json", ["a"])
    _one_line(exc, "mirror.json", "det R = -1")
    (tmp_path / "shape.json").write_text(json.dumps({"a": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "shape.json", ["a"])
    _one_line(exc, "shape.json", "4x4")
    with pytest.raises(ValueError) as exc:
        read_gt_poses(tmp_path / "nope.json", ["a"])
    _one_line(exc, "nope.json", "not found")


def test_write_poses_json_rejects_non_rigid(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_poses_json(tmp_path / "p.json", {"a": np.eye(4) * 2})


def test_write_point_cloud_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_point_cloud(tmp_path / "x.ply", np.zeros((5, 2)))
    with pytest.raises(ValueError):
        write_point_cloud(tmp_path / "x.ply", np.zeros((5, 3)), colors=np.zeros((4, 3)))


# --------------------------------------------------------------------------- real data


def _fraction_within(moving: np.ndarray, fixed: np.ndarray, dist: float) -> float:
    """Fraction of ``moving`` (N, 3) points whose nearest neighbour in ``fixed`` (M, 3) is within ``dist``."""
    tree = o3d.geometry.KDTreeFlann(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(fixed)))
    hits = sum(tree.search_knn_vector_3d(p, 1)[2][0] <= dist * dist for p in moving)
    return hits / len(moving)


def _place(scan: Scan, T: np.ndarray) -> np.ndarray:
    return scan.points @ T[:3, :3].T + T[:3, 3]


def test_bunny_scans_and_conf(shared_data: Path) -> None:
    folder = shared_data / "registration" / "bunny"
    scans = read_scans(folder)
    assert len(scans) == 10
    assert all(len(s.points) > 30000 for s in scans)
    by_name = {s.name: s for s in scans}
    poses = read_gt_poses(folder / "bun.conf", list(by_name))
    assert set(poses) == set(by_name)
    a, b = _place(by_name["bun000"], poses["bun000"]), _place(by_name["bun045"], poses["bun045"])
    assert _fraction_within(b[::4], a, 0.001) > 0.85
    wrong = poses["bun045"].copy()
    wrong[:3, :3] = wrong[:3, :3].T  # the other quaternion convention must not align them
    assert _fraction_within(_place(by_name["bun045"], wrong)[::4], a, 0.001) < 0.2


def test_3dmatch_pair(shared_data: Path) -> None:
    folder = shared_data / "registration" / "3dmatch_pair"
    scans = read_scans(folder)  # gt.npy (4x4) is not a scan
    assert [s.name for s in scans] == ["ref", "src"]
    poses = read_gt_poses(folder / "gt.npy", ["ref", "src"])
    np.testing.assert_allclose(poses["ref"], np.eye(4))
    np.testing.assert_allclose(poses["src"], np.load(folder / "gt.npy"), atol=1e-4)
    src = _place(scans[1], poses["src"])
    inverse = _place(scans[1], np.linalg.inv(poses["src"]))
    assert _fraction_within(src, scans[0].points, 0.05) > 0.35
    assert _fraction_within(inverse, scans[0].points, 0.05) < 0.15
