"""SMPL-family models from model files: loading (.npz and .pkl with chumpy / scipy-sparse objects,
as the official files hold them), LBS against an independent per-vertex numpy implementation,
keypoints, gradients, the GMM and bending priors, and refusal of malicious pickles."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from capture3d.errors import Capture3dError
from capture3d.tasks.body.errors import BodyModelError
from capture3d.tasks.body.model import FEET, HANDS, BodyPose
from capture3d.tasks.body.safe_pickle import safe_load_pickle
from capture3d.tasks.body.smpl_model import SmplModel, load_smpl_model

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- synthetic models
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
# An SMPL-like T-pose skeleton: y up, facing +z, the body's left at +x (metres).
SMPL_REST = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.06, -0.09, 0.0],
        [-0.06, -0.09, 0.0],
        [0.0, 0.11, -0.02],
        [0.10, -0.47, 0.0],
        [-0.10, -0.47, 0.0],
        [0.0, 0.25, 0.0],
        [0.09, -0.87, -0.04],
        [-0.09, -0.87, -0.04],
        [0.0, 0.31, 0.02],
        [0.11, -0.93, 0.08],
        [-0.11, -0.93, 0.08],
        [0.0, 0.52, -0.01],
        [0.08, 0.43, 0.0],
        [-0.08, 0.43, 0.0],
        [0.0, 0.60, 0.04],
        [0.18, 0.46, -0.01],
        [-0.18, 0.46, -0.01],
        [0.44, 0.44, -0.03],
        [-0.44, 0.44, -0.03],
        [0.70, 0.45, -0.02],
        [-0.70, 0.45, -0.02],
        [0.79, 0.44, -0.03],
        [-0.79, 0.44, -0.03],
    ]
)


def hand_family_parents(face: bool) -> list[int]:
    """SMPL-H (face=False) / SMPL-X (face=True) trees, written out independently of the module."""
    parents = SMPL_PARENTS[:22] + ([15, 15, 15] if face else [])
    for wrist in (20, 21):
        for _ in range(5):
            base = len(parents)
            parents += [wrist, base, base + 1]
    return parents


def hand_family_rest(parents: list[int], rng: np.random.Generator) -> np.ndarray:
    rest = np.zeros((len(parents), 3))
    rest[:22] = SMPL_REST[:22]
    for j in range(22, len(parents)):
        side = 1.0 if rest[parents[j], 0] >= 0 else -1.0
        rest[j] = rest[parents[j]] + np.array([side * 0.03, 0.0, 0.0]) + rng.normal(0, 0.01, 3)
    return rest


def make_arrays(
    parents: list[int],
    rest: np.ndarray,
    *,
    seed: int = 0,
    num_shape: int = 10,
    per_bone: int = 3,
    num_vertices: int | None = None,
    pose_blend: bool = True,
    dtype: Any = np.float64,
) -> dict[str, np.ndarray]:
    """A well-formed SMPL-layout model: four vertices around each joint (their mean is the joint:
    the J_regressor rows), more along the bones, skinned to a joint and its parent."""
    rng = np.random.default_rng(seed)
    nj = len(parents)
    offsets = 0.02 * np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    verts, owner = [], []
    for j in range(nj):
        verts += list(rest[j] + offsets)
        owner += [j] * 4
    for j in range(1, nj):
        for _ in range(per_bone):
            t = rng.uniform(0.1, 0.9)
            verts.append(rest[parents[j]] + t * (rest[j] - rest[parents[j]]) + rng.normal(0, 0.01, 3))
            owner.append(j if t > 0.5 else parents[j])
    while num_vertices is not None and len(verts) < num_vertices:
        j = int(rng.integers(0, nj))
        verts.append(rest[j] + rng.normal(0, 0.03, 3))
        owner.append(j)
    nv = len(verts)
    regressor = np.zeros((nj, nv))
    for j in range(nj):
        regressor[j, 4 * j : 4 * j + 4] = 0.25
    weights = np.zeros((nv, nj))
    for i, j in enumerate(owner):
        own = 1.0 if (j == 0 or rng.uniform() < 0.3) else rng.uniform(0.5, 1.0)
        weights[i, j] = own
        if own < 1.0:
            weights[i, parents[j]] = 1.0 - own
    posedirs = rng.normal(0, 0.01, (nv, 3, 9 * (nj - 1))) if pose_blend else np.zeros((nv, 3, 9 * (nj - 1)))
    kintree = np.array([[2**32 - 1] + parents[1:], list(range(nj))], dtype=np.int64)  # as official files
    return {
        "v_template": np.asarray(verts).astype(dtype),
        "shapedirs": rng.normal(0, 0.01, (nv, 3, num_shape)).astype(dtype),
        "posedirs": posedirs.astype(dtype),
        "J_regressor": regressor.astype(dtype),
        "weights": weights.astype(dtype),
        "kintree_table": kintree,
        "f": rng.integers(0, nv, (2 * nv, 3)).astype(np.uint32),
    }


def smpl_arrays(**kw: Any) -> dict[str, np.ndarray]:
    return make_arrays(SMPL_PARENTS, SMPL_REST, **kw)


def random_pose(model: SmplModel, batch: int, seed: int, scale: float = 0.4) -> BodyPose:
    g = torch.Generator().manual_seed(seed)
    kw = {"dtype": model.dtype}
    return BodyPose(
        global_orient=scale * torch.randn(batch, 3, generator=g, **kw),
        body_pose=scale * torch.randn(batch, len(model.pose_joint_names), 3, generator=g, **kw),
        shape=torch.randn(batch, model.num_shape, generator=g, **kw),
        transl=torch.randn(batch, 3, generator=g, **kw),
    )


# ----------------------------------------------------------------------------- independent LBS
def rodrigues_np(r: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.cos(theta) * np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * np.outer(k, k)


def lbs_reference(
    a: dict[str, np.ndarray],
    parents: list[int],
    go: np.ndarray,
    body: np.ndarray,
    betas: np.ndarray,
    transl: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One body, straight from the SMPL paper with 4x4 matrices and a loop over vertices."""
    nj = len(parents)
    v = a["v_template"] + a["shapedirs"][:, :, : len(betas)] @ betas
    joints = a["J_regressor"] @ v
    rots = [rodrigues_np(go)] + [rodrigues_np(r) for r in body]
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    v_posed = v + a["posedirs"] @ feature
    world = []
    for j in range(nj):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0.0)
        world.append(local if j == 0 else world[parents[j]] @ local)
    skin = []
    for j in range(nj):
        unrest = np.eye(4)
        unrest[:3, 3] = -joints[j]
        skin.append(world[j] @ unrest)
    out = np.zeros_like(v)
    for i in range(len(v)):
        t = sum(a["weights"][i, j] * skin[j] for j in range(nj))
        out[i] = (t @ np.append(v_posed[i], 1.0))[:3]
    posed_joints = np.array([m[:3, 3] for m in world])
    return out + transl, posed_joints + transl


