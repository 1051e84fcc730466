"""The interface every parametric body model implements, and the canonical keypoint names.

Inputs: a :class:`BodyPose` (batched torch tensors). Outputs: posed vertices ``(B, V, 3)`` and
named keypoints ``(B, K, 3)`` in metres, in the frame that ``global_orient`` / ``transl`` place the
body in. Everything is differentiable in PyTorch.

Keypoints are named in one vocabulary shared by all models and keypoint formats (COCO's 17
names, the OpenPose foot points, ``neck`` / ``mid_hip``, and hand joints), so a format's mapping
onto a model is the intersection of names: see :mod:`capture3d.tasks.body.keypoint_formats`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

logger = logging.getLogger(__name__)

COCO17 = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
FEET = ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
DERIVED = ("neck", "mid_hip")  # neck: mean of the shoulders; mid_hip: mean of the hips (OpenPose)
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
# Hand joints numbered from the palm outwards as in OpenPose's hand model: thumb1..4 = CMC, MCP,
# IP, tip; the other fingers 1..4 = MCP, PIP, DIP, tip. ``{side}_hand_root`` is the hand's wrist.
HANDS = tuple(
    f"{side}_{name}"
    for side in ("left", "right")
    for name in ("hand_root", *(f"{finger}{i}" for finger in FINGERS for i in range(1, 5)))
)
CANONICAL_KEYPOINTS = COCO17 + FEET + DERIVED + HANDS

# Torso keypoints: the first fitting stage (global orientation and translation) uses these.
TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")


@dataclass
class BodyPose:
    """Batched parameters of a body model (all tensors share dtype and device).

    global_orient: (B, 3) axis-angle of the body (root) in the output frame.
    body_pose:     (B, J, 3) axis-angle per posable joint, in ``model.pose_joint_names`` order,
                   each relative to its rest orientation (identity = the model's rest pose).
    shape:         (B, S) shape coefficients, 0 = the model's mean body, prior N(0, I).
    transl:        (B, 3) translation of the body in metres.
    """

    global_orient: torch.Tensor
    body_pose: torch.Tensor
    shape: torch.Tensor
    transl: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.global_orient.shape[0])

    def detach(self) -> BodyPose:
        return BodyPose(*(t.detach().clone() for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.global_orient, self.body_pose, self.shape, self.transl

    def index(self, rows: Sequence[int] | torch.Tensor) -> BodyPose:
        """The sub-batch at ``rows``."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.global_orient.device)
        return BodyPose(*(t[idx] for t in self.tensors()))


@dataclass(frozen=True)
class BendLimit:
    """A hinge-like joint that bends one way: ``sign * body_pose[:, joint, axis]`` should stay >= 0.

    The bending prior penalises ``exp(-sign * angle)`` (SMPLify's elbow/knee prior)."""

    joint: str
    axis: int
    sign: float


class BodyModel(ABC):
    """A differentiable parametric body model.

    Subclasses set ``name``, ``pose_joint_names``, ``num_shape``, ``keypoint_names`` (the canonical
    names it can produce), ``faces`` (F, 3) int array, ``bend_limits``, ``dtype`` and ``device``.
    """

    name: str
    pose_joint_names: tuple[str, ...]
    num_shape: int
    keypoint_names: tuple[str, ...]
    faces: np.ndarray
    bend_limits: tuple[BendLimit, ...] = ()
    joint_limits: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType({})
    pose_sigma: tuple[float, ...] = ()  # per pose joint, radians, for the quadratic prior (empty: all 1)
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def keypoints(self, pose: BodyPose, names: Sequence[str]) -> torch.Tensor:
        """(B, K, 3) positions of the named keypoints (each in ``keypoint_names``).

        Implementations should evaluate only what these keypoints need (fitting calls this
        every iteration); :meth:`vertices` gives the whole mesh."""

    @abstractmethod
    def vertices(self, pose: BodyPose) -> torch.Tensor:
        """(B, V, 3) posed mesh vertices."""

    def rigid_keypoints(
        self, pose: BodyPose, names: Sequence[str]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The named keypoints as a function of ``(global_orient (B, 3), transl (B, 3))`` alone, with
        ``pose``'s body pose and shape held fixed (detached): fitting's first stage moves only the
        global transform. This default evaluates :meth:`keypoints` on every call; models whose
        global transform is a plain rigid motion of fixed points override it to evaluate them once."""
        body_pose, shape = pose.body_pose.detach(), pose.shape.detach()
        return lambda orient, transl: self.keypoints(BodyPose(orient, body_pose, shape, transl), names)

    def zero_pose(self, batch_size: int) -> BodyPose:
        """The rest pose with the mean shape at the origin, ``batch_size`` copies."""
        kw = {"dtype": self.dtype, "device": self.device}
        return BodyPose(
            global_orient=torch.zeros(batch_size, 3, **kw),
            body_pose=torch.zeros(batch_size, len(self.pose_joint_names), 3, **kw),
            shape=torch.zeros(batch_size, self.num_shape, **kw),
            transl=torch.zeros(batch_size, 3, **kw),
        )

    def pose_prior(self, body_pose: torch.Tensor) -> torch.Tensor | None:
        """(B,) a learned pose prior's negative log-likelihood (e.g. a Gaussian mixture), or None
        when the model ships none; fitting then uses bending and joint-limit priors."""
        return None

    def pose_modes(self) -> torch.Tensor:
        """(M, J, 3) typical poses to start a fit from, most likely first (a learned prior's mixture
        means), or (0, J, 3) when the model has no learned prior."""
        return torch.zeros(0, len(self.pose_joint_names), 3, dtype=self.dtype, device=self.device)

    def joint_index(self, name: str) -> int:
        return self.pose_joint_names.index(name)


def derived_keypoint(name: str) -> tuple[str, str] | None:
    """The two keypoints whose mean is ``name`` (``neck``, ``mid_hip``), else None."""
    return {"neck": ("left_shoulder", "right_shoulder"), "mid_hip": ("left_hip", "right_hip")}.get(name)
