"""DVC stage ``fit_bodies``: fit a parametric body (Anny, or SMPL / SMPL-H / SMPL-X from a model
file) to every person's 2D keypoints in a body capture, in one batched SMPLify optimisation.

Inputs (:class:`BodyInputs`): a body capture folder laid out as
``images/`` (photos, optional: overlays need them), ``keypoints/`` or ``keypoints.json``
(OpenPose JSON per image, or COCO keypoint JSON), optional ``cameras.json`` (calibrated views and
multi-view ``groups``), optional ``gt/keypoints2d.json`` or ``gt/keypoints2d/`` (2D ground truth,
any keypoint format) and ``gt/joints3d.json``
(``{body: {keypoint: [x, y, z]}}``, metres) -- or the same given one by one (``--images``,
``--keypoints``, ``--cameras`` which may also be an ``sfm`` stage output). The ``fit_bodies``
section of params.yaml.

Checks before fitting (each a one-line :class:`CaptureError`): calibrated images that ``groups`` does
not tie together are separate people unless the views agree on one body (see
:mod:`capture3d.tasks.body.observations`), or an error asks for ``groups``; every multi-view body's
cameras are checked against its keypoints (joints triangulated in front of every camera, plausible
reprojection: :mod:`capture3d.tasks.body.camera_check`), naming the camera that disagrees; 3D ground
truth must share at least 3 joints with the model for every body it lists.

Output folder (written atomically): ``people.json`` (per body: views, input and reprojected
keypoints, fitted 3D keypoints, loss terms), ``params/<body>.npz`` and ``.json`` (the model
parameters), ``meshes/<body>.ply|obj``, ``overlays/<image>.png`` (mesh and skeletons over the
photo), ``fit_log.csv`` and ``metrics.json`` (fitted and skipped people with reasons, keypoint
files skipped as unreadable (``skipped_files``), 2D error,
PCK, and MPJPE / PA-MPJPE when the capture has 3D ground truth; time per iteration).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from capture3d import stage_cli
from capture3d.atomic import atomic_dir
from capture3d.config import section
from capture3d.errors import Capture3dError, CaptureError, ParamsError
from capture3d.stages.common import write_curve, write_json
from capture3d.tasks.body.camera_check import camera_problem
from capture3d.tasks.body.capture import BodyInputs, load_ground_truth
from capture3d.tasks.body.evaluate import check_ground_truth_3d, evaluate_records
from capture3d.tasks.body.fit import (
    BodyFitConfig,
    BodyFitResult,
    fit_bodies,
    world_keypoints,
)
from capture3d.tasks.body.keypoint_io import PersonKeypoints, load_keypoints
from capture3d.tasks.body.model import BodyModel
from capture3d.tasks.body.observations import BodyBatch, build_batch
from capture3d.tasks.body.sequence import ChunkConfig, fit_sequence
from capture3d.tasks.cameras import focal_from_exif
from capture3d.tasks.device import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FitBodiesConfig(BodyFitConfig):
    """The ``fit_bodies`` section: the fit settings plus model, inputs, outputs, seed and device."""

    model: Literal["anny", "smpl"]
    """anny (pip package, free) | smpl (SMPL / SMPL-H / SMPL-X from model_file)"""
    model_file: str
    """SMPL / SMPL-H / SMPL-X .npz or .pkl (model: smpl; .pkl read by a restricted unpickler)"""
    pose_prior: Literal["learned", "none"]
    """learned: a Gaussian-mixture pose prior (anny: pose_prior_file, else the shipped prior learned
    from CMU motion capture; smpl: pose_prior_file if given) | none: per-joint quadratic,
    joint-limit and bending priors only"""
    pose_prior_file: str
    """learned prior file: SMPLify's gmm_08.pkl (smpl), or an .npz from `capture3d train pose-prior`
    (anny; "": the shipped one)"""
    num_betas: int
    """shape coefficients fitted (SMPL family)"""
    min_keypoints: int
    """people with fewer confident keypoints are skipped and listed"""
    min_confidence: float
    """keypoints below this confidence are ignored"""
    fov_deg: float
    """uncalibrated photos: focal length from this field of view (longer side)"""
    focal_length: float
    """uncalibrated photos: focal length in pixels (0: from fov_deg)"""
    sequence: bool
    """images are video frames (tracks by person index): consecutive frames are paired for smoothing"""
    chunk_frames: int
    """sequence: videos longer than this are fitted in chunks of this many frames (bounded memory)"""
    chunk_overlap: int
    """sequence: frames shared by consecutive chunks, blended across the seam"""
    shape_frames: int
    """sequence in chunks: frames per person that estimate its one shape"""
    mesh_format: Literal["ply", "obj"]
    """file format of meshes/<body>"""
    overlays: bool
    """write overlays/<image>.png (mesh and skeletons over the photo)"""
    seed: int
    """random seed of the initialisation"""
    device: Literal["auto", "cpu", "cuda"]
    """where the fit runs (auto: CUDA when available)"""


@dataclass(frozen=True)
class FitBodiesInputs:
    """A body capture folder, or its pieces one by one (pieces given beside ``capture`` replace its own)."""

    capture: Path | None = None
    """body capture folder (images/, keypoints/ or keypoints.json, cameras.json, gt/)"""
    images: Path | None = None
    """photos folder (overlays need them)"""
    keypoints: Path | None = None
    """OpenPose / COCO keypoint JSON file or folder"""
    cameras: Path | None = None
    """cameras.json or an sfm stage output: calibrated multi-view fit"""
    gt: Path | None = None
    """ground-truth folder (keypoints2d, joints3d.json)"""
    name: str = ""
    """capture name for messages (default: the folder name)"""

    @property
    def label(self) -> str:
        if self.name or self.capture is not None:
            return self.name or Path(self.capture or "").name
        return self.body_inputs().label if self.keypoints is not None else ""

    def body_inputs(self) -> BodyInputs:
        """Where each piece is: the capture's standard layout, with the pieces given one by one."""
        if self.capture is not None:
            base = BodyInputs.from_capture(self.capture, self.name)
            return BodyInputs(
                keypoints=self.keypoints or base.keypoints,
                images=self.images or base.images,
                cameras=self.cameras or base.cameras,
                gt=self.gt or base.gt,
                name=base.name,
            )
        if self.keypoints is None:
            raise ParamsError("fit_bodies: give --capture or --keypoints")
        return BodyInputs(
            keypoints=self.keypoints, images=self.images, cameras=self.cameras, gt=self.gt, name=self.name
        )


