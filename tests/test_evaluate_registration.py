"""Registration metrics on hand-made transforms and clouds with known errors."""

from __future__ import annotations

import numpy as np
import pytest

from capture3d.tasks.registration.evaluate import (
    absolute_pose_errors,
    chamfer_and_fscore,
    fuse,
    pair_metrics,
    relative_transform_errors,
    rotation_error_deg,
)


def _rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def _T(R: np.ndarray, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def test_rotation_error_known_angles() -> None:
    assert rotation_error_deg(np.eye(3), np.eye(3)) == pytest.approx(0.0, abs=1e-6)
    assert rotation_error_deg(_rot_z(30.0), np.eye(3)) == pytest.approx(30.0)
    assert rotation_error_deg(_rot_x(10.0) @ _rot_z(50.0), _rot_x(10.0) @ _rot_z(20.0)) == pytest.approx(30.0)
    assert rotation_error_deg(_rot_z(180.0), np.eye(3)) == pytest.approx(180.0)


def test_relative_transform_errors() -> None:
    rot, trans = relative_transform_errors(_T(_rot_z(5.0), (1.0, 2.0, 3.0)), _T(np.eye(3), (1.0, 2.0, 3.5)))
    assert rot == pytest.approx(5.0)
    assert trans == pytest.approx(0.5)


def test_pair_metrics_recall() -> None:
    gt = {"a": _T(np.eye(3), (0, 0, 0)), "b": _T(_rot_z(90.0), (1.0, 0.0, 0.0)), "c": _T(_rot_x(45.0), (0, 2.0, 0))}
    exact_ab = np.linalg.inv(gt["b"]) @ gt["a"]  # T_b_from_a
    off_ac = np.linalg.inv(gt["c"]) @ gt["a"] @ _T(_rot_z(20.0), (0, 0, 0))  # 20 degrees off
    shifted_cb = np.linalg.inv(gt["b"]) @ gt["c"]
    shifted_cb[:3, 3] += [0.0, 0.0, 0.1]  # 10 cm off
    pairs = [("a", "b", exact_ab), ("a", "c", off_ac), ("c", "b", shifted_cb), ("a", "zz", np.eye(4))]
    out = pair_metrics(pairs, gt)
    rows = {(r["source"], r["target"]): r for r in out["pairs"]}
    assert rows[("a", "b")]["rotation_error_deg"] == pytest.approx(0.0, abs=1e-5)
    assert rows[("a", "b")]["success"]
    assert rows[("a", "c")]["rotation_error_deg"] == pytest.approx(20.0)
    assert not rows[("a", "c")]["success"]
    assert rows[("c", "b")]["translation_error"] == pytest.approx(0.1)
    assert rows[("c", "b")]["success"]
    assert out["skipped"] == [["a", "zz"]]
    assert out["num_pairs"] == 3 and out["num_success"] == 2
    assert out["registration_recall"] == pytest.approx(2 / 3)
    assert not pair_metrics(pairs, gt, trans_thresh=0.05)["pairs"][2]["success"]
    assert pair_metrics([], gt)["registration_recall"] is None


def test_absolute_pose_errors_first_frame_and_global_invariance() -> None:
    gt = {"a": _T(_rot_z(10.0), (1, 0, 0)), "b": _T(_rot_x(30.0), (0, 1, 0)), "c": _T(np.eye(3), (0, 0, 2))}
    est = dict(gt)
    est["c"] = gt["c"] @ _T(_rot_z(4.0), (0.0, 0.0, 0.0))  # scan c rotated 4 degrees about its own origin
    G = _T(_rot_x(70.0) @ _rot_z(-35.0), (5.0, -3.0, 2.0))  # an arbitrary global frame change
    errors = absolute_pose_errors(est, gt, "a")
    moved = absolute_pose_errors({k: G @ v for k, v in est.items()}, gt, "a")
    for name in ("a", "b", "c"):
        for key in ("rotation_error_deg", "translation_error"):
            assert moved[name][key] == pytest.approx(errors[name][key], abs=1e-6)
    assert errors["a"]["rotation_error_deg"] == pytest.approx(0.0, abs=1e-5)
    assert errors["b"]["translation_error"] == pytest.approx(0.0, abs=1e-9)
    assert errors["c"]["rotation_error_deg"] == pytest.approx(4.0)
    assert errors["c"]["translation_error"] == pytest.approx(0.0, abs=1e-9)  # its origin did not move
    with pytest.raises(ValueError):
        absolute_pose_errors(est, gt, "nope")


def test_chamfer_and_fscore_shifted_cloud() -> None:
    g = np.linspace(0.0, 1.0, 41)  # 2.5 cm grid on a unit square in z = 0
    xx, yy = np.meshgrid(g, g)
    gt = np.column_stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)])
    same = chamfer_and_fscore(gt, gt, threshold=0.01)
    assert same["chamfer"] == pytest.approx(0.0) and same["fscore"] == pytest.approx(1.0)
    pred = gt + np.array([0.0, 0.0, 0.02])  # lifted 2 cm off the plane: every NN distance is exactly 2 cm
    m = chamfer_and_fscore(pred, gt, threshold=0.03)
    assert m["chamfer"] == pytest.approx(0.02) and m["pred_to_gt"] == pytest.approx(0.02)
    assert m["gt_to_pred"] == pytest.approx(0.02)
    assert m["precision"] == m["recall"] == m["fscore"] == pytest.approx(1.0)
    assert chamfer_and_fscore(pred, gt, threshold=0.01)["fscore"] == 0.0
    half = np.vstack([gt, gt + [0.0, 0.0, 1.0]])  # prediction with a spurious copy 1 m away
    m = chamfer_and_fscore(half, gt, threshold=0.01)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1.0)
    assert m["fscore"] == pytest.approx(2 * 0.5 / 1.5)
    assert m["pred_to_gt"] == pytest.approx(0.5) and m["gt_to_pred"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        chamfer_and_fscore(np.zeros((0, 3)), gt, 0.01)


def test_fuse_transforms_and_downsamples() -> None:
    cloud = np.random.default_rng(0).uniform(0.0, 1.0, size=(2000, 3))
    T = _T(_rot_z(90.0), (1.0, 0.0, 0.0))
    copy_in_other_frame = (cloud - T[:3, 3]) @ T[:3, :3]  # inv(T) applied: T maps it back onto cloud
    fused = fuse([cloud, copy_in_other_frame], [np.eye(4), T], voxel=0.0)
    assert fused.shape == (4000, 3)
    np.testing.assert_allclose(fused[2000:], cloud, atol=1e-12)
    down = fuse([cloud, copy_in_other_frame], [np.eye(4), T], voxel=0.2)
    assert len(down) <= 6**3 and len(down) > 50
    with pytest.raises(ValueError):
        fuse([cloud], [np.eye(4), T], voxel=0.1)
