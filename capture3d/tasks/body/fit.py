"""SMPLify-style fitting of a body model to 2D keypoints: batched, single- or multi-view.

Inputs: a :class:`~capture3d.tasks.body.model.BodyModel`, :class:`BodyObservations` (B people or
frames, each seen in V calibrated views; keypoints (B, V, K, 2) with confidences), and a
:class:`BodyFitConfig`. Output: a :class:`BodyFitResult` with the fitted :class:`BodyPose` per row,
the body scale, and the loss curve.

The objective (Bogo et al. 2016, SMPLify; Pavlakos et al. 2019, SMPLify-X) per row is

    sum_views sum_k conf_k rho(|proj(X_k) - x_k| / box)  / 0.01^2
    + pose prior (learned mixture when the model ships one, else quadratic) + bending prior
    + joint limits + shape prior [+ interpenetration] [+ temporal smoothness]

with rho the Geman-McClure error and residuals in units of 1 % of the person's box size, so the
weights do not depend on the image resolution. Optimisation is staged: first the global
orientation and translation on the torso keypoints, then the whole body with decreasing prior
weights. Every row is optimised by its own Adam moments (Adam is elementwise and the loss a sum
over rows), so fitting B rows at once gives the same result as fitting them one at a time.

Initialisation: single view, the camera translation from the torso length (SMPLify); two views
or more, keypoints triangulated and the rest-pose body aligned to them (Umeyama). A single view
is depth-ambiguous, so it starts from several hypotheses at once (the rest pose and the learned
prior's most probable typical poses, times body turns about the vertical, e.g. facing the camera and
facing away, times torso leans towards or away from the camera), all rows of one batch, and keeps
each person's hypothesis with the lowest objective (reprojection plus priors, the learned pose prior
included) after ``select_after_stage``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from capture3d.progress import report as report_progress
from capture3d.tasks.body import priors
from capture3d.tasks.body.camera import depth_from_lengths, project
from capture3d.tasks.body.model import TORSO, BodyModel, BodyPose
from capture3d.tasks.body.rotations import matrix_to_axis_angle

logger = logging.getLogger(__name__)

RESIDUAL_UNIT = 0.01  # residuals are measured in units of 1 % of the box size
# Segments whose 3D length sets the initial depth: torso sides first (least foreshortened).
_DEPTH_SEGMENTS = (
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_hip"),
    ("right_shoulder", "left_hip"),
)
_FALLBACK_SEGMENTS = (
    ("left_shoulder", "right_shoulder"),
    ("left_hip", "right_hip"),
    ("left_hip", "left_knee"),
    ("right_hip", "right_knee"),
    ("left_knee", "left_ankle"),
    ("right_knee", "right_ankle"),
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
)


@dataclass(frozen=True)
class FitStage:
    """One stage of the staged optimisation."""

    iterations: int
    """Adam steps of this stage"""
    learning_rate: float
    """Adam learning rate"""
    body: bool = True
    """False: global orientation, translation (and scale) only, on the torso"""
    pose_weight: float = 1.0
    """learned pose prior when the model has one, else quadratic"""
    shape_weight: float = 1.0
    """shape prior"""
    bend_weight: float = 1.0
    """SMPLify's elbow / knee bending prior"""
    limit_weight: float = 100.0
    """joint-limit boxes"""


# The schedule tuned on synthetic Anny bodies (2 px noise, one view): torso first, then the whole
# body with the pose prior relaxed 20 -> 4 -> 1 (params.yaml's fit_bodies.stages holds a copy).
DEFAULT_STAGES = (
    FitStage(60, 0.05, body=False),
    FitStage(100, 0.05, pose_weight=20.0, shape_weight=10.0, bend_weight=3.0),
    FitStage(100, 0.03, pose_weight=4.0, shape_weight=4.0, bend_weight=1.0),
    FitStage(100, 0.02, pose_weight=1.0, shape_weight=2.0, bend_weight=0.3),
)


