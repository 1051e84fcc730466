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
tries the body facing the camera and facing away, and keeps the better after
``select_after_stage``.
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
    both_facings: bool = True
    """single view: also try the body facing away; keep the better"""
    select_after_stage: int = 1
    """keep the facing with the lower objective after this stage (0-based)"""
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
    facing_away: torch.Tensor  # (B,) bool: the chosen single-view hypothesis
    terms: dict[str, torch.Tensor]  # final loss terms, each (B,)
    curve: list[dict[str, float]]  # iteration, stage, mean loss per row, mean data term
    iterations: int


def world_keypoints(model: BodyModel, pose: BodyPose, scale: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """(B, K, 3) keypoints in the output frame: ``scale * (R_global X) + transl``."""
    centred = BodyPose(pose.global_orient, pose.body_pose, pose.shape, torch.zeros_like(pose.transl))
    return scale[:, None, None] * model.keypoints(centred, names) + pose.transl[:, None, :]


def fit_bodies(
    model: BodyModel, obs: BodyObservations, config: BodyFitConfig, init: BodyPose | None = None
) -> BodyFitResult:
    """Fit one body per row of ``obs`` (all rows in one batched optimisation).

    ``init`` starts from given parameters (e.g. the previous video frame's fit) instead of the
    torso-length / triangulation initialisation; it then tries one facing only."""
    missing = [n for n in obs.names if n not in model.keypoint_names]
    if missing:
        raise ValueError(f"model '{model.name}' has no keypoints {missing}")
    multiview = obs.num_views > 1
    hypotheses = 2 if (config.both_facings and not multiview and init is None) else 1
    work = obs.repeat(hypotheses) if hypotheses > 1 else obs
    if init is None:
        go, transl, scale = _initialise(model, work, hypotheses, config.fit_scale)
        pose = model.zero_pose(work.batch_size)
    else:
        pose = init.detach()
        go, transl = pose.global_orient, pose.transl
        scale = torch.ones(work.batch_size, 1, dtype=model.dtype, device=model.device)
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
    facing_away = torch.zeros(work.batch_size, dtype=torch.bool, device=model.device)
    iteration = 0
    terms: dict[str, torch.Tensor] = {}
    total_iterations = sum(s.iterations for s in config.stages)
    for index, stage in enumerate(config.stages):
        active = ["global_orient", "transl"] + (["body_pose", "shape"] if stage.body else [])
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
            best = final.view(-1, hypotheses).argmin(1)
            rows = torch.arange(len(best), device=best.device) * hypotheses + best
            facing_away = best.bool()
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
        facing_away = facing_away[rows]
    return BodyFitResult(
        pose=result_pose,
        scale=torch.exp(params["log_scale"].detach()).squeeze(-1),
        facing_away=facing_away,
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


def _facing_rotation(away: bool) -> np.ndarray:
    """camera_from_body for a body standing upright in front of the camera (model z up, facing -y),
    facing the camera, or turned 180 degrees about the vertical when ``away``."""
    upright = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # body z -> camera -y, body -y -> camera -z
    if away:
        upright = np.diag([-1.0, 1.0, -1.0]) @ upright
    return upright


def _initialise(
    model: BodyModel, obs: BodyObservations, hypotheses: int, fit_scale: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial global orientation (B, 3), translation (B, 3) and scale (B, 1)."""
    names = list(obs.names)
    with torch.no_grad():
        rest = model.keypoints(model.zero_pose(1), names)[0].to(torch.float64).cpu().numpy()  # (K, 3)
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
        seen = conf[b] > 0
        estimate = None
        if obs.num_views > 1:
            estimate = _init_multiview(rest, xy[b], seen, rot[b], trans[b], kmat[b], fit_scale)
        if estimate is None:
            view = int(seen.sum(1).argmax())
            away = hypotheses > 1 and b % hypotheses == 1
            estimate = _init_single_view(
                rest, names, xy[b, view], seen[view], rot[b, view], trans[b, view], kmat[b, view], away
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
    away: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    cam_from_body = _facing_rotation(away)
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
