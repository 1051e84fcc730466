"""Real-data evaluation of the body fit: real 3D poses with real (or virtual) cameras turned into
body captures that the ``fit_bodies`` stage reads, with 3D ground truth for ``evaluate bodies``.

Inputs: the shared real-pose data (``../shared/data/body/``, see its READMEs):

- ``mpi_inf_3dhp``: 4 frames, 17 joints in metres in each image's camera frame, ``K`` per image
  (single view only: one camera per frame);
- ``panoptic``: 12 person-frames (4 frames x 3 musicians), 19 joints (COCO-19) in metres in the
  Panoptic world frame (y down), 31 calibrated HD cameras (``x_cam = R x_world + t``);
- ``campus_shelf/{campus,shelf}``: 3 frames (1 and 2 people), 14 joints, metres, world z up, 3 and
  5 calibrated cameras;
- ``mocap_cmu/joints21_30fps.npz``: CMU motion capture (21 joints, metres, y up) with no camera:
  seeded virtual cameras (:func:`virtual_cameras`) look at the body.

Outputs: :class:`RealPose` (one person at one instant: COCO-named 3D joints in metres in the
dataset's world frame, and the dataset's cameras), and :func:`write_capture`, which writes a body
capture folder: ``keypoints.json`` (COCO keypoint JSON; the "ground-truth 2D input" is the 3D ground
truth projected through the camera with the pinhole model, without lens distortion),
``cameras.json`` with ``groups`` for calibrated multi-view, and ``gt/joints3d.json``
(``{body: {joint: [x, y, z]}}``, metres; the world frame when calibrated, else the camera frame of
the single view, since an uncalibrated fit is expressed in its own camera's frame).

Joint mapping (dataset joint -> the COCO-17 names that ``capture3d.tasks.body`` models predict):
the 2D input uses every dataset joint that has a COCO-17 equivalent (:data:`INPUT_MAPS`); the 3D
comparison uses the 12 limb joints :data:`LIMB_JOINTS` (shoulders, elbows, wrists, hips, knees,
ankles), the only joints every dataset shares. Root = mid-hip (mean of the two hips). Dataset hips
are skeleton joint centres (MPI, Campus/Shelf, mocap rig hips); the models' COCO hips are the COCO
label positions, so part of the error on the hips is a convention difference. Neck, pelvis, spine,
head and toe joints are not mapped: their definitions differ between skeletons (e.g. COCO has no
neck; the model's ``neck`` is the shoulder midpoint, which the datasets' necks are not).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capture3d.tasks.body.cameras_io import write_cameras_json
from capture3d.tasks.body.keypoint_io import PersonKeypoints, write_coco
from capture3d.tasks.body.model import COCO17
from capture3d.tasks.cameras import PinholeCamera

logger = logging.getLogger(__name__)

LIMB_JOINTS: tuple[str, ...] = COCO17[5:17]
"""the 12 joints compared in 3D on every dataset (COCO-17 names)"""

ROOT_JOINTS: tuple[str, str] = ("left_hip", "right_hip")
"""root of the root-aligned MPJPE: their mean (mid-hip)"""

_LIMBS_SAME_NAME = {n: n for n in LIMB_JOINTS}

INPUT_MAPS: dict[str, dict[str, str]] = {
    # dataset joint name -> COCO-17 name; joints absent here are not used
    "mpi_inf_3dhp": dict(_LIMBS_SAME_NAME),  # head_top, neck, root, spine, head: no COCO equivalent
    "panoptic": {
        **_LIMBS_SAME_NAME,
        "nose": "nose",
        "left_eye": "left_eye",
        "right_eye": "right_eye",
        "left_ear": "left_ear",
        "right_ear": "right_ear",
    },  # neck, mid_hip (BodyCenter): unmapped
    "campus": dict(_LIMBS_SAME_NAME),  # bottom_head, top_head: unmapped
    "shelf": dict(_LIMBS_SAME_NAME),
    "mocap_cmu": dict(_LIMBS_SAME_NAME),  # pelvis, toes, spine1/2, neck, head, collars: unmapped
}
"""per dataset: which of its joints feed the 2D input, under which COCO-17 name"""

PANOPTIC_FULL_VIEW_CAMERAS = ("00_02", "00_07", "00_12", "00_13", "00_28")
"""Panoptic HD cameras that see every joint of every person (panoptic/README.md)"""

MOCAP_EVAL_CLIPS = ("iclone_cmu/002_05", "iclone_cmu/005_12", "iclone_cmu/006_14", "iclone_cmu/007_04")
"""CMU clips the mocap evaluation frames come from (punch, dance, basketball, slow walk): a pose
prior learned from CMU must leave them out for the frames to be unseen"""


@dataclass
class RealPose:
    """One person at one instant of a real dataset.

    dataset: the dataset name (a key of :data:`INPUT_MAPS`).
    ident:   a label unique within the dataset (e.g. ``160906_band2/f139/p1``).
    joints:  COCO-17 name -> (3,) float64 point in metres in the dataset's world frame (mapped joints only).
    cameras: the cameras that saw it (``x_cam = R x_world + t``), by name.
    """

    dataset: str
    ident: str
    joints: dict[str, np.ndarray]
    cameras: dict[str, PinholeCamera] = field(default_factory=dict)

    def has(self, names: Sequence[str]) -> bool:
        """Whether every one of ``names`` is present (finite)."""
        return all(n in self.joints and np.isfinite(self.joints[n]).all() for n in names)


def _map(dataset: str, source: Mapping[str, object]) -> dict[str, np.ndarray]:
    """The mapped joints of one dataset pose (null or non-finite points left out)."""
    out = {}
    for theirs, ours in INPUT_MAPS[dataset].items():
        value = source.get(theirs)
        if value is None:
            continue
        point = np.asarray(value, dtype=np.float64).reshape(-1)
        if point.shape == (3,) and np.isfinite(point).all():
            out[ours] = point
    return out


def _camera(name: str, cam: Mapping[str, object]) -> PinholeCamera:
    return PinholeCamera(
        name,
        int(cam["width"]),
        int(cam["height"]),
        np.asarray(cam["K"], dtype=np.float64),
        np.asarray(cam["R"], dtype=np.float64),
        np.asarray(cam["t"], dtype=np.float64),
    )


def load_mpi_inf_3dhp(root: Path) -> list[RealPose]:
    """The 4 MPI-INF-3DHP frames: joints in each image's camera frame, so the camera is ``K`` with
    identity pose (one view per frame)."""
    root = Path(root)
    joints = json.loads((root / "joints3d.json").read_text())["images"]
    cams = json.loads((root / "cameras.json").read_text())["images"]
    poses = []
    for image in sorted(joints):
        cam = cams[image]
        camera = PinholeCamera(
            Path(image).stem,
            int(cam["width"]),
            int(cam["height"]),
            np.asarray(cam["K"], dtype=np.float64),
            np.eye(3),
            np.zeros(3),
        )
        poses.append(
            RealPose("mpi_inf_3dhp", Path(image).stem, _map("mpi_inf_3dhp", joints[image]), {camera.name: camera})
        )
    return poses


def load_panoptic(root: Path) -> list[RealPose]:
    """The 12 Panoptic person-frames with the 31 HD cameras (distortion not used: the 2D input is
    the pinhole projection)."""
    root = Path(root)
    data = json.loads((root / "joints3d.json").read_text())
    cameras = {c["name"]: _camera(c["name"], c) for c in json.loads((root / "cameras_hd.json").read_text())["cameras"]}
    poses = []
    for seq, content in sorted(data["sequences"].items()):
        for frame in content["frames"]:
            for body in frame["bodies"]:
                poses.append(
                    RealPose(
                        "panoptic",
                        f"{seq}/f{frame['hd_frame']}/p{body['id']}",
                        _map("panoptic", body["joints"]),
                        dict(cameras),
                    )
                )
    return poses


def load_campus_shelf(root: Path, which: str) -> list[RealPose]:
    """Campus (``which='campus'``, 3 cameras) or Shelf (``'shelf'``, 5 cameras): every person of frames 0-2."""
    folder = Path(root) / which
    data = json.loads((folder / "joints3d.json").read_text())
    cameras = {
        f"cam{k}": _camera(f"cam{k}", c)
        for k, c in json.loads((folder / "cameras.json").read_text())["cameras"].items()
    }
    poses = []
    for frame in data["frames"]:
        for pid, joints in sorted(frame["persons"].items()):
            if joints:
                poses.append(RealPose(which, f"f{frame['frame']}/p{pid}", _map(which, joints), dict(cameras)))
    return poses


def look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R (3, 3), t (3,)) of an OpenCV camera (x right, y down, z forward) at
    ``centre`` (3,) looking at ``target`` (3,), with the image's up along ``up`` (3,)."""
    forward = target - centre
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    return rot, -rot @ centre


