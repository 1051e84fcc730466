"""Body-fit inputs that must not silently mislead: COCO files read by their declared joint names,
cameras.json without groups, cameras checked against the keypoints, and ground truth that shares
too few joints. Small synthetic captures; the input layer is tested without fitting where it can be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.config import load_params
from capture3d.errors import CaptureError
from capture3d.stages import evaluate_bodies, fit_bodies, synthesize_bodies
from capture3d.tasks.body.camera_check import camera_problem, triangulate
from capture3d.tasks.body.evaluate import GroundTruthError, evaluate_records
from capture3d.tasks.body.keypoint_io import KeypointError, load_keypoints, read_coco, write_openpose
from capture3d.tasks.body.model import COCO17
from capture3d.tasks.body.observations import GroupingError, build_batch
from capture3d.tasks.cameras import PinholeCamera

H36M = (
    "root",
    "right_hip",
    "right_knee",
    "right_foot",
    "left_hip",
    "left_knee",
    "left_foot",
    "spine",
    "thorax",
    "neck_base",
    "head",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
)  # mmpose's Human3.6M order
FIT_NAMES = COCO17 + ("neck", "mid_hip")


@pytest.fixture(scope="module")
def anny():
    torch.set_num_threads(1)
    from capture3d.tasks.body.anny_model import AnnyBody

    return AnnyBody()


@pytest.fixture(scope="module")
def params(repo_root: Path) -> dict:
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="module")
def capture(anny, tmp_path_factory) -> Path:
    """2 synthetic bodies x 3 calibrated views (each body has its own cameras), with groups and gt."""
    config = synthesize_bodies.SynthesizeBodiesConfig(
        count=2, views=3, width=320, height=240, fov_deg=55.0, noise_px=1.0, seed=5
    )
    return synthesize_bodies.run(synthesize_bodies.Inputs(), tmp_path_factory.mktemp("syn") / "bodies", config, anny)


def _config(params: dict, iterations: int | None = None) -> fit_bodies.FitBodiesConfig:
    section = {**params["fit_bodies"], "overlays": False, "device": "cpu"}
    if iterations is not None:
        section["stages"] = [{**s, "iterations": iterations} for s in params["fit_bodies"]["stages"]]
    return fit_bodies.load_config({"fit_bodies": section})


def _copy(capture: Path, dest: Path, edit_cameras=None) -> Path:
    shutil.copytree(capture, dest)
    if edit_cameras is not None:
        data = json.loads((dest / "cameras.json").read_text())
        edit_cameras(data)
        (dest / "cameras.json").write_text(json.dumps(data))
    return dest


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def _cameras(folder: Path) -> dict[str, PinholeCamera]:
    from capture3d.tasks.body.cameras_io import load_cameras

    return load_cameras(folder / "cameras.json")[0]


# --------------------------------------------------------------------------- COCO categories


def _coco_doc(order: tuple[str, ...], canonical: tuple[str, ...], seed: int = 0) -> tuple[dict, dict]:
    """A COCO annotation file whose category declares ``order`` (the file's names), and the truth
    by canonical name (``canonical`` is ``order`` mapped)."""
    rng = np.random.default_rng(seed)
    truth = {name: rng.uniform(20, 300, 2).round(2) for name in canonical}
    hidden = canonical[3]
    kps = []
    for name in canonical:
        kps += [*truth[name], 0 if name == hidden else 2]
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 320, "height": 320}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": kps, "bbox": [10, 10, 300, 300]}
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(order)}],
    }
    return doc, {n: (p, n != hidden) for n, p in truth.items()}


def test_permuted_coco_categories_are_read_by_name(tmp_path: Path) -> None:
    order = tuple(np.random.default_rng(1).permutation(COCO17))
    assert order != COCO17
    doc, truth = _coco_doc(order, order)
    (tmp_path / "permuted.json").write_text(json.dumps(doc))
    plain = {**doc, "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17)}]}
    plain["annotations"] = [
        {
            **doc["annotations"][0],
            "keypoints": [v for name in COCO17 for v in (*truth[name][0], 2 if truth[name][1] else 0)],
        }
    ]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    [p] = read_coco(tmp_path / "permuted.json")
    [q] = read_coco(tmp_path / "plain.json")
    assert p.names == order and q.names == COCO17 and q.source_format == "coco17"
    for name in COCO17:
        xy, conf = p.point(name)
        assert conf == (1.0 if truth[name][1] else 0.0)
        np.testing.assert_allclose(xy, truth[name][0])
        np.testing.assert_allclose(xy, q.point(name)[0])
    # what the fitter sees is the same for both files
    cam = {"a.jpg": PinholeCamera("a.jpg", 320, 320, np.diag([300.0, 300.0, 1.0]), np.eye(3), np.zeros(3))}
    a = build_batch([p], FIT_NAMES, cameras=cam, groups=None, min_keypoints=3).observations
    b = build_batch([q], FIT_NAMES, cameras=cam, groups=None, min_keypoints=3).observations
    assert a.names == b.names
    torch.testing.assert_close(a.xy, b.xy)
    torch.testing.assert_close(a.conf, b.conf)


def test_h36m_order_mapped_by_name_and_unknown_layouts_refused(tmp_path: Path) -> None:
    canonical = (
        "pelvis",
        "right_hip",
        "right_knee",
        "right_ankle",
        "left_hip",
        "left_knee",
        "left_ankle",
        "spine",
        "thorax",
        "neck_base",
        "head",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "right_shoulder",
        "right_elbow",
        "right_wrist",
    )
    doc, truth = _coco_doc(H36M, canonical)
    (tmp_path / "h36m.json").write_text(json.dumps(doc))
    [p] = load_keypoints(tmp_path / "h36m.json")
    assert p.names == canonical and p.source_format == "custom17"
    np.testing.assert_allclose(p.point("right_ankle")[0], truth["right_ankle"][0])  # h36m's right_foot
    np.testing.assert_allclose(p.point("left_wrist")[0], truth["left_wrist"][0])
    assert p.point("nose") is None  # not guessed from h36m's neck_base

    # an unknown name: one line naming the file and the name
    bad = {**doc, "categories": [{"id": 1, "keypoints": [*H36M[:-1], "tail_tip"]}]}
    (tmp_path / "unknown.json").write_text(json.dumps(bad))
    with pytest.raises(KeypointError) as exc:
        read_coco(tmp_path / "unknown.json")
    _one_line(exc, "unknown.json", "'tail_tip'", "unknown keypoint name")
    # two names for one joint
    dup = {**doc, "categories": [{"id": 1, "keypoints": [*H36M[:-1], "right_ankle"]}]}
    (tmp_path / "dup.json").write_text(json.dumps(dup))
    with pytest.raises(KeypointError) as exc:
        load_keypoints(tmp_path / "dup.json")
    _one_line(exc, "dup.json", "'right_foot'", "'right_ankle'")
    # a layout that does not match the annotations' length
    short = {**doc, "categories": [{"id": 1, "keypoints": list(COCO17[:15])}]}
    (tmp_path / "short.json").write_text(json.dumps(short))
    with pytest.raises(KeypointError) as exc:
        read_coco(tmp_path / "short.json")
    _one_line(exc, "short.json", "17 keypoints, expected 15")
    # no keypoints list in categories: COCO-17 as before
    bare = {**doc, "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    [r] = read_coco(tmp_path / "bare.json")
    assert r.names == COCO17


def test_unknown_layout_fails_the_stage_in_one_line(params, tmp_path: Path) -> None:
    doc, _ = _coco_doc(H36M, H36M)
    doc["categories"][0]["keypoints"][0] = "wing"
    (tmp_path / "kp.json").write_text(json.dumps(doc))
    with pytest.raises(CaptureError) as exc:
        fit_bodies.run(
            fit_bodies.BodyInputs(keypoints=tmp_path / "kp.json", name="birds"), tmp_path / "out", _config(params)
        )
    _one_line(exc, "birds", "kp.json", "'wing'")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- cameras.json groups


def test_without_groups_different_people_are_separate_bodies(anny, params, capture: Path, tmp_path: Path) -> None:
    folder = _copy(capture, tmp_path / "nogroups", lambda d: d.pop("groups"))
    people = load_keypoints(folder / "keypoints", folder / "images")
    cameras = _cameras(folder)
    batch = build_batch(people, anny.keypoint_names, cameras=cameras, groups=None)
    assert len(batch.rows) == 6 and all(len(r.people) == 1 for r in batch.rows)
    assert any("do not show one person" in n for n in batch.notes), batch.notes
    # the same with groups: two 3-view bodies, as before
    grouped = json.loads((capture / "cameras.json").read_text())["groups"]
    batch = build_batch(people, anny.keypoint_names, cameras=cameras, groups=grouped)
    assert [r.body for r in batch.rows] == ["frame000#0", "frame001#0"] and all(len(r.people) == 3 for r in batch.rows)
    # one person's views without groups agree geometrically: one multi-view body
    mine = [p for p in people if p.image.startswith("body01_")]
    batch = build_batch(mine, anny.keypoint_names, cameras=cameras, groups=None)
    assert len(batch.rows) == 1 and len(batch.rows[0].people) == 3, batch.notes
    # the capture's 3D ground truth names the grouped bodies, which this fit does not make: refused
    with pytest.raises(CaptureError, match="lists none of the 6 fitted bodies"):
        fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "fit", _config(params, 2), anny)
    assert not (tmp_path / "fit").exists()
    # without it, the stage fits the different people one view each (a few iterations)
    (folder / "gt" / "joints3d.json").unlink()
    out = fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "fit", _config(params, 2), anny)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["people_fitted"] == 6 and metrics["views_max"] == 1


def test_without_groups_people_tied_by_file_ids_else_ambiguous_is_refused(
    anny, params, capture: Path, tmp_path: Path
) -> None:
    # two people per image (body00 and body01 seen through body00's cameras), no groups
    people = {p.image: p for p in load_keypoints(capture / "keypoints", capture / "images")}
    cams = _cameras(capture)
    folder = tmp_path / "crowd"
    (folder / "keypoints").mkdir(parents=True)
    cameras = {}
    for v in range(3):
        image = f"body00_view{v}.png"
        cameras[image] = cams[image]
        a = people[image]
        b = type(a)(**{**a.__dict__, "xy": a.xy + 40.0})  # a second person beside the first
        write_openpose([a, b] if v != 1 else [b, a], folder / "keypoints" / f"body00_view{v}_keypoints.json")
    from capture3d.tasks.body.cameras_io import write_cameras_json

    write_cameras_json(folder / "cameras.json", cameras)
    with pytest.raises(CaptureError) as exc:
        fit_bodies.run(
            fit_bodies.BodyInputs(
                keypoints=folder / "keypoints", images=capture / "images", cameras=folder / "cameras.json", name="crowd"
            ),
            tmp_path / "out",
            _config(params),
            anny,
        )
    _one_line(exc, "crowd", "2 people in", "add 'groups'")
    assert not (tmp_path / "out").exists()

    # the same people with OpenPose person ids: tied across images by id, whatever their order
    for v in range(3):
        path = folder / "keypoints" / f"body00_view{v}_keypoints.json"
        data = json.loads(path.read_text())
        first, second = (7, 9) if v != 1 else (9, 7)
        data["people"][0]["person_id"], data["people"][1]["person_id"] = [first], [second]
        path.write_text(json.dumps(data))
    loaded = load_keypoints(folder / "keypoints", capture / "images")
    assert sorted(p.track for p in loaded) == ["7", "7", "7", "9", "9", "9"]
    batch = build_batch(loaded, anny.keypoint_names, cameras=cameras, groups=None)
    assert len(batch.rows) == 2
    for row in batch.rows:
        assert len(row.people) == 3 and len({p.track for p in row.people}) == 1
    with pytest.raises(GroupingError):
        build_batch([*loaded, loaded[0]], anny.keypoint_names, cameras=cameras, groups=None)


# --------------------------------------------------------------------------- cameras against keypoints


def test_transposed_rotation_is_refused_naming_the_camera(anny, params, capture: Path, tmp_path: Path) -> None:
    def transpose(data: dict) -> None:
        cam = data["images"]["body01_view2.png"]
        cam["R"] = np.asarray(cam["R"]).T.tolist()  # camera-to-world R where world-to-camera is expected

    folder = _copy(capture, tmp_path / "transposed", transpose)
    with pytest.raises(CaptureError) as exc:
        fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "out", _config(params), anny)
    _one_line(exc, "transposed", "camera 'body01_view2.png'", "is R world-to-camera (x_cam = R x_world + t)?")
    assert not (tmp_path / "out").exists()


def test_camera_check_geometry(capture: Path) -> None:
    """DLT recovers the synthetic joints; a camera-to-world pose (R^T, centre) or a flipped camera is caught."""
    people = {p.image: p for p in load_keypoints(capture / "gt" / "keypoints2d", capture / "images")}
    cams = _cameras(capture)
    images = [f"body00_view{v}.png" for v in range(3)]
    xy = np.stack([people[i].xy for i in images])
    conf = np.stack([people[i].conf for i in images])
    k = np.stack([cams[i].K for i in images])
    rot = np.stack([cams[i].R for i in images])
    trans = np.stack([cams[i].t for i in images])
    box = np.full(3, 120.0)
    points, ok = triangulate(xy, conf, k, rot, trans)
    truth = json.loads((capture / "gt" / "joints3d.json").read_text())["frame000#0"]
    names = people[images[0]].names
    have = np.array([n in truth for n in names]) & ok
    assert have.sum() >= 17
    expected = np.array([truth[n] for n, h in zip(names, have) if h])
    np.testing.assert_allclose(points[have], expected, atol=1e-3)  # the 2D truth is rounded to 1e-3 px
    assert camera_problem(xy, conf, k, rot, trans, box, images, "b") is None
    # a camera-to-world pose (R^T and the camera centre) for view 1
    bad_r, bad_t = rot.copy(), trans.copy()
    bad_r[1], bad_t[1] = rot[1].T, -rot[1].T @ trans[1]
    message = camera_problem(xy, conf, k, bad_r, bad_t, box, images, "b")
    assert message is not None and message.startswith("camera 'body00_view1.png'") and "world-to-camera" in message
    # a camera turned round (points behind it), with two views only
    flip = np.diag([-1.0, 1.0, -1.0])
    bad_r = rot.copy()
    bad_r[1] = flip @ rot[1]
    bad_t = trans.copy()
    bad_t[1] = flip @ trans[1]
    message = camera_problem(xy[:2], conf[:2], k[:2], bad_r[:2], bad_t[:2], box[:2], images[:2], "b")
    assert message is not None and "points behind the camera" in message, message


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_with_fewer_than_three_joints_is_an_error(anny, params, capture: Path, tmp_path: Path) -> None:
    record = {
        "body": "frame000#0",
        "views": [],
        "keypoints3d": {"names": ["left_knee", "right_knee", "nose"], "points": [[0, 0, 1]] * 3},
    }
    gt3d = {"frame000#0": {"left_knee": [0, 0, 1], "right_knee": [0.2, 0, 1], "head_top": [0, -0.9, 1]}}
    with pytest.raises(GroundTruthError) as exc:
        evaluate_records([record], None, gt3d)
    _one_line(exc, "frame000#0", "shares 2 joint(s)", "left_knee, right_knee", "head_top")
    gt3d["frame000#0"]["nose"] = [0, -0.8, 1.1]
    assert evaluate_records([record], None, gt3d)["per_body"][0]["joints_3d"] == 3

    # the evaluate_bodies stage: one line, nothing written
    result = tmp_path / "result"
    result.mkdir()
    (result / "people.json").write_text(json.dumps({"bodies": [record]}))
    gt = tmp_path / "cap" / "gt"
    gt.mkdir(parents=True)
    (gt / "joints3d.json").write_text(json.dumps({"frame000#0": {"left_knee": [0, 0, 1], "hip": [0, 0, 1]}}))
    with pytest.raises(CaptureError) as exc:
        evaluate_bodies.run(
            evaluate_bodies.Inputs(result, tmp_path / "cap"), tmp_path / "ev", evaluate_bodies.EvaluateBodiesConfig(0.1)
        )
    _one_line(exc, "cap", "frame000#0", "shares 1 joint(s)", "left_knee")
    assert not (tmp_path / "ev").exists()

    # the fit_bodies stage refuses it before fitting
    def trim(folder: Path) -> None:
        path = folder / "gt" / "joints3d.json"
        truth = json.loads(path.read_text())
        truth["frame001#0"] = {"left_wrist": truth["frame001#0"]["left_wrist"], "spine": [0, 0, 0]}
        path.write_text(json.dumps(truth))

    folder = _copy(capture, tmp_path / "trimmed")
    trim(folder)
    with pytest.raises(CaptureError) as exc:
        fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "out", _config(params), anny)
    _one_line(exc, "trimmed", "body 'frame001#0'", "shares 1 joint(s)", "left_wrist")
    assert not (tmp_path / "out").exists()


def test_without_groups_one_camera_centre_keeps_people_apart(shared_data: Path) -> None:
    """The trial's case: COCO photos of different people with cameras.json giving intrinsics only
    (R = I, t = 0) and no groups: every person is fitted on their own, not as one multi-view body."""
    coco = shared_data / "body" / "coco"
    people = read_coco(coco / "test_coco.json")
    sizes = {p.image: p.image_size for p in people}
    cameras = {
        image: PinholeCamera(
            image, w, h, np.array([[500.0, 0, w / 2], [0, 500.0, h / 2], [0, 0, 1]]), np.eye(3), np.zeros(3)
        )
        for image, (w, h) in sizes.items()
    }
    batch = build_batch(people, FIT_NAMES, cameras=cameras, groups=None)
    assert len(batch.rows) == 12 and all(len(r.people) == 1 for r in batch.rows)
    assert any("share one camera centre" in n for n in batch.notes), batch.notes


def test_without_groups_a_stray_detection_does_not_make_it_ambiguous(anny, capture: Path) -> None:
    """A second 'person' too weak to fit (fewer than min_keypoints points) neither blocks the
    grouping nor joins a body: one person's three views stay one body and the stray is skipped."""
    people = [p for p in load_keypoints(capture / "keypoints", capture / "images") if p.image.startswith("body01_")]
    stray = type(people[0])(
        **{
            **people[0].__dict__,
            "person": "body01_view0#1",
            "conf": np.where(np.arange(len(people[0].names)) < 3, 1.0, 0.0),
        }
    )
    batch = build_batch([*people, stray], anny.keypoint_names, cameras=_cameras(capture), groups=None)
    assert [r.body for r in batch.rows] == ["frame000#0"] and len(batch.rows[0].people) == 3, batch.notes
    assert [s["person"] for s in batch.skipped] == ["body01_view0#1"]


def test_unreadable_keypoint_file_is_skipped_and_listed(anny, params, capture: Path, tmp_path: Path) -> None:
    """The bad-input policy of every kind: a corrupt item is skipped and listed, the capture is
    refused only when nothing usable remains."""
    folder = tmp_path / "corrupt"
    shutil.copytree(capture, folder)
    files = sorted((folder / "keypoints").glob("*.json"))
    files[0].write_text('{"people": [')  # cut short
    out = fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "fit", _config(params, 2), anny)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_files"] == {files[0].name: metrics["skipped_files"][files[0].name]}
    assert "not valid JSON" in metrics["skipped_files"][files[0].name] and metrics["num_skipped_files"] == 1
    assert metrics["people_fitted"] == 2  # the body lost one of its three views, not the capture
    for path in files:
        path.write_text("not json")
    with pytest.raises(CaptureError, match="no readable keypoint file"):
        fit_bodies.run(fit_bodies.BodyInputs.from_capture(folder), tmp_path / "fit2", _config(params, 2), anny)
