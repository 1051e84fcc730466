"""SMPL, SMPL-H and SMPL-X body models built from the user's own model files.

Inputs: an official model file, ``.npz`` (read with ``allow_pickle=False``) or ``.pkl`` (read with
:func:`~capture3d.tasks.body.safe_pickle.safe_load_pickle`, which runs no code from the file),
holding ``v_template`` (V, 3), ``shapedirs`` (V, 3, S), ``posedirs`` (V, 3, 9 (J - 1)),
``J_regressor`` (J, V), ``weights`` (V, J), ``kintree_table`` (2, J) and ``f`` (F, 3); optionally
SMPLify's Gaussian-mixture pose prior (``gmm_08.pkl``: ``means`` (M, 69), ``covars`` (M, 69, 69),
``weights`` (M,)).
Outputs: a :class:`SmplModel` (:class:`BodyModel`): posed vertices (B, V, 3), posed joints
(B, J, 3), canonical keypoints (B, K, 3), faces, SMPLify's elbow/knee bending limits and the GMM
pose prior's negative log-likelihood (B,).

The family follows from the joint count: 24 SMPL, 52 SMPL-H, 55 SMPL-X. ``body_pose`` holds every
joint after the root (23 / 51 / 54) in the standard joint order (:data:`JOINT_NAMES`);
``global_orient`` rotates the body about the root joint and ``transl`` is added afterwards. Only
the first ``num_betas`` shape columns are used (SMPL-X files keep expression directions in later
columns: from column 300 in 400-column files, from column 10 in 20-column ones).

Linear blend skinning, as in SMPL (Loper et al. 2015): shaped rest vertices
``v_template + shapedirs . betas``; rest joints ``J_regressor`` applied to them (precomputed as
``J_regressor v_template`` and ``J_regressor shapedirs``, exact since both are linear); pose
blend shapes ``posedirs . vec(R_j - I)`` over the non-root joints; forward kinematics along the
kinematic tree; each vertex moved by the weighted sum of the joints' transforms
``[G_j | g_j - G_j J_j]``. :meth:`SmplModel.keypoints` skins only the vertices it needs.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from capture3d.tasks.body.errors import BodyModelError
from capture3d.tasks.body.gmm import MaxMixture, MixtureError
from capture3d.tasks.body.model import (
    CANONICAL_KEYPOINTS,
    BendLimit,
    BodyModel,
    BodyPose,
    derived_keypoint,
)
from capture3d.tasks.body.rotations import axis_angle_to_matrix
from capture3d.tasks.body.safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

__all__ = ["JOINT_NAMES", "SMPL_BEND_LIMITS", "BodyModelError", "SmplModel", "load_smpl_model"]

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
FAMILY_BY_JOINTS = MappingProxyType({24: "smpl", 52: "smplh", 55: "smplx"})

# Joint names (the smplx package's joint_names.py order).
_BODY22 = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
)
_BODY22_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
_SMPLH_FINGER_ORDER = ("index", "middle", "pinky", "ring", "thumb")  # three joints each, palm outwards


def _hand(side: str) -> tuple[str, ...]:
    return tuple(f"{side}_{finger}{i}" for finger in _SMPLH_FINGER_ORDER for i in (1, 2, 3))


_FACE_SMPLX = ("jaw", "left_eye_smplhf", "right_eye_smplhf")
JOINT_NAMES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "smpl": _BODY22 + ("left_hand", "right_hand"),
        "smplh": _BODY22 + _hand("left") + _hand("right"),
        "smplx": _BODY22 + _FACE_SMPLX + _hand("left") + _hand("right"),
    }
)


def _standard_parents(family: str) -> tuple[int, ...]:
    parents = list(_BODY22_PARENTS)
    if family == "smpl":
        return tuple(parents + [20, 21])
    if family == "smplx":
        parents += [15, 15, 15]  # jaw and eyes hang off the head
    for wrist in (20, 21):
        for _ in _SMPLH_FINGER_ORDER:
            first = len(parents)
            parents += [wrist, first, first + 1]
    return tuple(parents)


# Keypoints that are surface points, by vertex id: the smplx package's ``vertex_ids`` table
# (github.com/vchoutas/smplx, smplx/vertex_ids.py), renamed to canonical names. Its 'smplh' table
# serves the 6,890-vertex SMPL / SMPL-H mesh, its 'smplx' table the 10,475-vertex SMPL-X mesh;
# fingertips (``*4``) are its lthumb/lindex/... points.
_SURFACE_IDS_SMPLH = MappingProxyType(
    {
        "nose": 332,
        "right_eye": 6260,
        "left_eye": 2800,
        "right_ear": 4071,
        "left_ear": 583,
        "right_thumb4": 6191,
        "right_index4": 5782,
        "right_middle4": 5905,
        "right_ring4": 6016,
        "right_pinky4": 6133,
        "left_thumb4": 2746,
        "left_index4": 2319,
        "left_middle4": 2445,
        "left_ring4": 2556,
        "left_pinky4": 2673,
        "left_big_toe": 3216,
        "left_small_toe": 3226,
        "left_heel": 3387,
        "right_big_toe": 6617,
        "right_small_toe": 6624,
        "right_heel": 6787,
    }
)
_SURFACE_IDS_SMPLX = MappingProxyType(
    {
        "nose": 9120,
        "right_eye": 9929,
        "left_eye": 9448,
        "right_ear": 616,
        "left_ear": 6,
        "right_thumb4": 8079,
        "right_index4": 7669,
        "right_middle4": 7794,
        "right_ring4": 7905,
        "right_pinky4": 8022,
        "left_thumb4": 5361,
        "left_index4": 4933,
        "left_middle4": 5058,
        "left_ring4": 5169,
        "left_pinky4": 5286,
        "left_big_toe": 5770,
        "left_small_toe": 5780,
        "left_heel": 8846,
        "right_big_toe": 8463,
        "right_small_toe": 8474,
        "right_heel": 8635,
    }
)
# family -> (the mesh's vertex count, its surface keypoint table)
_SURFACE = MappingProxyType(
    {
        "smpl": (6890, _SURFACE_IDS_SMPLH),
        "smplh": (6890, _SURFACE_IDS_SMPLH),
        "smplx": (10475, _SURFACE_IDS_SMPLX),
    }
)
_BODY_JOINT_KEYPOINTS = tuple(
    f"{side}_{part}" for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle") for side in ("left", "right")
)

# SMPLify's angle prior (Bogo et al. 2016; smplify-x prior.py ``SMPLifyAnglePrior``) penalises
# exp(s * pose) with s = (+1, -1, -1, -1) on (left elbow y, right elbow y, left knee x, right knee
# x): the natural bend is s * angle < 0. In BendLimit terms (penalty exp(-sign * angle), natural
# sign * angle >= 0) sign = -s. With SMPL's frame (y up, facing +z, left at +x) this bends the
# forearms forwards (+z) and the shins backwards (-z); tests/test_smpl_model.py checks it.
SMPL_BEND_LIMITS = (
    BendLimit("left_elbow", 1, -1.0),
    BendLimit("right_elbow", 1, 1.0),
    BendLimit("left_knee", 0, 1.0),
    BendLimit("right_knee", 0, 1.0),
)
# Pose joints whose meaning matches SMPL's (what SMPLify's 69-D mixture covers, joints 1-23):
# SMPL-H / SMPL-X share joints 1-21; their 22nd and 23rd are finger / face joints, not SMPL's hands.
_GMM_COMPATIBLE_JOINTS = MappingProxyType({"smpl": 23, "smplh": 21, "smplx": 21})


def _shape_columns(family: str, available: int) -> int:
    """How many leading shapedirs columns are body shape (SMPL-X files append expressions)."""
    if family != "smplx":
        return available
    return 300 if available >= 400 else min(available, 10)


def _guess_gender(path: Path) -> str:
    """From names such as SMPL_FEMALE.pkl, SMPLX_MALE.npz or basicModel_f_lbs_10_207_0_v1.0.0.pkl."""
    tokens = set(re.split(r"[^a-z]+", path.stem.lower()))
    for gender, short in (("female", "f"), ("male", "m")):
        if gender in tokens or short in tokens:
            return gender
    return "neutral"


def _read_npz(path: Path, keys: Sequence[str], label: str) -> dict[str, Any]:
    """The arrays ``keys`` (those present) of an .npz file, without unpickling anything."""
    if not zipfile.is_zipfile(path):
        raise BodyModelError(f"{label} is not a readable .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys if k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise BodyModelError(
                f"{label} holds pickled objects in a needed array; re-save it with plain numeric arrays"
            ) from None
        raise BodyModelError(f"{label} is not a readable .npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise BodyModelError(f"{label} is not a readable .npz ({type(e).__name__}: {e})") from None


def _read_arrays(path: Path, keys: Sequence[str], what: str) -> dict[str, Any]:
    label = f"{what} '{path}'"
    if path.suffix.lower() not in (".npz", ".pkl"):
        raise BodyModelError(f"{label} has an unsupported extension '{path.suffix}': expected .npz or .pkl")
    if not path.is_file():
        raise BodyModelError(f"{label} does not exist")
    if path.suffix.lower() == ".npz":
        data = _read_npz(path, keys, label)
    else:
        data = safe_load_pickle(path, what=what)
    missing = [k for k in keys if k not in data]
    if missing:
        raise BodyModelError(
            f"{label} lacks {', '.join(repr(k) for k in missing)} "
            f"(it holds {', '.join(map(str, sorted(data))) or 'nothing usable'})"
        )
    return data


def _numeric(data: Mapping[str, Any], key: str, label: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise BodyModelError(f"{label}: '{key}' is not a numeric array") from None
    if arr.ndim != ndim:
        raise BodyModelError(f"{label}: '{key}' has shape {arr.shape}, expected {ndim} dimensions")
    if not np.all(np.isfinite(arr)):
        raise BodyModelError(f"{label}: '{key}' holds non-finite values")
    return arr


def _parents_from_kintree(kintree: np.ndarray, label: str) -> tuple[int, ...]:
    """(2, J) kintree_table (row 0 parent ids, row 1 joint ids) -> parent index per joint, root -1."""
    ids = [int(i) for i in kintree[1]]
    col = {jid: c for c, jid in enumerate(ids)}
    if len(col) != len(ids):
        raise BodyModelError(f"{label}: kintree_table repeats a joint id")
    parents = []
    for c, pid in enumerate(int(p) for p in kintree[0]):
        parents.append(col.get(pid, -1))
        if (c == 0) != (parents[-1] == -1) or parents[-1] >= c:
            raise BodyModelError(
                f"{label}: kintree_table is not a tree rooted at joint 0 with parents "
                f"before children (joint {c} has parent id {pid})"
            )
    return tuple(parents)


@dataclass(frozen=True)
class _ModelArrays:
    """A model file's arrays, checked and as float64: shapes as in the module docstring."""

    family: str
    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    regressor: np.ndarray
    weights: np.ndarray
    faces: np.ndarray
    parents: tuple[int, ...]