def virtual_cameras(
    target: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    distance: float = 4.0,
    size: int = 1000,
    focal: float = 1000.0,
    heights: tuple[float, float] = (0.9, 1.7),
    prefix: str = "vcam",
) -> dict[str, PinholeCamera]:
    """``count`` cameras on a ring of ``distance`` metres around ``target`` (3,) in a y-up world,
    evenly spaced from a random azimuth, at random heights, looking at ``target``; square
    ``size`` pixels with ``focal`` pixels (about 53 degrees across)."""
    start = rng.uniform(0, 2 * np.pi)
    k = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    out = {}
    for i in range(count):
        angle = start + 2 * np.pi * i / count
        centre = target + np.array([distance * np.sin(angle), 0.0, distance * np.cos(angle)])
        centre[1] = rng.uniform(*heights)
        rot, trans = look_at(centre, target, np.array([0.0, 1.0, 0.0]))
        out[f"{prefix}{i}"] = PinholeCamera(f"{prefix}{i}", size, size, k, rot, trans)
    return out


def load_mocap_cmu(
    root: Path, frames: int, seed: int, views: int = 1, clips: Sequence[str] = MOCAP_EVAL_CLIPS
) -> list[RealPose]:
    """``frames`` CMU mocap frames drawn (seeded) from ``clips``, each with ``views`` virtual
    cameras around its pelvis (:func:`virtual_cameras`)."""
    data = np.load(Path(root) / "joints21_30fps.npz")
    names = [str(n) for n in data["joint_names"]]
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(frames):
        clip = clips[i % len(clips)]
        seq = data[clip]  # (F, 21, 3) metres, y up
        f = int(rng.integers(len(seq)))
        joints = _map("mocap_cmu", {n: seq[f, k] for k, n in enumerate(names)})
        pelvis = seq[f, names.index("pelvis")].astype(np.float64)
        poses.append(RealPose("mocap_cmu", f"{clip}/{f}", joints, virtual_cameras(pelvis, views, rng)))
    return poses