Inputs = FitBodiesInputs


def load_config(params: Mapping[str, Any]) -> FitBodiesConfig:
    config = section(params, "fit_bodies", FitBodiesConfig)
    if not config.stages or any(s.iterations < 0 for s in config.stages):
        raise ParamsError("fit_bodies: needs at least one stage and non-negative iterations")
    if config.model == "smpl" and not config.model_file:
        raise ParamsError("fit_bodies: model 'smpl' needs model_file (an SMPL/SMPL-H/SMPL-X .npz or .pkl)")
    return config


def build_model(config: FitBodiesConfig, device: torch.device) -> BodyModel:
    """The configured body model (Anny is built from the pip package; SMPL from the user's file)."""
    if config.model == "smpl":
        from capture3d.tasks.body.smpl_model import load_smpl_model

        learned = config.pose_prior == "learned" and config.pose_prior_file
        return load_smpl_model(
            config.model_file, num_betas=config.num_betas, device=device, pose_prior_path=learned or None
        )
    from capture3d.tasks.body.anny_model import AnnyBody
    from capture3d.tasks.body.pose_prior import SHIPPED_PRIOR, AnnyPosePrior

    model = AnnyBody(device=device)
    if config.pose_prior == "learned":
        path = Path(config.pose_prior_file) if config.pose_prior_file else SHIPPED_PRIOR
        try:
            prior = AnnyPosePrior.load(path)
            model.use_pose_prior(prior.joints, prior.mixture(dtype=model.dtype, device=device))
        except ValueError as exc:
            raise ParamsError(f"fit_bodies.pose_prior_file: {exc}") from None
    return model


