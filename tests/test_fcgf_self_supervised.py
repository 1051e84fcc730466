"""Self-supervised pairs from one scan: the known motion gives exactly the correspondences of the
source geometry, they lie inside the controlled overlap, the two views are resampled independently,
and a seed repeats a pair; train_fcgf mixes them in from ``--unlabeled`` folders, leaving held-out
files out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capture3d import stage_cli
from capture3d.stages import train_fcgf as stage
from capture3d.tasks.fcgf.loss import correspondences
from capture3d.tasks.fcgf.self_supervised import SelfSupervisedConfig, make_pair


def _surface(n: int = 6000, seed: int = 0) -> np.ndarray:
    """(n, 3) points of a wavy 2 x 1.5 m surface with a box on it (not symmetric)."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2.0, n), rng.uniform(0, 1.5, n)
    z = 0.15 * np.sin(3 * u) * np.cos(2 * v) + 0.3 * ((u > 1.2) & (u < 1.6) & (v > 0.3) & (v < 0.8))
    return np.stack([u, v, z], 1)


def _config(**kw: object) -> SelfSupervisedConfig:
    base = dict(
        min_overlap=0.3,
        max_overlap=0.7,
        crop_mode="slab",
        rotation_deg=180.0,
        translation_factor=0.5,
        resample_factor=0.5,
        noise_factor=0.0,
        max_dropout=0.0,
        voxel_jitter=0.0,
    )
    base.update(kw)
    return SelfSupervisedConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["slab", "ball"])
def test_known_motion_gives_exactly_the_source_correspondences(mode: str) -> None:
    src = _surface()
    voxel = 0.05
    for seed in range(3):
        pair = make_pair(src, voxel, _config(crop_mode=mode), seed)
        # every view point is a moved copy of its source point: T maps view 0 onto view 1 exactly
        shared, i0, i1 = np.intersect1d(pair.index0, pair.index1, return_indices=True)
        assert len(shared) > 0
        moved = pair.points0[i0] @ pair.T_1_from_0[:3, :3].T + pair.T_1_from_0[:3, 3]
        np.testing.assert_allclose(moved, pair.points1[i1], atol=1e-9)
        # matches under T are exactly the matches of the source points (identity, source frame)
        r = 1.5 * voxel
        by_motion = correspondences(pair.points0, pair.points1, pair.T_1_from_0, r)
        by_source = correspondences(src[pair.index0], src[pair.index1], np.eye(4), r)
        assert torch.equal(by_motion, by_source)
        # the views moved independently (the motion is far from the identity)
        assert np.linalg.norm(pair.T_1_from_0 - np.eye(4)) > 0.1


def test_matches_lie_inside_the_controlled_overlap() -> None:
    src = _surface(seed=1)
    voxel = 0.05
    measured = []
    for seed in range(8):
        pair = make_pair(src, voxel, _config(), seed)
        assert 0.3 <= pair.target_overlap <= 0.7
        # slab crops: view 0 keeps the lower f of the points along some direction, view 1 the upper f;
        # a view-0 point with a match must be (within the match radius) in view 1's part of the source
        pos = correspondences(pair.points0, pair.points1, pair.T_1_from_0, 1.5 * voxel).numpy()
        matched = np.unique(pos[:, 0])
        in_view1 = np.isin(pair.index0[matched], pair.index1)
        near = correspondences(src[pair.index0[matched]], src[np.unique(pair.index1)], np.eye(4), 1.5 * voxel)
        assert in_view1.mean() < 1.0  # resampled independently: matches are mostly different points ...
        assert len(np.unique(near[:, 0].numpy())) == len(matched)  # ... but all inside view 1's region
        frac = len(matched) / len(pair.points0)
        assert abs(frac - pair.overlap) < 1e-9
        measured.append(pair.overlap)
    # overlap follows the drawn target (resampling and the 1.5-voxel radius add a little)
    targets = [make_pair(src, voxel, _config(), s).target_overlap for s in range(8)]
    assert np.corrcoef(targets, measured)[0, 1] > 0.8
    assert all(t - 0.05 <= m <= t + 0.2 for t, m in zip(targets, measured)), (targets, measured)


def test_seeded_and_degraded() -> None:
    src = _surface(seed=2)
    cfg = _config(crop_mode="mixed", noise_factor=0.1, max_dropout=0.3, voxel_jitter=0.25)
    a, b = make_pair(src, 0.05, cfg, 7), make_pair(src, 0.05, cfg, 7)
    np.testing.assert_array_equal(a.points0, b.points0)
    np.testing.assert_array_equal(a.T_1_from_0, b.T_1_from_0)
    c = make_pair(src, 0.05, cfg, 8)
    assert not np.array_equal(a.index0, c.index0)
    assert 0.05 / 1.25 <= a.voxel <= 0.05 * 1.25
    # noise: shared source points no longer map exactly, but within a few noise sigmas
    shared, i0, i1 = np.intersect1d(a.index0, a.index1, return_indices=True)
    moved = a.points0[i0] @ a.T_1_from_0[:3, :3].T + a.T_1_from_0[:3, 3]
    err = np.linalg.norm(moved - a.points1[i1], axis=1)
    assert 0 < np.median(err) < 6 * 0.1 * a.voxel
    with pytest.raises(ValueError, match="need >= 128"):
        make_pair(src[:100], 0.05, cfg, 0)


def test_unlabeled_flag_takes_several_folders() -> None:
    parser = stage_cli.build_parser(stage)
    args = parser.parse_args(["--out", "x", "--unlabeled", "a", "b", "--unlabeled", "c"])
    overrides = stage_cli.overrides(stage, stage_cli.step_of(stage), args)
    assert 'train_fcgf.data.unlabeled=["a", "b", "c"]' in overrides


def test_stage_trains_on_unlabeled_scans_and_leaves_held_out_files_out(base_params: dict, tmp_path: Path) -> None:
    folder = tmp_path / "frags"
    folder.mkdir()
    for i, name in enumerate(["keep_a", "keep_b", "eval_c", "flag_d"]):
        np.save(folder / f"{name}.npy", _surface(3000, seed=i))
    (folder / "fragments.json").write_text(
        json.dumps(
            {
                "fragments": [
                    {"name": "keep_a", "file": "keep_a.npy", "group": "g1", "flags": []},
                    {"name": "keep_b", "file": "keep_b.npy", "group": None, "flags": []},
                    {"name": "eval_c", "file": "eval_c.npy", "group": "held", "flags": []},
                    {"name": "flag_d", "file": "flag_d.npy", "group": "g2", "flags": ["same_scene_as_eval_pair"]},
                ]
            }
        )
    )
    params = dict(base_params)
    section = json.loads(json.dumps(params["train_fcgf"]))
    section["data"].update(
        synthetic_seeds=[],
        validation_seeds=[],
        unlabeled=[str(folder)],
        exclude_groups=["held"],
        auto_target_points=800,
        unlabeled_val_pairs=2,
    )
    section.update(iterations=2, checkpoint_every=1, val_every=2, device="cpu", store_dtype="float16")
    params["train_fcgf"] = section
    out = stage.run(stage.Inputs(), tmp_path / "fcgf", stage.load_config(params))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unlabeled_scans"] == ["frags/keep_a", "frags/keep_b"]
    assert set(metrics["held_out_scans"]) == {"frags/eval_c.npy", "frags/flag_d.npy"}
    assert metrics["sources"] == ["unlabeled"] and metrics["iterations"] == 2 and metrics["num_val_pairs"] == 2
    assert (out / "model.pt").stat().st_size < 0.6 * (out / "model_float32.pt").stat().st_size