def project(points: np.ndarray, camera: PinholeCamera) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) pixels and (K,) depths of world ``points`` (K, 3) through ``camera`` (pinhole)."""
    cam = points @ camera.R.T + camera.t  # (K, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = cam @ camera.K.T  # (K, 3)
        return uv[:, :2] / uv[:, 2:3], cam[:, 2]


def _inside(pose: RealPose, camera: PinholeCamera) -> int:
    """How many mapped joints project inside the image, in front of ``camera`` (-1 if one is behind)."""
    names = list(pose.joints)
    xy, depth = project(np.stack([pose.joints[n] for n in names]), camera)
    if (depth <= 0.05).any():
        return -1
    return int(((xy >= 0) & (xy < [camera.width, camera.height])).all(axis=1).sum())


def choose_views(
    pose: RealPose, count: int, rng: np.random.Generator, preferred: Sequence[str] | None = None
) -> list[str]:
    """``count`` camera names for ``pose``: ``preferred`` when given (all must exist), else a
    seeded choice among the cameras that see the most mapped joints inside the image."""
    if preferred is not None:
        missing = [c for c in preferred if c not in pose.cameras]
        if missing:
            raise ValueError(f"{pose.dataset} {pose.ident}: no camera {', '.join(missing)}")
        return list(preferred)[:count]
    scores = {name: _inside(pose, cam) for name, cam in sorted(pose.cameras.items())}
    best = max(scores.values())
    ranked = [n for n in scores if scores[n] == best] or list(scores)
    if len(ranked) < count:
        ranked = sorted(scores, key=lambda n: -scores[n])[: max(count, len(ranked))]
    picked = rng.choice(len(ranked), size=min(count, len(ranked)), replace=False)
    return [ranked[i] for i in sorted(picked)]


@dataclass(frozen=True)
class CaptureBody:
    """One body of a written capture: its body id in the fit's output, pose and views."""

    body: str
    pose: RealPose
    views: tuple[str, ...]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def write_capture(
    folder: Path,
    bodies: Sequence[tuple[RealPose, Sequence[str]]],
    *,
    calibrated: bool,
    compared: Sequence[str] = LIMB_JOINTS,
) -> list[CaptureBody]:
    """Write a body capture of ``bodies`` (pose, camera names) into ``folder`` (created).

    Each body gets one image per view (no pixels: the sizes are in ``keypoints.json``), holding
    its mapped joints projected through that camera. ``calibrated``: ``cameras.json`` with one
    group per body (the fit's body ids are then ``frameNNN#0``); else no cameras (single view
    only: the fit's body id is the annotation id) and the ground truth is in that camera's frame.
    A calibrated body of one view keeps its annotation id too (the fit ties no images for it).
    ``gt/joints3d.json`` holds the ``compared`` joints. Returns the bodies with their fit ids."""
    folder = Path(folder)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    people: list[PersonKeypoints] = []
    sizes: dict[str, tuple[int, int]] = {}
    cameras: dict[str, PinholeCamera] = {}
    groups: list[list[str]] = []
    truth: dict[str, dict[str, list[float]]] = {}
    written: list[CaptureBody] = []
    for b, (pose, views) in enumerate(bodies):
        if not calibrated and len(views) != 1:
            raise ValueError(f"{pose.ident}: an uncalibrated capture has one view per body, got {len(views)}")
        if not pose.has(compared):
            raise ValueError(
                f"{pose.dataset} {pose.ident}: lacks compared joints "
                f"{', '.join(n for n in compared if n not in pose.joints)}"
            )
        names = tuple(pose.joints)
        world = np.stack([pose.joints[n] for n in names])  # (K, 3)
        group = []
        for cam_name in views:
            camera = pose.cameras[cam_name]
            image = f"b{b:03d}_{_safe(cam_name)}.jpg"
            xy, depth = project(world, camera)
            conf = (depth > 0).astype(np.float64)  # a joint behind the camera is not seen
            people.append(
                PersonKeypoints(
                    image=image,
                    person=str(len(people) + 1),
                    names=names,
                    xy=xy,
                    conf=conf,
                    image_size=(camera.width, camera.height),
                )
            )
            sizes[image] = (camera.width, camera.height)
            cameras[image] = PinholeCamera(image, camera.width, camera.height, camera.K, camera.R, camera.t)
            group.append(image)
        if calibrated:  # the fit names a body seen in one image by its annotation id
            body = f"frame{b:03d}#0" if len(views) > 1 else people[-1].person
            frame = world
        else:
            body = people[-1].person
            frame = world @ camera.R.T + camera.t  # the single view's camera frame
        groups.append(group)
        truth[body] = {n: frame[names.index(n)].tolist() for n in compared}
        written.append(CaptureBody(body, pose, tuple(views)))
    write_coco(people, folder / "keypoints.json", sizes)
    if calibrated:
        write_cameras_json(folder / "cameras.json", cameras)
        data = json.loads((folder / "cameras.json").read_text())
        data["groups"] = groups
        (folder / "cameras.json").write_text(json.dumps(data, indent=1) + "\n")
    (folder / "gt" / "joints3d.json").write_text(json.dumps(truth, indent=1) + "\n")
    logger.info(
        "real capture %s: %d bodies, %s",
        folder,
        len(written),
        "calibrated multi-view" if calibrated else "one uncalibrated view each",
    )
    return written