def run(
    inputs: FitBodiesInputs | BodyInputs, out: Path, config: FitBodiesConfig, model: BodyModel | None = None
) -> Path:
    """Fit every person of one capture and write ``out``; returns ``out``.

    ``model`` reuses an already built model (batch flows); it must match ``config.model``."""
    start = time.perf_counter()
    if isinstance(inputs, FitBodiesInputs):
        inputs = inputs.body_inputs()
    label = inputs.label
    try:
        device = resolve_device(config.device)
        unreadable: dict[str, str] = {}
        people = load_keypoints(inputs.keypoints, inputs.images, unreadable)
        cameras, groups, metric = _cameras(inputs)
        gt2d, gt3d = load_ground_truth(inputs)
    except (Capture3dError, ValueError) as exc:
        raise CaptureError(label, str(exc).removeprefix("error: ")) from None
    if not people:
        raise CaptureError(label, f"no people in '{inputs.keypoints}'")
    exif_focals = _exif_focals(people, inputs.images) if not cameras and config.focal_length <= 0 else {}
    torch.manual_seed(config.seed)
    model = model or build_model(config, device)
    try:
        batch = build_batch(
            people,
            model.keypoint_names,
            cameras=cameras,
            groups=groups,
            sequence=config.sequence,
            min_keypoints=config.min_keypoints,
            min_conf=config.min_confidence,
            fov_deg=config.fov_deg,
            focal=config.focal_length,
            known_focals=exif_focals,
            dtype=model.dtype,
            device=device,
        )
    except ValueError as exc:
        raise CaptureError(label, str(exc)) from None
    if not batch.rows:
        reasons = "; ".join(f"{s['person']}: {s['reason']}" for s in batch.skipped[:3])
        raise CaptureError(label, f"no person has enough keypoints to fit ({reasons})")
    if exif_focals:
        batch.notes.append(f"focal length from EXIF for {len(exif_focals)} photo(s), else fov_deg {config.fov_deg}")
    problem = _camera_problem(batch)
    if problem is not None:
        raise CaptureError(label, problem)
    if gt3d is not None:
        try:
            check_ground_truth_3d([row.body for row in batch.rows], model.keypoint_names, gt3d)
        except ValueError as exc:
            raise CaptureError(label, str(exc)) from None
    fit_config = BodyFitConfig(**{f: getattr(config, f) for f in BodyFitConfig.__dataclass_fields__})
    if cameras and not metric:
        fit_config = BodyFitConfig(**{**fit_config.__dict__, "fit_scale": True})
    fit_start = time.perf_counter()
    obs = batch.observations
    if config.sequence and obs.batch_size > config.chunk_frames:
        chunks = ChunkConfig(config.chunk_frames, config.chunk_overlap, config.shape_frames)
        result = fit_sequence(model, obs, fit_config, chunks)
    else:
        result = fit_bodies(model, obs, fit_config)
    fit_seconds = time.perf_counter() - fit_start
    records = _records(model, batch, result)
    evaluation = evaluate_records(records, gt2d, gt3d)
    with torch.no_grad():
        vertices = _mesh_vertices(model, result)
    with atomic_dir(out) as tmp:
        _write_people(tmp, model, batch, result, records, vertices, config)
        if config.overlays and inputs.images is not None:
            _write_overlays(tmp / "overlays", inputs.images, model, batch, result, vertices)
        write_curve(tmp / "fit_log.csv", result.curve)
        write_json(
            tmp / "metrics.json",
            {
                "capture": label,
                "model": model.name,
                "people_fitted": len(batch.rows),
                "people_skipped": len(batch.skipped),
                "skipped": batch.skipped,
                "skipped_files": unreadable,
                "num_skipped_files": len(unreadable),
                "notes": batch.notes,
                "keypoints_used": list(batch.observations.names),
                "views_max": batch.observations.num_views,
                **evaluation["summary"],
                "per_body": evaluation["per_body"],
                "iterations": result.iterations,
                "fit_seconds": round(fit_seconds, 3),
                "seconds_per_iteration": round(fit_seconds / max(result.iterations, 1), 5),
                "wall_seconds": round(time.perf_counter() - start, 3),
                "device": str(device),
            },
        )
    logger.info("%s: fitted %d bodies (%d skipped) in %.1f s", label, len(batch.rows), len(batch.skipped), fit_seconds)
    return out