# ----------------------------------------------------------------------------- pickles like SMPL's
class _Py2Pickler(pickle._Pickler):  # type: ignore[misc, name-defined]
    """Writes bytes and str as Python 2 ``str`` (BINSTRING), as the official SMPL files were written."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


@pytest.fixture
def fake_chumpy_scipy(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """Modules ``chumpy.ch`` and ``scipy.sparse._csc`` with classes that pickle like the real ones
    (neither library is installed); monkeypatch removes them afterwards."""

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._parents = {}
            self._cache = {"r": None}
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

        def __getstate__(self) -> dict[str, Any]:  # chumpy's: __dict__ less its weak-ref caches
            state = dict(self.__dict__)
            del state["_parents"], state["_cache"]
            return state

    class csc_matrix:  # noqa: N801 - scipy's name
        def __init__(self, dense: np.ndarray) -> None:
            cols = [np.nonzero(dense[:, c])[0] for c in range(dense.shape[1])]
            self.indices = np.concatenate(cols).astype(np.int32)
            self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
            self.data = np.concatenate([dense[c, i] for i, c in enumerate(cols)])
            self._shape = dense.shape
            self.maxprint = 50

    for cls, module in ((Ch, "chumpy.ch"), (csc_matrix, "scipy.sparse._csc")):
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
    names = ("chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse._csc")
    mods = {n: types.ModuleType(n) for n in names}
    mods["chumpy.ch"].Ch = Ch
    mods["scipy.sparse._csc"].csc_matrix = csc_matrix
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return Ch, csc_matrix


def write_pkl(path: Path, obj: Any, style: str) -> Path:
    if style in ("py2", "py2-proto0"):
        import io

        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2 if style == "py2" else 0).dump(obj)
        # numpy 1 / old scipy module names, as in the official files
        data = (
            buf.getvalue()
            .replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            .replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
        )
    else:
        data = pickle.dumps(obj, protocol={"py3-proto2": 2, "py3-proto5": 5}[style])
    path.write_bytes(data)
    return path


def smpl_like_pkl_dict(arrays: dict[str, np.ndarray], ch: type, csc: type) -> dict[str, Any]:
    """What an official SMPL .pkl holds: Ch arrays, a csc J_regressor, strings and extras."""
    d: dict[str, Any] = dict(arrays)
    for key in ("v_template", "shapedirs", "weights"):
        d[key] = ch(arrays[key])
    d["J_regressor"] = csc(arrays["J_regressor"])
    d["J_regressor_prior"] = csc(arrays["J_regressor"])
    d["J"] = arrays["J_regressor"] @ arrays["v_template"]
    d["bs_style"] = "lbs"
    d["bs_type"] = "lrotmin"
    d["num_betas"] = np.int64(10)  # a numpy scalar
    return d


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("style", ["py2", "py2-proto0", "py3-proto2", "py3-proto5"])
def test_npz_and_pkl_load_the_same_model(tmp_path: Path, fake_chumpy_scipy: tuple[type, type], style: str) -> None:
    ch, csc = fake_chumpy_scipy
    arrays = smpl_arrays(seed=1, per_bone=1)
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **arrays)
    write_pkl(tmp_path / "SMPL_NEUTRAL.pkl", smpl_like_pkl_dict(arrays, ch, csc), style)
    for name in ("chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse._csc"):
        sys.modules.pop(name)  # reading must not need them

    raw = safe_load_pickle(tmp_path / "SMPL_NEUTRAL.pkl")
    assert raw["bs_type"] == "lrotmin" and raw["num_betas"] == 10 and isinstance(raw["shapedirs"], np.ndarray)
    np.testing.assert_array_equal(raw["J_regressor"], arrays["J_regressor"])
    np.testing.assert_array_equal(raw["shapedirs"], arrays["shapedirs"])

    a = load_smpl_model(tmp_path / "SMPL_NEUTRAL.npz", dtype=torch.float64)
    b = load_smpl_model(tmp_path / "SMPL_NEUTRAL.pkl", dtype=torch.float64)
    assert a.name == b.name == "smpl" and a.gender == "neutral"
    assert a.keypoint_names == b.keypoint_names and a.pose_joint_names == b.pose_joint_names
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.faces.dtype == np.int64
    pose = random_pose(a, 2, seed=3)
    torch.testing.assert_close(a.vertices(pose), b.vertices(pose), rtol=0, atol=1e-12)


def test_rest_pose_and_shape_blend(tmp_path: Path) -> None:
    arrays = smpl_arrays(seed=2)
    model = SmplModel(arrays, dtype=torch.float64, num_betas=6)
    assert model.num_shape == 6 and len(model.pose_joint_names) == 23
    pose = model.zero_pose(1)
    np.testing.assert_allclose(model.vertices(pose)[0].numpy(), arrays["v_template"], atol=1e-12)
    np.testing.assert_allclose(model.joints(pose)[0].numpy(), SMPL_REST, atol=1e-12)
    betas = torch.randn(1, 6, dtype=torch.float64)
    pose.shape = betas
    expected = arrays["v_template"] + arrays["shapedirs"][:, :, :6] @ betas[0].numpy()
    np.testing.assert_allclose(model.vertices(pose)[0].numpy(), expected, atol=1e-12)


def test_one_joint_rotation_moves_its_subtree_about_the_joint() -> None:
    arrays = smpl_arrays(seed=3, pose_blend=False)
    model = SmplModel(arrays, dtype=torch.float64)
    knee = model.joint_names.index("left_knee")
    subtree = {knee}
    for j, p in enumerate(SMPL_PARENTS):
        if p in subtree:
            subtree.add(j)
    assert subtree == {4, 7, 10}
    rotvec = np.array([0.7, -0.2, 0.3])
    pose = model.zero_pose(1)
    pose.body_pose[0, knee - 1] = torch.as_tensor(rotvec)
    moved = model.vertices(pose)[0].numpy()
    v, centre = arrays["v_template"], SMPL_REST[knee]
    rigid = (v - centre) @ rodrigues_np(rotvec).T + centre
    w_sub = arrays["weights"][:, sorted(subtree)].sum(1, keepdims=True)
    np.testing.assert_allclose(moved, w_sub * rigid + (1 - w_sub) * v, atol=1e-12)
    inside, outside = w_sub[:, 0] == 1, w_sub[:, 0] == 0
    assert inside.sum() >= 8 and outside.sum() >= 50
    np.testing.assert_allclose(moved[inside], rigid[inside], atol=1e-12)
    np.testing.assert_allclose(moved[outside], v[outside], atol=1e-14)


def test_vertices_and_joints_match_reference_lbs() -> None:
    arrays = smpl_arrays(seed=4, num_shape=5)
    model = SmplModel(arrays, dtype=torch.float64, num_betas=5)
    pose = random_pose(model, 2, seed=5, scale=0.6)
    verts, joints = model.vertices(pose), model.joints(pose)
    for b in range(2):
        ref_v, ref_j = lbs_reference(arrays, SMPL_PARENTS, *(t[b].numpy() for t in pose.tensors()))
        np.testing.assert_allclose(verts[b].numpy(), ref_v, atol=1e-10)
        np.testing.assert_allclose(joints[b].numpy(), ref_j, atol=1e-10)


def test_keypoints_pick_from_vertices_and_joints() -> None:
    # SMPL-H layout with the real mesh's vertex count: surface keypoints (face, feet, fingertips) exist.
    parents = hand_family_parents(face=False)
    rng = np.random.default_rng(6)
    arrays = make_arrays(
        parents, hand_family_rest(parents, rng), seed=6, per_bone=1, num_vertices=6890, dtype=np.float32
    )
    model = SmplModel(arrays, dtype=torch.float32, num_betas=4)
    assert model.name == "smplh" and len(model.pose_joint_names) == 51
    assert set(HANDS) <= set(model.keypoint_names) and set(FEET) <= set(model.keypoint_names)
    assert {"nose", "left_ear", "neck", "mid_hip"} <= set(model.keypoint_names)
    pose = random_pose(model, 2, seed=7)
    verts, joints = model.vertices(pose), model.joints(pose)
    surface = {
        "nose": 332,
        "left_eye": 2800,
        "right_ear": 4071,
        "left_heel": 3387,
        "right_big_toe": 6617,
        "left_thumb4": 2746,
        "right_pinky4": 6133,
    }  # smplx vertex_ids 'smplh'
    jn = model.joint_names
    from_joints = {
        "left_shoulder": jn.index("left_shoulder"),
        "right_knee": 5,
        "left_hand_root": 20,
        "right_index1": jn.index("right_index1"),
        "left_thumb3": jn.index("left_thumb3"),
    }
    names = list(surface) + list(from_joints) + ["neck", "mid_hip"]
    got = model.keypoints(pose, names)
    expected = torch.stack(
        [verts[:, v] for v in surface.values()]
        + [joints[:, j] for j in from_joints.values()]
        + [(joints[:, 16] + joints[:, 17]) / 2, (joints[:, 1] + joints[:, 2]) / 2],
        1,
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(model.keypoints(pose, ["left_ankle"]), joints[:, 7:8], rtol=0, atol=1e-6)


def test_other_families_and_unknown_topology(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(8)
    parents = hand_family_parents(face=True)
    arrays = make_arrays(parents, hand_family_rest(parents, rng), seed=8, per_bone=0, num_shape=20)
    with caplog.at_level("INFO"):
        model = SmplModel(arrays, num_betas=16)
    assert model.name == "smplx" and len(model.pose_joint_names) == 54
    assert model.pose_joint_names[21:24] == ("jaw", "left_eye_smplhf", "right_eye_smplhf")
    assert model.num_shape == 10  # 20 columns = 10 shape + 10 expression
    assert "nose" not in model.keypoint_names and "left_index4" not in model.keypoint_names
    assert "left_index3" in model.keypoint_names and "left_hip" in model.keypoint_names
    assert "surface keypoints" in caplog.text
    smpl = SmplModel(smpl_arrays(seed=9))
    assert not any(n.endswith("hand_root") for n in smpl.keypoint_names)
    assert smpl.pose_joint_names[-2:] == ("left_hand", "right_hand")
    with pytest.raises(ValueError, match="cannot produce"):
        smpl.keypoints(smpl.zero_pose(1), ["nose"])


def test_gradients_gradcheck() -> None:
    arrays = smpl_arrays(seed=10, per_bone=0, num_shape=3)
    model = SmplModel(arrays, dtype=torch.float64, num_betas=3)
    pose = random_pose(model, 1, seed=11)
    names = ("left_wrist", "neck", "right_ankle")

    def run(go: torch.Tensor, body: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        p = BodyPose(go, body, shape, transl)
        return torch.cat([model.vertices(p).reshape(-1), model.keypoints(p, names).reshape(-1)])

    def keypoints(go: torch.Tensor, body: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        return model.keypoints(BodyPose(go, body, shape, transl), names)

    inputs = tuple(t.clone().requires_grad_(True) for t in pose.tensors())
    assert torch.autograd.gradcheck(keypoints, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    zero = tuple(t.clone().requires_grad_(True) for t in model.zero_pose(1).tensors())
    run(*zero).sum().backward()  # the rest pose (zero rotation) has finite gradients too
    assert all(torch.isfinite(t.grad).all() for t in zero)


# ----------------------------------------------------------------------------- priors
def write_gmm(path: Path, m: int = 3, dim: int = 69, seed: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.3, (m, dim, dim))
    gmm = {
        "means": rng.normal(0, 0.3, (m, dim)),
        "covars": a @ a.transpose(0, 2, 1) / dim + 0.05 * np.eye(dim),
        "weights": np.array([0.5, 0.3, 0.2])[:m],
    }
    if path.suffix == ".pkl":
        write_pkl(path, gmm, "py2")
    else:
        np.savez(path, **gmm)
    return gmm


def nll_reference(gmm: dict[str, np.ndarray], x: np.ndarray) -> float:
    d = len(x)
    best = np.inf
    logdets = [np.linalg.slogdet(c[:d, :d])[1] for c in gmm["covars"]]
    for mean, cov, w, logdet in zip(gmm["means"], gmm["covars"], gmm["weights"], logdets, strict=True):
        diff = x - mean[:d]
        maha = diff @ np.linalg.solve(cov[:d, :d], diff)
        best = min(best, 0.5 * maha - np.log(w) + 0.5 * d * np.log(2 * np.pi) + 0.5 * (logdet - min(logdets)))
    return best


def test_gmm_pose_prior(tmp_path: Path) -> None:
    arrays = smpl_arrays(seed=13, per_bone=0)
    np.savez(tmp_path / "smpl.npz", **arrays)
    assert load_smpl_model(tmp_path / "smpl.npz").pose_prior(torch.zeros(1, 23, 3)) is None
    gmm = write_gmm(tmp_path / "gmm_08.pkl")
    model = load_smpl_model(tmp_path / "smpl.npz", dtype=torch.float64, pose_prior_path=tmp_path / "gmm_08.pkl")
    rng = np.random.default_rng(14)
    for k in range(3):
        mean = torch.as_tensor(gmm["means"][k]).reshape(1, 23, 3)
        nearby = mean + 0.05 * torch.as_tensor(rng.normal(size=(8, 23, 3)))
        at_mean, around = model.pose_prior(mean), model.pose_prior(nearby)
        assert torch.all(at_mean < around)
        np.testing.assert_allclose(at_mean.item(), nll_reference(gmm, gmm["means"][k]), rtol=1e-10)
    x = rng.normal(0, 0.3, 69)
    np.testing.assert_allclose(
        model.pose_prior(torch.as_tensor(x).reshape(1, 23, 3)).item(), nll_reference(gmm, x), rtol=1e-10
    )
    body = torch.zeros(1, 23, 3, dtype=torch.float64, requires_grad=True)
    model.pose_prior(body).sum().backward()
    assert torch.isfinite(body.grad).all() and body.grad.abs().sum() > 0

    # SMPL-H / SMPL-X: the first 21 joints, under the mixture's marginal
    parents = hand_family_parents(face=False)
    np.savez(tmp_path / "smplh.npz", **make_arrays(parents, hand_family_rest(parents, rng), per_bone=0))
    write_gmm(tmp_path / "gmm.npz", seed=12)
    hmodel = load_smpl_model(tmp_path / "smplh.npz", dtype=torch.float64, pose_prior_path=tmp_path / "gmm.npz")
    body = torch.as_tensor(rng.normal(0, 0.3, (1, 51, 3)))
    np.testing.assert_allclose(
        hmodel.pose_prior(body).item(), nll_reference(gmm, body[0, :21].reshape(-1).numpy()), rtol=1e-10
    )


def test_bend_limits_match_the_geometry() -> None:
    """SMPLify's natural bends (penalty exp(-sign * angle) smaller) swing the shins backwards (-z)
    and the forearms forwards (+z) in SMPL's frame, which faces +z."""
    model = SmplModel(smpl_arrays(seed=15, pose_blend=False), dtype=torch.float64)
    limits = {lim.joint: lim for lim in model.bend_limits}
    assert set(limits) == {"left_elbow", "right_elbow", "left_knee", "right_knee"}
    for joint, child, forward in (
        ("left_knee", "left_ankle", -1),
        ("right_knee", "right_ankle", -1),
        ("left_elbow", "left_wrist", 1),
        ("right_elbow", "right_wrist", 1),
    ):
        lim = limits[joint]
        natural, hyper = model.zero_pose(1), model.zero_pose(1)
        natural.body_pose[0, model.joint_index(joint), lim.axis] = 0.8 * lim.sign
        hyper.body_pose[0, model.joint_index(joint), lim.axis] = -0.8 * lim.sign
        cost = [
            torch.exp(-lim.sign * p.body_pose[0, model.joint_index(joint), lim.axis]).item() for p in (natural, hyper)
        ]
        assert cost[0] < cost[1]
        c = model.joint_names.index(child)
        rest_z = model.joints(model.zero_pose(1))[0, c, 2]
        assert forward * (model.joints(natural)[0, c, 2] - rest_z) > 0.05, joint
        assert forward * (model.joints(hyper)[0, c, 2] - rest_z) < -0.05, joint