def load_dataset(data_root: Path, dataset: str, *, frames: int = 16, seed: int = 0, views: int = 1) -> list[RealPose]:
    """The poses of ``dataset`` under ``data_root`` (``.../shared/data/body``) that have all
    :data:`LIMB_JOINTS`, at most ``frames`` of them (a seeded choice when there are more).
    ``views`` is the number of virtual cameras for ``mocap_cmu``."""
    data_root = Path(data_root)
    if dataset == "mpi_inf_3dhp":
        poses = load_mpi_inf_3dhp(data_root / "mpi_inf_3dhp")
    elif dataset == "panoptic":
        poses = load_panoptic(data_root / "panoptic")
    elif dataset in ("campus", "shelf"):
        poses = load_campus_shelf(data_root / "campus_shelf", dataset)
    elif dataset == "mocap_cmu":
        poses = load_mocap_cmu(data_root / "mocap_cmu", frames, seed, views)
    else:
        raise ValueError(f"unknown dataset '{dataset}' (one of {', '.join(INPUT_MAPS)})")
    complete = [p for p in poses if p.has(LIMB_JOINTS)]
    if len(complete) < len(poses):
        logger.info(
            "%s: %d of %d poses lack a limb joint and are left out", dataset, len(poses) - len(complete), len(poses)
        )
    if len(complete) > frames:
        rng = np.random.default_rng(seed)
        complete = [complete[i] for i in sorted(rng.choice(len(complete), frames, replace=False))]
    return complete