def _exif_focals(people: Sequence[PersonKeypoints], images: Path | None) -> dict[str, float]:
    """Focal lengths in pixels from the photos' EXIF (image -> focal), for uncalibrated photos."""
    if images is None or not images.is_dir():
        return {}
    out = {}
    for name in sorted({p.image for p in people}):
        focal = focal_from_exif(images / name)
        if focal is not None:
            out[name] = focal
    if out:
        logger.info("focal length from EXIF for %d of %d photos", len(out), len({p.image for p in people}))
    return out


def _cameras(inputs: BodyInputs) -> tuple[dict | None, list[list[str]] | None, bool]:
    """Cameras by image, the ``groups`` of cameras.json (None when it has none, or for an SfM model)
    and whether the frame is metric."""
    if inputs.cameras is None:
        return None, None, True
    from capture3d.tasks.body.cameras_io import load_cameras, read_groups

    cameras, metric = load_cameras(inputs.cameras)
    path = inputs.cameras if inputs.cameras.is_file() else inputs.cameras / "cameras.json"
    return cameras, read_groups(path) if path.is_file() else None, metric


def _camera_problem(batch: BodyBatch) -> str | None:
    """The first multi-view body whose cameras disagree with its keypoints, as one line naming the camera."""
    obs = batch.observations
    for b, row in enumerate(batch.rows):
        views = len(row.people)
        if views < 2:
            continue
        problem = camera_problem(
            obs.xy[b, :views].double().cpu().numpy(),
            obs.conf[b, :views].double().cpu().numpy(),
            obs.k[b, :views].double().cpu().numpy(),
            obs.rot[b, :views].double().cpu().numpy(),
            obs.trans[b, :views].double().cpu().numpy(),
            obs.box[b, :views].double().cpu().numpy(),
            [p.image for p in row.people],
            row.body,
        )  # conf is already thresholded
        if problem is not None:
            return problem
    return None


def _records(model: BodyModel, batch: BodyBatch, result: BodyFitResult) -> list[dict[str, Any]]:
    obs = batch.observations
    names = list(model.keypoint_names)
    with torch.no_grad():
        points3d = world_keypoints(model, result.pose, result.scale, names)
        from capture3d.tasks.body.camera import project

        pix, _ = project(points3d[:, [names.index(n) for n in obs.names]], obs.rot, obs.trans, obs.k)
    records = []
    for b, row in enumerate(batch.rows):
        views = []
        for v, person in enumerate(row.people):
            views.append(
                {
                    "image": person.image,
                    "person": person.person,
                    "names": list(obs.names),
                    "input": obs.xy[b, v].tolist(),
                    "input_conf": obs.conf[b, v].tolist(),
                    "reprojected": pix[b, v].tolist(),
                    "box": float(obs.box[b, v]),
                }
            )
        records.append(
            {
                "body": row.body,
                "views": views,
                "facing_away": bool(result.facing_away[b]),
                "hypothesis": int(result.hypothesis[b]),
                "scale": float(result.scale[b]),
                "keypoints3d": {"names": names, "points": points3d[b].tolist()},
                "terms": {k: float(t[b]) for k, t in result.terms.items()},
            }
        )
    return records


def _safe_name(body: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in body)


