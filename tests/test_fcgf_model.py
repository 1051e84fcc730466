"""Tests for the FCGF network (capture3d.tasks.fcgf.model) and its loss (capture3d.tasks.fcgf.loss)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from capture3d.tasks.fcgf.loss import (
    correspondences,
    feature_match_recall,
    hardest_contrastive_loss,
    point_info_nce_loss,
)
from capture3d.tasks.fcgf.model import ResUNetBN2C, extract_features, voxelize_for_fcgf

VOXEL = 0.1


def _cloud(seed: int, n: int = 400) -> np.ndarray:
    """(n, 3) points in [-0.6, 0.6]^3: ~330 voxels at 0.1, 8 voxels at stride 8 (straddles 0)."""
    return np.random.default_rng(seed).uniform(-0.6, 0.6, (n, 3))


def _rigid(angle_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = t
    return T


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny ops: one intra-op thread avoids oversubscription on busy CI machines; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> ResUNetBN2C:
    torch.manual_seed(0)
    return ResUNetBN2C()


def test_forward_backward_and_names(model: ResUNetBN2C) -> None:
    pts = _cloud(0)
    x, inverse = voxelize_for_fcgf(pts, VOXEL)
    assert 200 < x.coords.shape[0] < 600
    assert inverse.shape == (pts.shape[0],)
    model.train()
    model.zero_grad()
    y = model(x)
    assert y.features.shape == (x.coords.shape[0], 32)
    assert torch.equal(y.coords, x.coords) and y.stride == 1
    norms = y.features.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    (y.features * torch.randn_like(y.features)).sum().backward()
    names = dict(model.named_parameters())
    assert "conv1.weight" in names and "final.weight" in names and "final.bias" in names
    for n in (
        "norm1.bn.weight",
        "block1.conv1.weight",
        "conv4_tr.weight",
        "block2_tr.norm2.bn.bias",
        "conv1_tr.weight",
    ):
        assert n in names, n
    assert model.conv1.weight.shape == (125, 1, 32)
    assert model.final.weight.shape == (1, model.TR_CHANNELS[1], 32)
    missing = [n for n, p in names.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_extract_features_per_point_and_deterministic(model: ResUNetBN2C) -> None:
    pts = _cloud(1)
    model.train()
    f_a = extract_features(model, pts, VOXEL, "cpu")
    assert model.training  # mode restored
    f_b = extract_features(model, torch.from_numpy(pts), VOXEL)
    assert f_a.shape == (pts.shape[0], 32) and f_a.dtype == np.float32
    np.testing.assert_array_equal(f_a, f_b)
    np.testing.assert_allclose(np.linalg.norm(f_a, axis=1), 1.0, atol=1e-5)
    # Points in the same voxel share a descriptor.
    grid = np.floor(pts / VOXEL).astype(np.int64)
    dup = np.nonzero((grid[:, None, :] == grid[None, :, :]).all(-1) & ~np.eye(len(pts), dtype=bool))
    if dup[0].size:
        np.testing.assert_array_equal(f_a[dup[0][0]], f_a[dup[1][0]])


def test_extract_features_rejects_bad_clouds(model: ResUNetBN2C) -> None:
    pts = _cloud(2)
    pts[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        extract_features(model, pts, VOXEL)
    tiny = np.random.default_rng(3).uniform(0.0, 0.3, (50, 3))  # a single coarse voxel
    with pytest.raises(ValueError, match="too small"):
        extract_features(model, tiny, VOXEL)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_loss_zero_when_positives_match_and_negatives_far() -> None:
    # Orthogonal one-hot features: positives identical, negatives at distance sqrt(2) > 1.4.
    f = torch.eye(8)
    pairs = torch.stack([torch.arange(8), torch.arange(8)], 1)
    loss, pos, neg = hardest_contrastive_loss(f, f.clone(), pairs, generator=torch.Generator().manual_seed(0))
    assert float(pos) == pytest.approx(0.0, abs=1e-8)
    assert float(neg) == pytest.approx(0.0, abs=1e-8)
    assert float(loss) == pytest.approx(0.0, abs=1e-8)


def test_positive_loss_grows_with_separation() -> None:
    g = torch.Generator().manual_seed(0)
    f0 = _unit(torch.randn(64, 16, generator=g))
    pairs = torch.stack([torch.arange(64), torch.arange(64)], 1)
    noise = torch.randn(64, 16, generator=g)
    values = []
    for s in (0.0, 0.1, 0.3, 0.6):
        f1 = _unit(f0 + s * noise)
        _, pos, _ = hardest_contrastive_loss(f0, f1, pairs, generator=torch.Generator().manual_seed(1))
        values.append(float(pos))
    assert values[0] == pytest.approx(0.0, abs=1e-8)
    assert values[1] < values[2] < values[3]
    # Single pair at distance d: relu(d - 0.1)^2.
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    _, pos, _ = hardest_contrastive_loss(a, b, torch.tensor([[0, 0]]))
    assert float(pos) == pytest.approx((2**0.5 - 0.1) ** 2, rel=1e-5)


def test_hardest_negative_hand_made() -> None:
    # One positive pair (0, 0) at distance 0; f1[0] (the positive) is excluded, f1[2] is the
    # closest non-corresponding point to f0[0] (distance 0.5), f1[1] is far.
    f0 = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    f1 = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 0.5]])
    pairs = torch.tensor([[0, 0]])
    loss, pos, neg = hardest_contrastive_loss(f0, f1, pairs, neg_thresh=1.4)
    neg0 = (1.4 - 0.5) ** 2  # anchor f0[0] vs f1[2]
    neg1 = 0.0  # anchor f1[0] vs f0[1] at distance ~14.1
    assert float(pos) == pytest.approx(0.0, abs=1e-8)
    assert float(neg) == pytest.approx((neg0 + neg1) / 2, rel=1e-5)
    assert float(loss) == pytest.approx((neg0 + neg1) / 2, rel=1e-5)
    # Pairs can exclude several candidates: with (0, 2) also positive, f1[1] (distance 3) is hardest.
    pairs2 = torch.tensor([[0, 0], [0, 2]])
    _, _, neg2 = hardest_contrastive_loss(f0, f1, pairs2, num_pos=1, generator=torch.Generator().manual_seed(0))
    assert float(neg2) == pytest.approx(0.0, abs=1e-8)


def test_loss_gradient_flows() -> None:
    g = torch.Generator().manual_seed(0)
    f0 = torch.randn(40, 8, generator=g, requires_grad=True)
    f1 = torch.randn(40, 8, generator=g, requires_grad=True)
    pairs = torch.stack([torch.arange(40), torch.arange(40)], 1)
    loss, _, _ = hardest_contrastive_loss(_unit(f0), _unit(f1), pairs, num_pos=32, num_hn_samples=16, generator=g)
    loss.backward()
    for t in (f0, f1):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_point_info_nce_hand_made() -> None:
    """Two matches far apart: the loss is the softmax cross-entropy of the 2x2 similarity matrix;
    when the second match is a spatial neighbour of the first it is masked and the loss is 0."""
    f0 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    f1 = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    pairs = torch.tensor([[0, 0], [1, 1]])
    far = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    tau = 0.5
    sim = (f0 @ f1.T / tau).double()  # (2, 2)
    rows = -torch.log_softmax(sim, 1).diagonal().mean()
    cols = -torch.log_softmax(sim, 0).diagonal().mean()
    loss = point_info_nce_loss(f0, f1, pairs, far, far, safe_radius=1.0, temperature=tau)
    assert float(loss) == pytest.approx(float(0.5 * (rows + cols)), rel=1e-5)
    near = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=torch.float64)
    masked = point_info_nce_loss(f0, f1, pairs, near, far, safe_radius=1.0, temperature=tau)
    assert float(masked) == pytest.approx(0.0, abs=1e-7)


def test_point_info_nce_prefers_matching_descriptors_and_has_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    f0 = torch.randn(64, 16, generator=g, requires_grad=True)
    pairs = torch.stack([torch.arange(64), torch.arange(64)], 1)
    pos = torch.randn(64, 3, generator=g, dtype=torch.float64) * 10
    noise = torch.randn(64, 16, generator=g)
    with torch.no_grad():
        values = [
            float(point_info_nce_loss(_unit(f0), _unit(f0 + s * noise), pairs, pos, pos, 0.1)) for s in (0.0, 0.5, 3.0)
        ]
    assert values[0] < values[1] < values[2], values
    loss = point_info_nce_loss(_unit(f0), _unit(f0.detach() + noise), pairs, pos, pos, 0.1, num_pos=32, generator=g)
    loss.backward()
    assert f0.grad is not None and torch.isfinite(f0.grad).all() and f0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        point_info_nce_loss(f0, f0, pairs, pos, pos, 0.1, temperature=0.0)


def test_correspondences_rigid_copy() -> None:
    p0 = _cloud(4, 200)
    T = _rigid(30.0, (0.5, -0.2, 0.1))
    p1 = p0 @ T[:3, :3].T + T[:3, 3]
    pairs = correspondences(p0, p1, T, radius=1e-6)
    assert pairs.dtype == torch.int64
    assert torch.equal(pairs, torch.stack([torch.arange(200), torch.arange(200)], 1))
    wide = correspondences(p0, p1, T, radius=0.2)
    assert wide.shape[0] > 200
    d = np.linalg.norm(p0[wide[:, 0]] @ T[:3, :3].T + T[:3, 3] - p1[wide[:, 1]], axis=1)
    assert (d <= 0.2 + 1e-9).all()


def test_loss_training_sanity() -> None:
    """30 Adam steps on free unit descriptors of a cloud and its rigid copy reduce the loss."""
    p0 = _cloud(5, 300)
    T = _rigid(20.0, (0.3, -0.2, 0.1))
    p1 = p0 @ T[:3, :3].T + T[:3, 3]
    pairs = correspondences(p0, p1, T, radius=1e-6)
    torch.manual_seed(0)
    raw0 = torch.nn.Parameter(torch.randn(300, 32) * 0.1 + 1.0)  # clustered: hard negatives
    raw1 = torch.nn.Parameter(torch.randn(300, 32) * 0.1 + 1.0)
    opt = torch.optim.Adam([raw0, raw1], lr=0.05)

    def evaluate() -> float:
        with torch.no_grad():
            loss, _, _ = hardest_contrastive_loss(
                _unit(raw0), _unit(raw1), pairs, 128, 128, generator=torch.Generator().manual_seed(0)
            )
        return float(loss)

    initial = evaluate()
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        loss, _, _ = hardest_contrastive_loss(_unit(raw0), _unit(raw1), pairs, 128, 128, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.7 * initial


def test_feature_match_recall_identical_features() -> None:
    p0 = _cloud(6, 300)
    T = _rigid(45.0, (1.0, 0.0, -0.5))
    p1 = p0 @ T[:3, :3].T + T[:3, 3]
    f = np.random.default_rng(7).normal(size=(300, 32)).astype(np.float32)
    for mutual in (False, True):
        flag, frac = feature_match_recall(f, f.copy(), p0, p1, T, mutual=mutual)
        assert flag is True and frac == pytest.approx(1.0)
    flag, frac = feature_match_recall(f, np.roll(f, 1, axis=0), p0, p1, T)
    assert flag is False and frac < 0.05
