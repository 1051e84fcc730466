"""Real-data evaluation of the body fit (capture3d.tasks.body.real_eval): the metrics on exact
synthetic inputs, the loaders and joint mappings against the datasets' own 2D ground truth, and
the fit quality on a few real frames (single uncalibrated view and calibrated 5-view) with the
shipped pose prior, asserted against the measured values with a margin that the fit without the
prior fails."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.config import load_params
from capture3d.tasks.body.capture import BodyInputs
from capture3d.tasks.body.evaluate import evaluate_records
from capture3d.tasks.body.keypoint_io import load_keypoints
from capture3d.tasks.body.metrics import pa_mpjpe, root_aligned_mpjpe
from capture3d.tasks.body.real_eval import (
    INPUT_MAPS,
    LIMB_JOINTS,
    PANOPTIC_FULL_VIEW_CAMERAS,
    choose_views,
    load_campus_shelf,
    load_dataset,
    load_mpi_inf_3dhp,
    load_panoptic,
    project,
    virtual_cameras,
    write_capture,
)

logger = logging.getLogger(__name__)


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.fixture(scope="module")
def body_data(repo_root: Path) -> Path:
    for path in (Path("/work/shared/data/body"), repo_root.parent / "shared" / "data" / "body"):
        if path.is_dir():
            return path
    pytest.skip("neither /work/shared/data/body nor ../shared/data/body exists: real body data absent")


# ------------------------------------------------------------------ metrics on exact inputs


def test_pa_mpjpe_of_similar_copy_is_zero() -> None:
    gt = np.random.default_rng(0).normal(size=(3, 12, 3))  # (N, K, 3)
    pred = np.stack([2.5 * g @ _rotation(i).T + [1.0, -2.0, 3.0] for i, g in enumerate(gt)])
    assert np.allclose(pa_mpjpe(pred, gt), 0.0, atol=1e-9)


def test_root_aligned_mpjpe_of_translated_copy_is_zero_and_sees_rotation() -> None:
    gt = np.random.default_rng(1).normal(size=(2, 12, 3))
    root = [LIMB_JOINTS.index("left_hip"), LIMB_JOINTS.index("right_hip")]
    assert np.allclose(root_aligned_mpjpe(gt + [0.3, -4.0, 7.0], gt, root), 0.0, atol=1e-12)
    # a rotation about the root is not aligned away (protocol 1), unlike PA-MPJPE
    centre = gt[:, root].mean(axis=1, keepdims=True)
    turned = (gt - centre) @ _rotation(5).T + centre
    assert (root_aligned_mpjpe(turned, gt, root) > 0.1).all()
    assert np.allclose(pa_mpjpe(turned, gt), 0.0, atol=1e-9)
    # a known offset of one joint: error = offset / K
    moved = gt.copy()
    moved[:, 0, 0] += 1.2
    assert np.allclose(root_aligned_mpjpe(moved, gt, root), 0.1)


def test_evaluate_records_reports_root_aligned_mpjpe_and_joints_compared() -> None:
    gt = np.random.default_rng(2).normal(size=(12, 3)) * 0.3
    names = list(LIMB_JOINTS) + ["nose"]
    points = np.vstack([gt + [1.0, 2.0, 3.0], [[0.0, 0.0, 0.0]]])  # translated copy; nose not in the truth
    record = {"body": "b0", "views": [], "keypoints3d": {"names": names, "points": points.tolist()}}
    truth = {"b0": {n: gt[i].tolist() for i, n in enumerate(LIMB_JOINTS)}}
    out = evaluate_records([record], None, truth)
    row, summary = out["per_body"][0], out["summary"]
    assert row["root_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["mpjpe_mm"] == pytest.approx(1000 * np.sqrt(14.0))  # the existing keys stay
    assert row["joints_3d"] == 12 and row["joints_compared"] == list(LIMB_JOINTS)
    assert summary["joints_compared"] == list(LIMB_JOINTS) and "mid_hip" in summary["root_joint"]
    assert summary["median_root_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    # without both hips there is no root: no root-aligned MPJPE, the other metrics remain
    no_hips = {"b0": {n: gt[i].tolist() for i, n in enumerate(LIMB_JOINTS) if "hip" not in n}}
    row = evaluate_records([record], None, no_hips)["per_body"][0]
    assert "root_mpjpe_mm" not in row and row["joints_3d"] == 10


# ------------------------------------------------------------------ loaders and joint mappings


def test_mappings_name_model_joints() -> None:
    from capture3d.tasks.body.model import COCO17

    for dataset, mapping in INPUT_MAPS.items():
        assert set(mapping.values()) <= set(COCO17), dataset
        assert set(LIMB_JOINTS) <= set(mapping.values()), dataset


def test_mpi_loader_reprojects_to_its_2d_labels(body_data: Path) -> None:
    poses = load_mpi_inf_3dhp(body_data / "mpi_inf_3dhp")
    labels = json.loads((body_data / "mpi_inf_3dhp" / "keypoints2d.json").read_text())
    coco_names = labels["coco17_names"]
    assert len(poses) == 4
    for pose in poses:
        assert set(pose.joints) == set(LIMB_JOINTS)
        (camera,) = pose.cameras.values()
        coco = labels["images"][f"{pose.ident}.jpg"]["coco17"]
        for name in LIMB_JOINTS:
            xy, depth = project(pose.joints[name][None], camera)
            tolerance = 2.5 if "hip" in name else 0.2  # the README: 2D hips are not exact projections
            assert depth[0] > 0 and np.abs(xy[0] - coco[coco_names.index(name)][:2]).max() < tolerance, name


@pytest.mark.parametrize("which", ["shelf", "campus"])
def test_campus_shelf_loader_reprojects_to_its_2d_labels(body_data: Path, which: str) -> None:
    poses = load_campus_shelf(body_data / "campus_shelf", which)
    labels = json.loads((body_data / "campus_shelf" / which / "keypoints2d.json").read_text())
    assert len(poses) == (6 if which == "shelf" else 3)
    worst = 0.0
    for pose in poses:
        frame, pid = pose.ident.split("/")
        people = next(f for f in labels["frames"] if f"f{f['frame']}" == frame)["persons"][pid.removeprefix("p")]
        for cam_id, joints in people.items():
            xy, _ = project(np.stack([pose.joints[n] for n in LIMB_JOINTS]), pose.cameras[f"cam{cam_id}"])
            worst = max(worst, float(np.abs(xy - np.array([joints[n] for n in LIMB_JOINTS])).max()))
    assert worst < (0.05 if which == "shelf" else 3.0)  # Campus cameras 0, 1 hold integer pixels


def test_panoptic_loader_and_capture_round_trip(body_data: Path, tmp_path: Path) -> None:
    poses = load_panoptic(body_data / "panoptic")
    assert len(poses) == 12 and len(poses[0].cameras) == 31
    assert set(poses[-1].joints) == set(INPUT_MAPS["panoptic"].values())  # band2 people are complete
    complete = load_dataset(body_data, "panoptic", frames=16)
    assert len(complete) == 8  # the 4 band1 person-frames with missing limb joints are left out
    # calibrated: the world frame, one group per body, keypoints = projections
    pose = complete[0]
    bodies = write_capture(tmp_path / "mv", [(pose, PANOPTIC_FULL_VIEW_CAMERAS[:3])], calibrated=True)
    assert bodies[0].body == "frame000#0"
    cams = json.loads((tmp_path / "mv" / "cameras.json").read_text())
    assert cams["groups"] == [list(cams["images"])] and len(cams["images"]) == 3
    gt = json.loads((tmp_path / "mv" / "gt" / "joints3d.json").read_text())["frame000#0"]
    assert list(gt) == list(LIMB_JOINTS) and np.allclose(gt["left_knee"], pose.joints["left_knee"])
    people = load_keypoints(BodyInputs.from_capture(tmp_path / "mv").keypoints)
    assert len(people) == 3 and people[0].image_size == (1920, 1080)
    first = people[0]
    xy, _ = project(pose.joints["nose"][None], pose.cameras[PANOPTIC_FULL_VIEW_CAMERAS[0]])
    assert np.allclose(first.xy[first.names.index("nose")], xy[0], atol=1e-3)
    # uncalibrated single view: no cameras.json, the truth in that camera's frame
    rng = np.random.default_rng(0)
    view = choose_views(pose, 1, rng)
    single = write_capture(tmp_path / "sv", [(pose, view)], calibrated=False)
    assert not (tmp_path / "sv" / "cameras.json").exists()
    gt = json.loads((tmp_path / "sv" / "gt" / "joints3d.json").read_text())[single[0].body]
    cam = pose.cameras[view[0]]
    assert np.allclose(gt["left_wrist"], cam.R @ pose.joints["left_wrist"] + cam.t)
    (person,) = load_keypoints(tmp_path / "sv" / "keypoints.json")
    assert person.person == single[0].body
    uv = cam.K @ np.asarray(gt["left_wrist"])
    assert np.allclose(person.xy[person.names.index("left_wrist")], uv[:2] / uv[2], atol=1e-3)


def test_virtual_cameras_look_at_the_body_upright() -> None:
    target = np.array([0.5, 0.9, -1.0])
    cams = virtual_cameras(target, 4, np.random.default_rng(0))
    assert len(cams) == 4
    for cam in cams.values():
        xy, depth = project(np.stack([target, target + [0, 0.5, 0]]), cam)
        assert np.allclose(xy[0], [500, 500]) and depth[0] == pytest.approx(np.linalg.norm(target - cam.center))
        assert xy[1, 1] < xy[0, 1]  # world up is image up
        assert np.linalg.det(cam.R) == pytest.approx(1.0)


# ------------------------------------------------------------------ the fit on real frames

# Measured values (Anny with the shipped CMU pose prior, params.yaml fit_bodies, the sample below;
# benchmarks/bench_bodies_real.py has the full table). Without the prior (pose_prior: none, one
# facing pair) the same frames gave 148.7 mm PA-MPJPE and 195.3 mm root MPJPE: these bounds fail
# that. The margins let a real regression fail.
SINGLE_VIEW_PA_MAX_MM = 80.0  # measured 62.4 mm (4 CMU frames from clips the prior left out, seed 0)
SINGLE_VIEW_ROOT_MAX_MM = 125.0  # measured 100.4 mm
MULTI_VIEW_MPJPE_MAX_MM = 25.0  # measured 17.4 mm (2 Shelf person-frames, 5 views; 15.2 without the prior)


def test_real_frames_fit_quality(body_data: Path, repo_root: Path, tmp_path: Path) -> None:
    from capture3d.stages import fit_bodies

    torch.set_num_threads(1)  # small batches: a second thread only adds overhead
    params = load_params(repo_root / "params.yaml")
    config = fit_bodies.load_config({"fit_bodies": {**params["fit_bodies"], "overlays": False, "device": "cpu"}})
    model = fit_bodies.build_model(config, torch.device("cpu"))  # with the shipped pose prior
    start = time.perf_counter()
    # single uncalibrated view, ground-truth 2D input: 4 CMU mocap frames (virtual camera)
    poses = load_dataset(body_data, "mocap_cmu", frames=4, seed=0, views=1)
    rng = np.random.default_rng(0)
    write_capture(tmp_path / "sv", [(p, choose_views(p, 1, rng)) for p in poses], calibrated=False)
    out = fit_bodies.run(fit_bodies.BodyInputs.from_capture(tmp_path / "sv"), tmp_path / "fit_sv", config, model)
    single = json.loads((out / "metrics.json").read_text())
    # calibrated 5-view: 2 Shelf person-frames (seeded)
    poses = load_dataset(body_data, "shelf", frames=2, seed=0)
    views = ("cam0", "cam1", "cam2", "cam3", "cam4")
    write_capture(tmp_path / "mv", [(p, views) for p in poses], calibrated=True)
    out = fit_bodies.run(fit_bodies.BodyInputs.from_capture(tmp_path / "mv"), tmp_path / "fit_mv", config, model)
    multi = json.loads((out / "metrics.json").read_text())
    seconds = time.perf_counter() - start
    logger.info(
        f"real frames: single-view median PA-MPJPE {single['median_pa_mpjpe_mm']:.1f} mm, root MPJPE "
        f"{single['median_root_mpjpe_mm']:.1f} mm; shelf 5-view MPJPE {multi['median_mpjpe_mm']:.1f} mm, "
        f"PA {multi['median_pa_mpjpe_mm']:.1f} mm; {seconds:.1f} s"
    )
    for metrics in (single, multi):
        assert metrics["joints_compared"] == list(LIMB_JOINTS)
        assert metrics["median_error_px"] < 5.0, metrics["per_body"]  # the 2D fit itself is fine
    assert single["people_fitted"] == 4 and multi["people_fitted"] == 2 and multi["views_max"] == 5
    assert single["median_pa_mpjpe_mm"] < SINGLE_VIEW_PA_MAX_MM, single["per_body"]
    assert single["median_root_mpjpe_mm"] < SINGLE_VIEW_ROOT_MAX_MM, single["per_body"]
    assert multi["median_mpjpe_mm"] < MULTI_VIEW_MPJPE_MAX_MM, multi["per_body"]