def _write_people(
    folder: Path,
    model: BodyModel,
    batch: BodyBatch,
    result: BodyFitResult,
    records: list[dict[str, Any]],
    vertices: np.ndarray,
    config: FitBodiesConfig,
) -> None:
    from capture3d.tasks.body.mesh_io import write_mesh

    write_json(folder / "people.json", {"model": model.name, "bodies": records})
    (folder / "params").mkdir()
    (folder / "meshes").mkdir()
    for b, row in enumerate(batch.rows):
        name = _safe_name(row.body)
        params = {
            "global_orient": result.pose.global_orient[b],
            "body_pose": result.pose.body_pose[b],
            "shape": result.pose.shape[b],
            "transl": result.pose.transl[b],
            "scale": result.scale[b : b + 1],
        }
        arrays = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in params.items()}
        np.savez(folder / "params" / f"{name}.npz", **arrays)
        write_json(
            folder / "params" / f"{name}.json",
            {
                "body": row.body,
                "model": model.name,
                "pose_joints": list(model.pose_joint_names),
                **{k: v.tolist() for k, v in arrays.items()},
            },
        )
        write_mesh(folder / "meshes" / f"{name}.{config.mesh_format}", vertices[b], model.faces)


def _mesh_vertices(model: BodyModel, result: BodyFitResult) -> np.ndarray:
    """(B, V, 3) posed meshes in the output frame (scaled like the keypoints)."""
    pose = result.pose
    centred = type(pose)(pose.global_orient, pose.body_pose, pose.shape, torch.zeros_like(pose.transl))
    verts = result.scale[:, None, None] * model.vertices(centred) + pose.transl[:, None, :]
    return verts.cpu().numpy()


def _write_overlays(
    folder: Path, images: Path, model: BodyModel, batch: BodyBatch, result: BodyFitResult, vertices: np.ndarray
) -> None:
    from PIL import Image

    from capture3d.tasks.body.camera import project
    from capture3d.tasks.body.overlay import (
        FIT_COLOR,
        GT_COLOR,
        draw_overlay,
        write_png,
    )

    folder.mkdir()
    obs = batch.observations
    with torch.no_grad():
        verts = torch.as_tensor(vertices, dtype=obs.rot.dtype)
        names = list(obs.names)
        fitted = world_keypoints(model, result.pose, result.scale, names)
    by_image: dict[str, list[tuple[int, int]]] = {}
    for b, row in enumerate(batch.rows):
        for v, person in enumerate(row.people):
            by_image.setdefault(person.image, []).append((b, v))
    for image_name, members in sorted(by_image.items()):
        path = images / image_name
        if not path.is_file():
            continue
        with Image.open(path) as im:
            canvas = np.asarray(im.convert("RGB"))
        for b, v in members:
            with torch.no_grad():
                mesh_xy, depth = project(
                    verts[b : b + 1],
                    obs.rot[b : b + 1, v : v + 1],
                    obs.trans[b : b + 1, v : v + 1],
                    obs.k[b : b + 1, v : v + 1],
                )
                kp_xy, _ = project(
                    fitted[b : b + 1],
                    obs.rot[b : b + 1, v : v + 1],
                    obs.trans[b : b + 1, v : v + 1],
                    obs.k[b : b + 1, v : v + 1],
                )
            conf = obs.conf[b, v].numpy()
            canvas = draw_overlay(
                canvas,
                mesh_xy=mesh_xy[0, 0].numpy(),
                mesh_depth=depth[0, 0].numpy(),
                faces=model.faces,
                focal_px=float(obs.k[b, v, 0, 0]),
                keypoints=[
                    (names, obs.xy[b, v].numpy(), conf, GT_COLOR),
                    (names, kp_xy[0, 0].numpy(), np.ones(len(names)), FIT_COLOR),
                ],
            )
        write_png(folder / f"{Path(image_name).stem}.png", canvas)


def main(argv: Sequence[str] | None = None) -> int:
    return stage_cli.stage_main(__name__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