@dataclass(frozen=True)
class BodyFitConfig:
    """Settings of :func:`fit_bodies`."""

    stages: tuple[FitStage, ...] = DEFAULT_STAGES
    """the staged optimisation: torso first, then the whole body with the priors relaxed"""
    robust_sigma: float = 0.1
    """Geman-McClure scale, as a fraction of the box size"""
    interpenetration_weight: float = 0.0
    """capsule penalty between non-adjacent limbs and the torso"""
    smooth_pose_weight: float = 0.0
    """sequence: pose change between consecutive frames (useful: 0.1-0.3)"""
    smooth_joint_weight: float = 0.0
    """sequence: 3D keypoint change per cm^2 (useful: 0.01-0.03)"""
    yaw_hypotheses_deg: tuple[float, ...] = (0.0, 180.0)
    """single view: initial body turns about the vertical (0: facing the camera, 180: away)"""
    lean_hypotheses_deg: tuple[float, ...] = (0.0,)
    """single view: initial torso leans about the camera's horizontal axis (+: top away from it);
    every turn is tried with every lean, all in one batch"""
    pose_hypotheses: int = 0
    """single view: also start from this many typical poses (the learned prior's mixture means,
    most probable first), each with every turn and lean; 0: the rest pose only"""
    select_after_stage: int = 1
    """keep the hypothesis with the lowest objective (reprojection + priors) after this stage (0-based)"""
    fit_scale: bool = False
    """fit a body scale (always on for SfM cameras, whose units are arbitrary)"""
    translation_lr_scale: float = 1.0
    """Adam step of the translation relative to the rotations'"""
    log_every: int = 10
    """a loss curve row every this many iterations"""


@dataclass
class BodyObservations:
    """B people or frames, each in V calibrated views (missing views: zero confidence).

    names: canonical keypoint names (K) of the columns;
    xy (B, V, K, 2) pixels; conf (B, V, K) in [0, 1];
    rot (B, V, 3, 3), trans (B, V, 3): world -> camera; k (B, V, 3, 3) intrinsics;
    box (B, V) box size in pixels (residual normalisation);
    sequence_pairs (P, 2): rows (earlier, later) that are consecutive frames of one sequence.
    """

    names: tuple[str, ...]
    xy: torch.Tensor
    conf: torch.Tensor
    rot: torch.Tensor
    trans: torch.Tensor
    k: torch.Tensor
    box: torch.Tensor
    sequence_pairs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))

    @property
    def batch_size(self) -> int:
        return int(self.xy.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.xy.shape[1])

    def repeat(self, times: int) -> BodyObservations:
        """Each row repeated ``times`` times in place (hypotheses); pairs mapped row-wise."""
        rep = [t.repeat_interleave(times, 0) for t in (self.xy, self.conf, self.rot, self.trans, self.k, self.box)]
        pairs = self.sequence_pairs
        if pairs.numel():
            pairs = torch.cat([pairs * times + h for h in range(times)])
        return BodyObservations(self.names, *rep, sequence_pairs=pairs)


@dataclass
class BodyFitResult:
    """Fitted parameters (detached) and diagnostics, one row per observed person or frame."""

    pose: BodyPose
    scale: torch.Tensor  # (B,) metres -> output frame units (1 unless fit_scale)
    facing_away: torch.Tensor  # (B,) bool: the chosen single-view hypothesis turned away from the camera
    hypothesis: torch.Tensor  # (B,) long: the chosen start, index into (pose mode, turn, lean), mode-major
    terms: dict[str, torch.Tensor]  # final loss terms, each (B,)
    curve: list[dict[str, float]]  # iteration, stage, mean loss per row, mean data term
    iterations: int