# ----------------------------------------------------------------------------- refusals and errors
class _Evil:
    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickles_are_refused(tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "MARKER"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "builtins.eval": _Evil(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Evil(subprocess.Popen, ["touch", str(marker)]),
    }[attack]
    refused = {"os.system": f"{os.system.__module__}.system"}.get(attack, attack)  # posix.system on Linux
    path = tmp_path / "SMPL_MALE.pkl"
    arrays = smpl_arrays(seed=16, per_bone=0)
    path.write_bytes(pickle.dumps({**arrays, "v_template": payload}, protocol=2 if attack == "os.system" else 4))
    for load in (safe_load_pickle, load_smpl_model):
        with pytest.raises(BodyModelError) as err:
            load(path)
        msg = str(err.value)
        assert f"'{refused}'" in msg and str(path) in msg and "\n" not in msg and "refused" in msg
        assert isinstance(err.value, Capture3dError)
    assert not marker.exists()


def test_crafted_pickles_are_refused(tmp_path: Path) -> None:
    cases = {
        # copy_reg._reconstructor is only for the stand-ins
        b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR.": "copyreg._reconstructor",
        # chumpy expressions are not evaluated
        b"(dp0\nS'x'\ncchumpy.reordering\nSelect\n)\x81s.": "chumpy.reordering.Select",
        b"cposix\nsystem\n(S'true'\ntR.": "posix.system",
        b"\x80\x02]q\x00.": "not a dict",
        b"\x80\x02}q\x00(X\x01": "not a readable pickle",
    }
    for i, (data, expected) in enumerate(cases.items()):
        path = tmp_path / f"m{i}.pkl"
        path.write_bytes(data)
        with pytest.raises(BodyModelError, match=expected.replace(".", r"\.")) as err:
            safe_load_pickle(path)
        assert "\n" not in str(err.value)


def test_file_errors(tmp_path: Path) -> None:
    arrays = smpl_arrays(seed=17, per_bone=0)
    with pytest.raises(BodyModelError, match="does not exist"):
        load_smpl_model(tmp_path / "absent.npz")
    with pytest.raises(BodyModelError, match="does not exist"):
        safe_load_pickle(tmp_path / "absent.pkl")
    (tmp_path / "model.obj").write_text("v 0 0 0\n")
    with pytest.raises(BodyModelError, match="unsupported extension"):
        load_smpl_model(tmp_path / "model.obj")
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in arrays.items() if k != "posedirs"})
    with pytest.raises(BodyModelError, match="lacks 'posedirs'"):
        load_smpl_model(tmp_path / "nokey.npz")
    write_pkl(tmp_path / "nokey.pkl", {k: v for k, v in arrays.items() if k != "weights"}, "py2")
    with pytest.raises(BodyModelError, match="lacks 'weights'"):
        load_smpl_model(tmp_path / "nokey.pkl")
    np.savez(tmp_path / "bad.npz", **{**arrays, "weights": arrays["weights"][:, :20]})
    with pytest.raises(BodyModelError, match="inconsistent shapes: weights"):
        load_smpl_model(tmp_path / "bad.npz")
    cut = {**arrays, "kintree_table": arrays["kintree_table"][:, :20], "J_regressor": arrays["J_regressor"][:20]}
    np.savez(tmp_path / "joints.npz", **cut)
    with pytest.raises(BodyModelError, match="20 joints"):
        load_smpl_model(tmp_path / "joints.npz")
    np.savez(tmp_path / "objects.npz", **{**arrays, "f": np.array([None, 1], dtype=object)})
    with pytest.raises(BodyModelError, match="pickled objects"):
        load_smpl_model(tmp_path / "objects.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(BodyModelError, match="not a readable"):
        load_smpl_model(tmp_path / "broken.npz")
    np.savez(tmp_path / "model.npz", **arrays)
    with pytest.raises(BodyModelError, match="pose prior file .*does not exist"):
        load_smpl_model(tmp_path / "model.npz", pose_prior_path=tmp_path / "gmm_08.pkl")
    np.savez(tmp_path / "gmm.npz", means=np.zeros((2, 69)), covars=np.zeros((2, 69, 69)), weights=np.ones(2))
    with pytest.raises(BodyModelError, match="not positive definite"):
        load_smpl_model(tmp_path / "model.npz", pose_prior_path=tmp_path / "gmm.npz")
    assert load_smpl_model(tmp_path / "model.npz").gender == "neutral"
    np.savez(tmp_path / "basicModel_f_lbs_10_207_0_v1.0.0.npz", **arrays)
    assert load_smpl_model(tmp_path / "basicModel_f_lbs_10_207_0_v1.0.0.npz").gender == "female"