def _validated(arrays: Mapping[str, Any], label: str) -> _ModelArrays:
    """Check a model file's keys and shapes; BodyModelError (naming ``label``) when they are wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise BodyModelError(f"{label} lacks {', '.join(repr(k) for k in missing)}")
    v_template = _numeric(arrays, "v_template", label, 2)
    shapedirs = np.asarray(arrays["shapedirs"])
    shapedirs = _numeric(
        {"shapedirs": shapedirs[..., None] if shapedirs.ndim == 2 else shapedirs}, "shapedirs", label, 3
    )
    posedirs = _numeric(arrays, "posedirs", label, 3)
    regressor = _numeric(arrays, "J_regressor", label, 2)
    weights = _numeric(arrays, "weights", label, 2)
    kintree = _numeric(arrays, "kintree_table", label, 2)
    faces = _numeric(arrays, "f", label, 2)
    nv, nj = v_template.shape[0], kintree.shape[1] if kintree.shape[0] == 2 else -1
    if v_template.shape[1] != 3 or nj < 0:
        raise BodyModelError(
            f"{label}: v_template {v_template.shape} must be (V, 3) and kintree_table {kintree.shape} (2, J)"
        )
    if nj not in FAMILY_BY_JOINTS:
        raise BodyModelError(f"{label} has {nj} joints; expected 24 (SMPL), 52 (SMPL-H) or 55 (SMPL-X)")
    family = FAMILY_BY_JOINTS[nj]
    expected = {
        "shapedirs": (nv, 3, shapedirs.shape[2]),
        "posedirs": (nv, 3, 9 * (nj - 1)),
        "J_regressor": (nj, nv),
        "weights": (nv, nj),
        "f": (faces.shape[0], 3),
    }
    got = {
        "shapedirs": shapedirs.shape,
        "posedirs": posedirs.shape,
        "J_regressor": regressor.shape,
        "weights": weights.shape,
        "f": faces.shape,
    }
    wrong = [f"{k} {got[k]} (expected {v})" for k, v in expected.items() if got[k] != v]
    if wrong:
        raise BodyModelError(f"{label} ({nv} vertices, {nj} joints): inconsistent shapes: {'; '.join(wrong)}")
    if faces.size and (faces.min() < 0 or faces.max() >= nv or np.any(faces != np.round(faces))):
        raise BodyModelError(f"{label}: 'f' holds vertex indices outside 0..{nv - 1}")
    parents = _parents_from_kintree(kintree, label)
    if parents != _standard_parents(family):
        logger.warning(
            "%s: its kinematic tree differs from the standard %s tree; joint names, "
            "keypoints and bending limits assume the standard order",
            label,
            family,
        )
    return _ModelArrays(family, v_template, shapedirs, posedirs, regressor, weights, faces, parents)


@dataclass(frozen=True)
class _Gmm:
    """SMPLify's mixture over the first ``num_joints`` pose joints."""

    mixture: MaxMixture
    num_joints: int