def world_keypoints(model: BodyModel, pose: BodyPose, scale: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """(B, K, 3) keypoints in the output frame: ``scale * (R_global X) + transl``."""
    centred = BodyPose(pose.global_orient, pose.body_pose, pose.shape, torch.zeros_like(pose.transl))
    return scale[:, None, None] * model.keypoints(centred, names) + pose.transl[:, None, :]


def fit_bodies(
    model: BodyModel,
    obs: BodyObservations,
    config: BodyFitConfig,
    init: BodyPose | None = None,
    shape: torch.Tensor | None = None,
) -> BodyFitResult:
    """Fit one body per row of ``obs`` (all rows in one batched optimisation).

    ``init`` starts from given parameters (e.g. the previous video frame's fit) instead of the
    torso-length / triangulation initialisation; it then tries one facing only. ``shape`` (B, S)
    holds each row's shape fixed (e.g. estimated once per person over a whole video)."""
    missing = [n for n in obs.names if n not in model.keypoint_names]
    if missing:
        raise ValueError(f"model '{model.name}' has no keypoints {missing}")
    multiview = obs.num_views > 1
    modes = model.pose_modes()[: config.pose_hypotheses]  # (M, J, 3)
    turns = [(y, lean) for y in config.yaw_hypotheses_deg for lean in config.lean_hypotheses_deg] or [(0.0, 0.0)]
    starts = [(y, lean, m) for m in range(-1, len(modes)) for y, lean in turns]  # m = -1: the rest pose
    if multiview or init is not None:
        starts = starts[:1]
    hypotheses = len(starts)
    work = obs.repeat(hypotheses) if hypotheses > 1 else obs
    if init is None:
        pose = model.zero_pose(work.batch_size)
        for h, (_, _, m) in enumerate(starts):
            if m >= 0:
                pose.body_pose[h::hypotheses] = modes[m]
        go, transl, scale = _initialise(model, work, pose.body_pose, starts, config.fit_scale)
    else:
        pose = init.detach()
        go, transl = pose.global_orient, pose.transl
        scale = torch.ones(work.batch_size, 1, dtype=model.dtype, device=model.device)
    if shape is not None:
        fixed = shape.to(pose.shape).repeat_interleave(hypotheses, 0)
        pose = BodyPose(pose.global_orient, pose.body_pose, fixed, pose.transl)
    params = {
        "global_orient": go.clone().requires_grad_(),
        "transl": transl.clone().requires_grad_(),
        "body_pose": pose.body_pose.clone().requires_grad_(),
        "shape": pose.shape.clone().requires_grad_(),
        "log_scale": torch.log(scale).clone().requires_grad_(),
    }
    torso = torch.tensor([n in TORSO for n in obs.names], dtype=model.dtype, device=model.device)
    capsule_names = priors.capsule_keypoints() if config.interpenetration_weight > 0 else ()
    names = tuple(obs.names) + tuple(n for n in capsule_names if n not in obs.names)
    curve: list[dict[str, float]] = []
    chosen = torch.zeros(obs.batch_size, dtype=torch.long, device=model.device)
    iteration = 0
    terms: dict[str, torch.Tensor] = {}
    total_iterations = sum(s.iterations for s in config.stages)
    for index, stage in enumerate(config.stages):
        active = ["global_orient", "transl"] + (["body_pose"] if stage.body else [])
        if stage.body and shape is None:
            active.append("shape")
        if config.fit_scale:
            active.append("log_scale")
        groups = [
            {"params": [params[n]], "lr": stage.learning_rate * (config.translation_lr_scale if n == "transl" else 1.0)}
            for n in active
        ]
        optimizer = torch.optim.Adam(groups)
        mask = None if stage.body else torso
        rigid = (
            None
            if stage.body
            else model.rigid_keypoints(
                BodyPose(params["global_orient"], params["body_pose"], params["shape"], params["transl"]), names
            )
        )
        for step in range(stage.iterations):
            optimizer.zero_grad(set_to_none=True)
            terms = _objective(model, work, params, names, stage, config, mask, rigid)
            loss = terms["total"]
            loss.sum().backward()
            optimizer.step()
            iteration += 1
            if step % config.log_every == 0 or step == stage.iterations - 1:
                report_progress(logger, "fit bodies (iterations)", iteration, total_iterations)
            if step % config.log_every == 0 or step == stage.iterations - 1:
                curve.append(
                    {
                        "iteration": iteration,
                        "stage": index,
                        "loss": float(loss.detach().mean()),
                        "data": float(terms["data"].detach().mean()),
                    }
                )
        if hypotheses > 1 and index == min(config.select_after_stage, len(config.stages) - 1):
            with torch.no_grad():
                final = _objective(model, work, params, names, stage, config, None)["total"]
            chosen = final.view(-1, hypotheses).argmin(1)
            rows = torch.arange(len(chosen), device=chosen.device) * hypotheses + chosen
            work = obs
            params = {n: p.detach()[rows].clone().requires_grad_() for n, p in params.items()}
            hypotheses = 1
    with torch.no_grad():
        final_stage = config.stages[-1]
        terms = {n: t.detach() for n, t in _objective(model, work, params, names, final_stage, config, None).items()}
    result_pose = BodyPose(
        params["global_orient"].detach(),
        params["body_pose"].detach(),
        params["shape"].detach(),
        params["transl"].detach(),
    )
    if hypotheses > 1:  # no selection happened (no stages): keep the first hypothesis
        rows = torch.arange(obs.batch_size, device=model.device) * hypotheses
        result_pose = result_pose.index(rows)
        terms = {n: t[rows] for n, t in terms.items()}
        params["log_scale"] = params["log_scale"].detach()[rows]
    yaw = torch.tensor([math.radians(starts[h][0]) for h in chosen.tolist()], device=model.device)
    return BodyFitResult(
        pose=result_pose,
        scale=torch.exp(params["log_scale"].detach()).squeeze(-1),
        facing_away=torch.cos(yaw) < 0,
        hypothesis=chosen,
        terms=terms,
        curve=curve,
        iterations=iteration,
    )


def _objective(
    model: BodyModel,
    obs: BodyObservations,
    params: dict[str, torch.Tensor],
    names: Sequence[str],
    stage: FitStage,
    config: BodyFitConfig,
    mask: torch.Tensor | None,
    rigid: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term, each (B,), and their weighted sum ``total``. ``rigid``: the keypoints as a
    function of the global transform (:meth:`BodyModel.rigid_keypoints`), when the body is held."""
    pose = BodyPose(params["global_orient"], params["body_pose"], params["shape"], params["transl"])
    scale = torch.exp(params["log_scale"]).squeeze(-1)
    if rigid is None:
        points = world_keypoints(model, pose, scale, names)  # (B, N, 3)
    else:
        transl = params["transl"]
        points = scale[:, None, None] * rigid(params["global_orient"], torch.zeros_like(transl)) + transl[:, None, :]
    num = len(obs.names)
    pix, depth = project(points[:, :num], obs.rot, obs.trans, obs.k)
    sq = (pix - obs.xy).square().sum(-1) / obs.box[..., None].square()  # (B, V, K)
    conf = obs.conf if mask is None else obs.conf * mask
    rho = priors.geman_mcclure(sq, config.robust_sigma)
    data = (conf * rho).sum((1, 2)) / RESIDUAL_UNIT**2
    behind = (torch.relu(0.05 - depth) * (conf > 0)).square().sum((1, 2)) * 1e4
    terms = {"data": data, "behind": behind}
    total = data + behind
    if stage.body:
        body_pose = params["body_pose"]
        learned = model.pose_prior(body_pose)
        terms["pose"] = learned if learned is not None else priors.quadratic_pose_prior(body_pose, model.pose_sigma)
        terms["bend"] = priors.bending_prior(body_pose, model.bend_limits, model.pose_joint_names)
        terms["limits"] = priors.joint_limit_prior(body_pose, model.joint_limits, model.pose_joint_names)
        terms["shape"] = priors.shape_prior(params["shape"])
        total = (
            total
            + stage.pose_weight * terms["pose"]
            + stage.bend_weight * terms["bend"]
            + stage.limit_weight * terms["limits"]
            + stage.shape_weight * terms["shape"]
        )
        if config.interpenetration_weight > 0:
            metric = points / scale[:, None, None]
            terms["interpenetration"] = priors.interpenetration_penalty(metric, names)
            total = total + config.interpenetration_weight * terms["interpenetration"]
    pairs = obs.sequence_pairs.to(total.device)
    if pairs.numel() and (config.smooth_pose_weight > 0 or config.smooth_joint_weight > 0):
        terms["smooth"] = config.smooth_pose_weight * priors.smoothness(
            params["body_pose"], pairs
        ) + config.smooth_joint_weight * priors.smoothness(points[:, :num] / 0.01, pairs)
        total = total + terms["smooth"]
    terms["total"] = total
    return terms


# -- initialisation ------------------------------------------------------------------------------


def _facing_rotation(yaw_deg: float, lean_deg: float) -> np.ndarray:
    """camera_from_body for a body standing in front of the camera (model z up, facing -y): facing
    the camera, turned ``yaw_deg`` about the vertical (180: away), then leant ``lean_deg`` about
    the camera's x axis (+: its top away from the camera)."""
    upright = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # body z -> camera -y, body -y -> camera -z
    a, b = math.radians(yaw_deg), math.radians(lean_deg)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1.0, 0], [-math.sin(a), 0, math.cos(a)]])  # about camera y
    lean = np.array([[1.0, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])  # about camera x
    return lean @ turn @ upright


def _initialise(
    model: BodyModel,
    obs: BodyObservations,
    body_pose: torch.Tensor,
    starts: Sequence[tuple[float, float, int]],
    fit_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial global orientation (B, 3), translation (B, 3) and scale (B, 1) for the rows' starting
    body poses (B, J, 3); single-view row b starts turned and leant as ``starts[b % len(starts)]``
    (rows are repeated per hypothesis)."""
    names = list(obs.names)
    with torch.no_grad():
        zero = model.zero_pose(obs.batch_size)
        posed = BodyPose(zero.global_orient, body_pose, zero.shape, zero.transl)
        rests = model.keypoints(posed, names).to(torch.float64).cpu().numpy()  # (B, K, 3)
    xy = obs.xy.detach().to(torch.float64).cpu().numpy()
    conf = obs.conf.detach().to(torch.float64).cpu().numpy()
    rot = obs.rot.detach().to(torch.float64).cpu().numpy()
    trans = obs.trans.detach().to(torch.float64).cpu().numpy()
    kmat = obs.k.detach().to(torch.float64).cpu().numpy()
    batch = obs.batch_size
    orient = np.zeros((batch, 3, 3))
    transl = np.zeros((batch, 3))
    scale = np.ones(batch)
    for b in range(batch):
        rest = rests[b]
        seen = conf[b] > 0
        estimate = None
        if obs.num_views > 1:
            estimate = _init_multiview(rest, xy[b], seen, rot[b], trans[b], kmat[b], fit_scale)
        if estimate is None:
            view = int(seen.sum(1).argmax())
            yaw, lean, _ = starts[b % len(starts)]
            estimate = _init_single_view(
                rest, names, xy[b, view], seen[view], rot[b, view], trans[b, view], kmat[b, view], (yaw, lean)
            )
        orient[b], transl[b], scale[b] = estimate
    cast = {"dtype": model.dtype, "device": model.device}
    go = matrix_to_axis_angle(torch.from_numpy(orient)).to(**cast)
    return go, torch.from_numpy(transl).to(**cast), torch.from_numpy(scale)[:, None].to(**cast)


def _init_single_view(
    rest: np.ndarray,
    names: list[str],
    xy: np.ndarray,
    seen: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    k: np.ndarray,
    start: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, float]:
    cam_from_body = _facing_rotation(*start)
    body_cam = rest @ cam_from_body.T  # rest keypoints, camera axes
    focal = float(np.sqrt(k[0, 0] * k[1, 1]))
    depth = None
    for segments in (_DEPTH_SEGMENTS, _FALLBACK_SEGMENTS):
        pairs = [
            (names.index(a), names.index(b))
            for a, b in segments
            if a in names and b in names and seen[names.index(a)] and seen[names.index(b)]
        ]
        if pairs:
            model_len = np.array([np.linalg.norm(rest[i] - rest[j]) for i, j in pairs])
            image_len = np.array([np.linalg.norm(xy[i] - xy[j]) for i, j in pairs])
            depth = depth_from_lengths(model_len, image_len, focal)
            if depth is not None:
                break
    if depth is None:  # the spread of the visible keypoints against the body's
        vis = np.flatnonzero(seen)
        spread2d = np.linalg.norm(xy[vis].std(0)) if len(vis) > 1 else 0.0
        spread3d = np.linalg.norm(body_cam[vis, :2].std(0)) if len(vis) > 1 else 0.0
        depth = focal * spread3d / spread2d if spread2d > 1 else 3.0
    vis = np.flatnonzero(seen)
    centre_px = xy[vis].mean(0) if len(vis) else k[:2, 2]
    ray = np.linalg.solve(k, np.array([centre_px[0], centre_px[1], 1.0]))
    centroid = body_cam[vis].mean(0) if len(vis) else np.zeros(3)
    t_cam = depth * ray - centroid
    orient = rot.T @ cam_from_body
    return orient, rot.T @ (t_cam - trans), 1.0


def _init_multiview(
    rest: np.ndarray,
    xy: np.ndarray,
    seen: np.ndarray,
    rot: np.ndarray,
    trans: np.ndarray,
    k: np.ndarray,
    fit_scale: bool,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Triangulate keypoints seen in two views or more, then align the rest-pose keypoints (Umeyama)."""
    points, used = [], []
    for j in range(xy.shape[1]):
        views = np.flatnonzero(seen[:, j])
        if len(views) < 2:
            continue
        rows = []
        for v in views:
            proj = k[v] @ np.hstack([rot[v], trans[v][:, None]])
            rows += [xy[v, j, 0] * proj[2] - proj[0], xy[v, j, 1] * proj[2] - proj[1]]
        _, _, vt = np.linalg.svd(np.asarray(rows))
        if abs(vt[-1, 3]) < 1e-12:
            continue
        points.append(vt[-1, :3] / vt[-1, 3])
        used.append(j)
    if len(used) < 4:
        return None
    src, dst = rest[used], np.asarray(points)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    cov = (dst - mu_d).T @ (src - mu_s) / len(used)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    r = u @ d @ vt
    c = float(np.trace(np.diag(s) @ d) / ((src - mu_s) ** 2).sum(1).mean()) if fit_scale else 1.0
    if not math.isfinite(c) or c <= 0:
        c = 1.0
    return r, mu_d - c * r @ mu_s, c
