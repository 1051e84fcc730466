"""Anny's learned pose prior: EM, retargeting mocap joints onto Anny, the shipped prior, EXIF focal
lengths and the multi-hypothesis single-view start."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d.tasks.body.fit import _facing_rotation
from capture3d.tasks.body.gmm import MaxMixture, MixtureError, fit_mixture
from capture3d.tasks.body.pose_prior import PRIOR_JOINTS, SHIPPED_PRIOR, AnnyPosePrior
from capture3d.tasks.body.real_eval import MOCAP_EVAL_CLIPS
from capture3d.tasks.body.retarget import ANNY_JOINT_BONES, SEGMENTS, mirror_joints, retarget
from capture3d.tasks.cameras import focal_from_exif


def test_em_recovers_a_known_mixture_and_nll_matches_the_formula() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal([2.0, 0.0, 0.0], [0.3, 0.1, 0.2], size=(3000, 3))
    b = rng.normal([-1.0, 1.0, 0.5], [0.1, 0.4, 0.1], size=(1000, 3))
    means, covars, weights, _ = fit_mixture(np.concatenate([a, b]), 2, seed=0, var_floor=1e-6)
    order = np.argsort(-weights)
    assert np.allclose(weights[order], [0.75, 0.25], atol=0.02)
    assert np.allclose(means[order[0]], [2.0, 0.0, 0.0], atol=0.03)
    assert np.allclose(np.sqrt(np.diag(covars[order[1]])), [0.1, 0.4, 0.1], atol=0.02)
    mix = MaxMixture.from_arrays(means, covars, weights, dtype=torch.float64)
    x = np.array([[0.5, 0.2, -0.1]])
    expected = min(
        0.5 * (x[0] - m) @ np.linalg.inv(c) @ (x[0] - m)
        - math.log(w)
        + 1.5 * math.log(2 * math.pi)
        + 0.5 * (np.linalg.slogdet(c)[1] - min(np.linalg.slogdet(cc)[1] for cc in covars))
        for m, c, w in zip(means, covars, weights, strict=True)
    )
    assert float(mix.nll(torch.as_tensor(x))[0]) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(MixtureError, match="positive definite"):
        MaxMixture.from_arrays(means, -covars, weights)
    with pytest.raises(MixtureError, match="too few"):
        fit_mixture(a[:5], 2, seed=0)


def test_mirror_swaps_sides_and_reflects() -> None:
    names = ["pelvis", "left_hip", "right_hip"]
    joints = np.array([[[0.0, 1.0, 0.0], [0.1, 0.9, 0.0], [-0.1, 0.9, 0.05]]])
    out = mirror_joints(joints, names, axis=0)
    assert np.allclose(out[0, 1], [0.1, 0.9, 0.05]) and np.allclose(out[0, 2], [-0.1, 0.9, 0.0])


@pytest.fixture(scope="module")
def anny():
    from capture3d.tasks.body.anny_model import AnnyBody

    torch.set_num_threads(1)
    return AnnyBody(dtype=torch.float64)


def test_retarget_recovers_an_anny_pose_from_its_joint_centres(anny) -> None:
    """Joint centres of posed Anny bodies, moved to another frame (y up, scaled), retarget back to
    poses whose segment directions match to a fraction of a degree and whose limb bones agree."""
    gen = torch.Generator().manual_seed(0)
    pose = anny.zero_pose(6)
    for joint, spread in (("upperleg01", 0.5), ("upperarm01", 0.6), ("lowerarm01", 0.5)):
        for side in "LR":
            pose.body_pose[:, anny.joint_index(f"{joint}.{side}")] = spread * torch.randn(6, 3, generator=gen)
    for side, sign in (("L", 1.0), ("R", 1.0)):
        pose.body_pose[:, anny.joint_index(f"lowerleg01.{side}"), 0] = sign * torch.rand(6, generator=gen) * 1.5
    pose.global_orient[:] = torch.tensor([0.3, -1.2, 0.4])
    names = list(ANNY_JOINT_BONES)
    with torch.no_grad():
        heads = anny.bone_heads(pose, [ANNY_JOINT_BONES[n] for n in names]).numpy()
    z_up_to_y_up = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    joints = 1.7 * heads @ z_up_to_y_up.T
    result = retarget(anny, joints, names, iterations=300)
    assert result.segment_error_deg.shape == (6, len(SEGMENTS))
    assert np.median(result.segment_error_deg) < 1.0 and result.segment_error_deg.max() < 3.0
    knee = anny.joint_index("lowerleg01.L")
    assert np.allclose(result.body_pose[:, knee, 0], pose.body_pose[:, knee, 0].numpy(), atol=0.15)
    with pytest.raises(ValueError, match="needed"):
        retarget(anny, joints[:, 1:], names[1:])


def test_shipped_prior_is_small_left_out_the_evaluation_clips_and_prefers_natural_poses(anny) -> None:
    assert SHIPPED_PRIOR.is_file() and SHIPPED_PRIOR.stat().st_size < 300_000
    prior = AnnyPosePrior.load(SHIPPED_PRIOR)
    assert prior.joints == PRIOR_JOINTS
    assert not set(prior.info["sources"]) & set(MOCAP_EVAL_CLIPS)
    assert prior.info["retarget_error_deg_median"] < 2.0
    anny.use_pose_prior(prior.joints, prior.mixture(dtype=torch.float64))
    natural = anny.zero_pose(3).body_pose
    natural[1, anny.joint_index("lowerleg01.L"), 0] = 0.8  # a bent knee
    natural[2, anny.joint_index("upperleg01.R"), 0] = -0.9  # a hip flexed (a step, sitting)
    odd = anny.zero_pose(3).body_pose  # each against the natural pose of the same row
    odd[0, anny.joint_index("spine02"), 1] = 1.0  # the spine twisted 57 degrees at one bone
    odd[1, anny.joint_index("lowerleg01.L"), 0] = -0.8  # the knee bent as far, backwards
    odd[2, anny.joint_index("upperleg01.R"), 2] = 1.2  # a hip thrown sideways across the body
    nll_natural, nll_odd = anny.pose_prior(natural), anny.pose_prior(odd)
    assert (nll_natural < nll_odd).all().item(), (nll_natural, nll_odd)
    with pytest.raises(ValueError, match="does not fit"):
        anny.use_pose_prior(prior.joints[:-1], prior.mixture())


def test_prior_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "prior.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"prior\.npz"):
        AnnyPosePrior.load(bad)
    np.savez(
        bad,
        joints=np.array(["nope"]),
        means=np.zeros((1, 3)),
        covars=np.eye(3)[None],
        weights=np.ones(1),
        info=np.asarray(json.dumps({})),
    )
    with pytest.raises(ValueError, match="nope"):
        AnnyPosePrior.load(bad)


def test_exif_focal_length(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (400, 300))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 36  # 36 mm-equivalent: focal = longer side
    img.save(tmp_path / "a.jpg", exif=exif)
    assert focal_from_exif(tmp_path / "a.jpg") == pytest.approx(400.0)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A], ifd[0xA20E], ifd[0xA210], ifd[0xA002] = 4.0, 1000.0, 4, 800  # 4 mm, 1000 px/mm at 800 px
    img.save(tmp_path / "b.jpg", exif=exif)
    assert focal_from_exif(tmp_path / "b.jpg") == pytest.approx(4.0 * 1000.0 * 400 / 800)
    img.save(tmp_path / "c.jpg")
    assert focal_from_exif(tmp_path / "c.jpg") is None


def test_hypothesis_rotations_turn_and_lean() -> None:
    head, feet = np.array([0.0, 0.0, 1.0]), np.zeros(3)  # body frame: z up, facing -y
    front = np.array([0.0, -1.0, 0.0])
    facing = _facing_rotation(0.0, 0.0)
    assert (facing @ front)[2] < -0.99  # faces the camera (camera z forward)
    assert (_facing_rotation(180.0, 0.0) @ front)[2] > 0.99
    assert abs((_facing_rotation(90.0, 0.0) @ front)[2]) < 1e-9
    leant = _facing_rotation(0.0, 20.0)
    assert (leant @ (head - feet))[2] == pytest.approx(math.sin(math.radians(20.0)))  # top away


def _observe(model, pose, focal: float = 1000.0):
    """BodyObservations of ``pose`` (model keypoints, camera at the origin looking down +z)."""
    from capture3d.tasks.body.fit import BodyObservations
    from capture3d.tasks.body.model import COCO17

    with torch.no_grad():
        points = model.keypoints(pose, COCO17)  # (B, K, 3)
    k = torch.tensor([[focal, 0, 500.0], [0, focal, 500.0], [0, 0, 1.0]], dtype=points.dtype)
    uv = points @ k.T
    xy = (uv[..., :2] / uv[..., 2:]).unsqueeze(1)  # (B, 1, K, 2)
    b = len(points)
    eye = torch.eye(3, dtype=points.dtype)
    return BodyObservations(
        COCO17,
        xy,
        torch.ones(b, 1, len(COCO17), dtype=points.dtype),
        eye.expand(b, 1, 3, 3).clone(),
        torch.zeros(b, 1, 3, dtype=points.dtype),
        k.expand(b, 1, 3, 3).clone(),
        torch.full((b, 1), 400.0, dtype=points.dtype),
    )


def test_pose_hypotheses_start_from_the_prior_modes_per_row(anny) -> None:
    """With the learned prior, a single view starts from (1 + pose_hypotheses) x turns x leans
    hypotheses; the choice is per row, so fitting rows together equals fitting each alone."""
    from capture3d.tasks.body.fit import BodyFitConfig, FitStage, fit_bodies

    prior = AnnyPosePrior.load(SHIPPED_PRIOR)
    anny.use_pose_prior(prior.joints, prior.mixture(dtype=torch.float64))
    modes = anny.pose_modes()
    assert modes.shape == (8, len(anny.pose_joint_names), 3)
    assert torch.allclose(anny.pose_prior(modes[:1]), prior.mixture(dtype=torch.float64).consts.min(), atol=1e-6)
    pose = anny.zero_pose(2)
    pose.body_pose[:] = modes[[1, 4]]
    pose.global_orient[:] = torch.tensor([math.pi / 2, 0.0, 0.0])  # upright: model z up -> camera -y
    pose.transl[:] = torch.tensor([0.0, 0.0, 4.0])
    obs = _observe(anny, pose)
    config = BodyFitConfig(
        stages=(FitStage(15, 0.05, body=False), FitStage(15, 0.03), FitStage(15, 0.02, pose_weight=1.0)),
        yaw_hypotheses_deg=(0.0, 180.0),
        lean_hypotheses_deg=(0.0,),
        pose_hypotheses=2,
        select_after_stage=1,
    )
    batched = fit_bodies(anny, obs, config)
    assert batched.hypothesis.tolist()[0] in range(6) and batched.pose.batch_size == 2
    for row in range(2):
        alone = fit_bodies(anny, _observe(anny, pose.index([row])), config)
        assert int(alone.hypothesis[0]) == int(batched.hypothesis[row])
        assert (alone.pose.body_pose[0] - batched.pose.body_pose[row]).abs().max() < 1e-6


def test_stage_builds_anny_with_the_shipped_prior_or_none(repo_root: Path, tmp_path: Path) -> None:
    from capture3d.config import load_params
    from capture3d.errors import ParamsError
    from capture3d.stages import fit_bodies

    params = load_params(repo_root / "params.yaml")

    def build(**changes):
        config = fit_bodies.load_config({"fit_bodies": {**params["fit_bodies"], "device": "cpu", **changes}})
        return fit_bodies.build_model(config, torch.device("cpu"))

    assert params["fit_bodies"]["pose_prior"] == "learned" and params["fit_bodies"]["pose_prior_file"] == ""
    learned = build()
    rest = learned.zero_pose(1).body_pose
    assert learned.pose_prior(rest) is not None and learned.pose_modes().shape[0] == 8
    none = build(pose_prior="none")
    assert none.pose_prior(rest) is None and none.pose_modes().shape[0] == 0
    bad = tmp_path / "broken.npz"
    bad.write_text("no")
    with pytest.raises(ParamsError, match="broken.npz"):
        build(pose_prior_file=str(bad))