def _load_gmm(path: Path, family: str, dtype: torch.dtype, device: torch.device) -> _Gmm:
    """SMPLify's mixture (gmm_08.pkl layout), marginalised to the joints this family shares with SMPL."""
    what = "pose prior file"
    label = f"{what} '{path}'"
    data = _read_arrays(path, ("means", "covars", "weights"), what)
    means = _numeric(data, "means", label, 2)
    covars = _numeric(data, "covars", label, 3)
    weights = _numeric(data, "weights", label, 1)
    m, dim = means.shape
    if covars.shape != (m, dim, dim) or weights.shape != (m,) or dim % 3 or m == 0:
        raise BodyModelError(
            f"{label}: means {means.shape}, covars {covars.shape} and weights {weights.shape} "
            "do not describe one mixture over 3-vectors"
        )
    n = min(dim // 3, _GMM_COMPATIBLE_JOINTS[family])
    d = 3 * n
    try:  # a Gaussian's marginal: the first d values
        mixture = MaxMixture.from_arrays(means[:, :d], covars[:, :d, :d], weights, dtype=dtype, device=device)
    except MixtureError as exc:
        raise BodyModelError(f"{label}: {exc}") from None
    if n < dim // 3:
        logger.info(
            "pose prior %s: using its first %d of %d joints (the ones %s shares with SMPL)",
            path.name,
            n,
            dim // 3,
            family,
        )
    return _Gmm(mixture, n)


@dataclass(frozen=True)
class _Plan:
    """How to evaluate a list of keypoint names: which joints, which skinned vertex rows, how mixed."""

    joint_ids: torch.Tensor  # (Nj,)
    vertex_rows: tuple[torch.Tensor, ...] | None  # sliced template/shapedirs/posedirs/weights
    mix: torch.Tensor  # (K, Nj + Nv), rows sum to 1


class SmplModel(BodyModel):
    """An SMPL-family body model (see the module docstring). Build it with :func:`load_smpl_model`.

    Attributes beyond :class:`BodyModel`'s: ``family`` (= ``name``: smpl, smplh or smplx),
    ``gender``, ``joint_names`` (J, root first), ``parents`` (J,), ``num_vertices``, ``source``.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        *,
        source: str = "arrays",
        gender: str = "neutral",
        num_betas: int = 10,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        pose_prior_path: str | Path | None = None,
    ) -> None:
        label = f"model file '{source}'"
        a = _validated(arrays, label)
        family, nv, nj = a.family, a.v_template.shape[0], len(a.parents)
        if gender not in ("neutral", "male", "female"):
            raise BodyModelError(f"{label}: gender must be neutral, male or female, not {gender!r}")
        if num_betas < 0:
            raise BodyModelError(f"{label}: num_betas must be >= 0, not {num_betas}")
        available = _shape_columns(family, a.shapedirs.shape[2])
        if num_betas > available:
            logger.warning(
                "%s has %d shape directions; using %d, not the %d asked for", label, available, available, num_betas
            )
        num_shape = min(num_betas, available)

        self.name = self.family = family
        self.gender = gender
        self.source = source
        self.dtype = dtype
        self.device = torch.device(device)
        self.joint_names = JOINT_NAMES[family]
        self.pose_joint_names = self.joint_names[1:]
        self.parents = a.parents
        self.num_shape = num_shape
        self.num_vertices = nv
        self.faces = a.faces.astype(np.int64)
        self.bend_limits = SMPL_BEND_LIMITS

        shapedirs = a.shapedirs[:, :, :num_shape]
        cast = {"dtype": dtype, "device": self.device}
        self._v_template = torch.as_tensor(a.v_template, **cast)  # (V, 3)
        self._shapedirs = torch.as_tensor(shapedirs, **cast)  # (V, 3, S)
        self._posedirs = torch.as_tensor(a.posedirs, **cast)  # (V, 3, P)
        self._weights = torch.as_tensor(a.weights, **cast)  # (V, J)
        # the joint regressor is linear: regress the template and each shape direction once
        self._j_template = torch.as_tensor(a.regressor @ a.v_template, **cast)  # (J, 3)
        self._j_shapedirs = torch.as_tensor(np.einsum("jv,vcs->jcs", a.regressor, shapedirs), **cast)  # (J, 3, S)
        self._levels = self._fk_levels(a.parents)
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._gmm = None if pose_prior_path is None else _load_gmm(Path(pose_prior_path), family, dtype, self.device)

        self._keypoint_sources = self._sources(family, nv, label)
        self.keypoint_names = tuple(n for n in CANONICAL_KEYPOINTS if n in self._keypoint_sources or self._derivable(n))
        logger.info(
            "%s: %s (%s), %d vertices, %d joints, %d shape coefficients%s",
            label,
            family,
            gender,
            nv,
            nj,
            num_shape,
            ", GMM pose prior" if self._gmm is not None else "",
        )

    # -- set-up ----------------------------------------------------------------------------------
    def _sources(self, family: str, nv: int, label: str) -> dict[str, tuple[str, int]]:
        """Canonical keypoint -> ("joint", index) or ("vertex", id)."""
        index = {n: i for i, n in enumerate(self.joint_names)}
        sources = {n: ("joint", index[n]) for n in _BODY_JOINT_KEYPOINTS}
        hands = family != "smpl"
        if hands:
            for side in ("left", "right"):
                sources[f"{side}_hand_root"] = ("joint", index[f"{side}_wrist"])
                for finger in _SMPLH_FINGER_ORDER:
                    for i in (1, 2, 3):
                        sources[f"{side}_{finger}{i}"] = ("joint", index[f"{side}_{finger}{i}"])
        mesh_vertices, table = _SURFACE[family]
        if nv == mesh_vertices:
            for name, vid in table.items():
                if hands or not name[-1].isdigit():  # fingertips only with finger joints
                    sources[name] = ("vertex", vid)
        else:
            logger.info(
                "%s: %d vertices, not the %s mesh's %d: surface keypoints (face, feet, fingertips) are not offered",
                label,
                nv,
                family,
                mesh_vertices,
            )
        return sources

    def _derivable(self, name: str) -> bool:
        parts = derived_keypoint(name)
        return parts is not None and all(p in self._keypoint_sources for p in parts)

    def _fk_levels(self, parents: Sequence[int]) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]:
        """Joints grouped by depth: per level (joint ids, parent ids, parents' positions in the
        concatenation of earlier levels); and the permutation back to joint order as the last entry."""
        depth = [0] * len(parents)
        for j in range(1, len(parents)):
            depth[j] = depth[parents[j]] + 1
        order: list[int] = []
        levels = []
        for d in range(max(depth) + 1):
            ids = [j for j in range(len(parents)) if depth[j] == d]
            pos = [order.index(parents[j]) if d else 0 for j in ids]
            par = [max(parents[j], 0) for j in ids]
            levels.append(tuple(torch.tensor(x, device=self.device) for x in (ids, par, pos)))
            order += ids
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        levels.append((inverse.to(self.device),) * 3)
        return tuple(levels)

    # -- evaluation ------------------------------------------------------------------------------
    def _check(self, pose: BodyPose) -> None:
        b = pose.batch_size
        want = {
            "global_orient": (b, 3),
            "body_pose": (b, len(self.pose_joint_names), 3),
            "shape": (b, self.num_shape),
            "transl": (b, 3),
        }
        for (field, shape), t in zip(want.items(), pose.tensors(), strict=True):
            if tuple(t.shape) != shape:
                raise ValueError(f"{self.name}: {field} has shape {tuple(t.shape)}, expected {shape}")

    def _forward_kinematics(self, pose: BodyPose) -> tuple[torch.Tensor, ...]:
        """Local rotations (B, J, 3, 3), global rotations (B, J, 3, 3), posed joints without
        ``transl`` (B, J, 3) and shaped rest joints (B, J, 3)."""
        self._check(pose)
        rot_local = axis_angle_to_matrix(torch.cat([pose.global_orient[:, None], pose.body_pose], 1))
        rest = self._j_template + torch.einsum("jcs,bs->bjc", self._j_shapedirs, pose.shape)
        rot_g, pos_g = rot_local[:, :1], rest[:, :1]  # root: rotation about its rest joint
        for ids, par, ppos in self._levels[1:-1]:
            r_par = rot_g[:, ppos]  # (B, n, 3, 3)
            bone = rest[:, ids] - rest[:, par]  # (B, n, 3)
            rot_g = torch.cat([rot_g, r_par @ rot_local[:, ids]], 1)
            pos_g = torch.cat([pos_g, pos_g[:, ppos] + (r_par @ bone[..., None])[..., 0]], 1)
        inverse = self._levels[-1][0]
        return rot_local, rot_g[:, inverse], pos_g[:, inverse], rest

    def _skin(self, pose: BodyPose, fk: tuple[torch.Tensor, ...], rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Posed positions (B, N, 3), without ``transl``, of the vertex rows given as
        (template (N, 3), shapedirs (N, 3, S), posedirs (N, 3, P), weights (N, J))."""
        rot_local, rot_g, pos_g, rest = fk
        template, shapedirs, posedirs, weights = rows
        b = pose.batch_size
        eye = torch.eye(3, dtype=rot_local.dtype, device=rot_local.device)
        feature = (rot_local[:, 1:] - eye).reshape(b, -1)  # (B, P)
        v = template + torch.einsum("ncs,bs->bnc", shapedirs, pose.shape)
        v = v + torch.einsum("ncp,bp->bnc", posedirs, feature)  # (B, N, 3)
        shift = pos_g - (rot_g @ rest[..., None])[..., 0]  # (B, J, 3)
        rot_v = torch.einsum("nj,bjkl->bnkl", weights, rot_g)  # (B, N, 3, 3)
        return (rot_v @ v[..., None])[..., 0] + weights @ shift

    def joints(self, pose: BodyPose) -> torch.Tensor:
        """(B, J, 3) posed joint positions, in :attr:`joint_names` order."""
        return self._forward_kinematics(pose)[2] + pose.transl[:, None]

    def vertices(self, pose: BodyPose) -> torch.Tensor:
        """(B, V, 3) posed mesh vertices."""
        fk = self._forward_kinematics(pose)
        rows = (self._v_template, self._shapedirs, self._posedirs, self._weights)
        return self._skin(pose, fk, rows) + pose.transl[:, None]

    def _plan(self, names: tuple[str, ...]) -> _Plan:
        plan = self._plans.get(names)
        if plan is not None:
            return plan
        unknown = [n for n in names if n not in self.keypoint_names]
        if unknown:
            raise ValueError(f"{self.name} cannot produce keypoints {unknown}")
        joint_ids: list[int] = []
        vertex_ids: list[int] = []
        terms: list[list[tuple[str, int, float]]] = []
        for name in names:
            parts = (name,) if name in self._keypoint_sources else derived_keypoint(name)
            row = []
            for part in parts:
                kind, idx = self._keypoint_sources[part]
                pool = joint_ids if kind == "joint" else vertex_ids
                if idx not in pool:
                    pool.append(idx)
                row.append((kind, pool.index(idx), 1.0 / len(parts)))
            terms.append(row)
        mix = torch.zeros(len(names), len(joint_ids) + len(vertex_ids), dtype=self.dtype, device=self.device)
        for k, row in enumerate(terms):
            for kind, pos, w in row:
                mix[k, pos if kind == "joint" else len(joint_ids) + pos] += w
        vertex_rows = None
        if vertex_ids:
            vid = torch.tensor(vertex_ids, device=self.device)
            vertex_rows = (self._v_template[vid], self._shapedirs[vid], self._posedirs[vid], self._weights[vid])
        plan = _Plan(torch.tensor(joint_ids, dtype=torch.long, device=self.device), vertex_rows, mix)
        self._plans[names] = plan
        return plan

    def keypoints(self, pose: BodyPose, names: Sequence[str]) -> torch.Tensor:
        """(B, K, 3) the named keypoints; skins only the vertices that surface keypoints need."""
        plan = self._plan(tuple(names))
        fk = self._forward_kinematics(pose)
        points = [fk[2][:, plan.joint_ids]]
        if plan.vertex_rows is not None:
            points.append(self._skin(pose, fk, plan.vertex_rows))
        return torch.einsum("kp,bpc->bkc", plan.mix, torch.cat(points, 1)) + pose.transl[:, None]

    def pose_prior(self, body_pose: torch.Tensor) -> torch.Tensor | None:
        """(B,) SMPLify's max-mixture negative log-likelihood of the body joints, or None without a
        prior file: ``min_m 0.5 (x - mu_m)^T P_m (x - mu_m) - log w_m + log normaliser_m`` with
        smplify-x's normaliser ``(2 pi)^(d/2) sqrt(det C_m) / min_m sqrt(det C_m)``. ``x`` is the
        first 23 pose joints for SMPL, 21 (left_hip .. right_wrist, the mixture's marginal) for
        SMPL-H / SMPL-X. body_pose: (B, J - 1, 3)."""
        if self._gmm is None:
            return None
        gmm = self._gmm
        x = body_pose.reshape(body_pose.shape[0], -1, 3)[:, : gmm.num_joints].reshape(body_pose.shape[0], -1)
        return gmm.mixture.nll(x)


def load_smpl_model(
    path: str | Path,
    *,
    gender: str | None = None,
    num_betas: int = 10,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    pose_prior_path: str | Path | None = None,
) -> SmplModel:
    """An SMPL / SMPL-H / SMPL-X model from an official ``.npz`` or ``.pkl`` file.

    ``gender`` is recorded (default: guessed from the file name, else neutral); the file decides the
    body. ``pose_prior_path``: SMPLify's ``gmm_08.pkl`` (or an .npz with the same keys). Raises
    :class:`BodyModelError` (one line naming the file) for a missing file, an unsupported
    extension, missing keys, inconsistent shapes or a refused pickle."""
    path = Path(path)
    arrays = _read_arrays(path, REQUIRED_KEYS, "model file")
    guessed = _guess_gender(path)
    if gender is not None and gender != guessed and guessed != "neutral":
        logger.warning("model file %s looks %s by its name, but gender=%s was given", path.name, guessed, gender)
    return SmplModel(
        arrays,
        source=str(path),
        gender=gender or guessed,
        num_betas=num_betas,
        dtype=dtype,
        device=device,
        pose_prior_path=pose_prior_path,
    )
