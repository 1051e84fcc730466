"""FCGF's hardest-contrastive loss, ground-truth correspondences and feature-match recall.

Inputs: per-point (or per-voxel) descriptors f0 (N0, D), f1 (N1, D) of two clouds, the clouds'
points (N0, 3), (N1, 3), the ground-truth rigid transform ``T_1_from_0`` (4, 4) and positive pairs
(P, 2) int64 ``[i0, i1]``. Outputs: the loss and its positive / negative terms (scalars with
autograd), the positive pairs themselves (:func:`correspondences`), and the 3DMatch feature-match
recall flag with its inlier fraction (:func:`feature_match_recall`).

Loss (Choy, Park, Koltun, ICCV 2019, Eq. 4; ``HardestContrastiveLossTrainer`` in the FCGF
repository's ``lib/trainer.py``)::

    pos  = mean_over_sampled_pairs relu(||f0_i - f1_j|| - pos_thresh)^2
    neg0 = mean_i relu(neg_thresh - min_{k in S1, (i,k) not positive} ||f0_i - f1_k||)^2
    neg1 = mean_j relu(neg_thresh - min_{k in S0, (k,j) not positive} ||f1_j - f0_k||)^2
    loss = pos_weight * pos + neg_weight * (neg0 + neg1) / 2

with up to ``num_pos`` positive pairs drawn at random and S0 / S1 random subsets of
``num_hn_samples`` rows of each cloud as negative candidates. Two deliberate differences from the
FCGF code, both following the paper: the positive term is the squared hinge on the distance
(FCGF's code hinges the *squared* distance: ``relu(||f0 - f1||^2 - pos_thresh)``), and true
correspondences are excluded from the candidates *before* taking the minimum (FCGF takes the
minimum first and then drops anchors whose hardest negative is a positive). Anchors with no
admissible candidate are dropped; an empty term contributes 0.

PointInfoNCE (:func:`point_info_nce_loss`; Xie et al., "PointContrast", ECCV 2020, Eq. 1), the
default training objective (measured faster to learn on the synthetic scans, README): up to
``num_pos`` sampled positive pairs ``(i_k, j_k)`` form a (P, P)
similarity matrix ``f0_i . f1_j / temperature`` whose diagonal holds the matches; the loss is the
cross-entropy of each row (and, symmetrically, each column) towards its diagonal entry. Unlike the
hardest negative, every other match in the sample pushes back, so the descriptors spread out
from the first iterations. Off-diagonal entries whose two targets (or two sources) lie within
``safe_radius`` of each other are masked out: they are spatial neighbours, not negatives.
"""

from __future__ import annotations

import logging

import numpy as np
import open3d as o3d
import torch

logger = logging.getLogger(__name__)

_CHUNK = 2048  # rows per block of pairwise distances


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Euclidean distances (A, D), (B, D) -> (A, B), with a finite gradient at zero distance."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)  # (A, B)
    return sq.clamp(min=eps).sqrt()


def _sample(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k distinct indices of range(n) (all of them, in order, when k >= n); (min(n, k),) int64."""
    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:k]


def _checked_pairs(f0: torch.Tensor, f1: torch.Tensor, positive_pairs: torch.Tensor) -> torch.Tensor:
    """positive_pairs as a (P, 2) CPU int64 tensor; ValueError unless f0 (N0, D), f1 (N1, D) and the
    pairs are non-empty and index inside them."""
    if f0.ndim != 2 or f1.ndim != 2 or f0.shape[1] != f1.shape[1]:
        raise ValueError(f"f0, f1 must be (N0, D), (N1, D); got {tuple(f0.shape)}, {tuple(f1.shape)}")
    pairs = _as_tensor(positive_pairs, torch.int64).cpu()
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"positive_pairs must be non-empty (P, 2), got {tuple(pairs.shape)}")
    n0, n1 = int(f0.shape[0]), int(f1.shape[0])
    if bool(
        (pairs[:, 0] < 0).any() or (pairs[:, 0] >= n0).any() or (pairs[:, 1] < 0).any() or (pairs[:, 1] >= n1).any()
    ):
        raise ValueError("positive_pairs index outside f0 / f1")
    return pairs


def hardest_contrastive_loss(
    f0: torch.Tensor,
    f1: torch.Tensor,
    positive_pairs: torch.Tensor,
    num_pos: int = 1024,
    num_hn_samples: int = 512,
    pos_thresh: float = 0.1,
    neg_thresh: float = 1.4,
    generator: torch.Generator | None = None,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    excluded_pairs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCGF hardest-contrastive loss; returns (loss, pos_loss, neg_loss) scalar tensors.

    f0 (N0, D), f1 (N1, D) float descriptors; positive_pairs (P, 2) int64 rows ``[i0, i1]``.
    ``generator`` (a CPU torch.Generator) drives the sampling of positives and candidates; the
    result is deterministic for a seeded generator. ``excluded_pairs`` (E, 2), when given, replaces
    the positives as the pairs that may not serve as negatives -- e.g. every pair within a "safe
    radius" larger than the positive radius (D3Feat / PREDATOR), so that spatial neighbours of the
    true match are not pushed apart. Raises ValueError on empty / malformed input.
    """
    pairs = _checked_pairs(f0, f1, positive_pairs)  # (P, 2) CPU int64
    n0, n1 = int(f0.shape[0]), int(f1.shape[0])
    dev = f0.device

    sel_pos = _sample(pairs.shape[0], num_pos, generator)
    sample = pairs[sel_pos]  # (Ps, 2)
    sel0 = _sample(n0, num_hn_samples, generator)  # (S0,)
    sel1 = _sample(n1, num_hn_samples, generator)  # (S1,)
    excl = pairs if excluded_pairs is None else _as_tensor(excluded_pairs, torch.int64).cpu()
    pos_keys = excl[:, 0] * n1 + excl[:, 1]  # (E,) one key per pair that may not be a negative
    anchors0, anchors1 = sample[:, 0], sample[:, 1]  # (Ps,), (Ps,)

    pos_f0 = f0[anchors0.to(dev)]  # (Ps, D)
    pos_f1 = f1[anchors1.to(dev)]  # (Ps, D)
    pos_d = ((pos_f0 - pos_f1).pow(2).sum(1).clamp(min=1e-12)).sqrt()  # (Ps,)
    pos_loss = torch.relu(pos_d - pos_thresh).pow(2).mean()

    # Anchor f0_i against candidates f1_k (k in S1), excluding (i, k) positive.
    d01 = pairwise_distances(pos_f0, f1[sel1.to(dev)])  # (Ps, S1)
    excl01 = torch.isin(anchors0[:, None] * n1 + sel1[None, :], pos_keys)  # (Ps, S1)
    # Anchor f1_j against candidates f0_k (k in S0), excluding (k, j) positive.
    d10 = pairwise_distances(pos_f1, f0[sel0.to(dev)])  # (Ps, S0)
    excl10 = torch.isin(sel0[None, :] * n1 + anchors1[:, None], pos_keys)  # (Ps, S0)

    neg_terms = []
    for d, excl in ((d01, excl01), (d10, excl10)):
        excl = excl.to(dev)
        d = d.masked_fill(excl, float("inf"))
        ok = ~excl.all(dim=1)  # (Ps,) anchors with an admissible candidate
        if bool(ok.any()):
            dmin = d[ok].min(dim=1).values  # (Ps_ok,)
            neg_terms.append(torch.relu(neg_thresh - dmin).pow(2).mean())
        else:
            neg_terms.append(f0.sum() * 0.0)
    neg_loss = (neg_terms[0] + neg_terms[1]) / 2
    loss = pos_weight * pos_loss + neg_weight * neg_loss
    return loss, pos_loss, neg_loss


def point_info_nce_loss(
    f0: torch.Tensor,
    f1: torch.Tensor,
    positive_pairs: torch.Tensor,
    positions0: torch.Tensor,
    positions1: torch.Tensor,
    safe_radius: float,
    num_pos: int = 1024,
    temperature: float = 0.07,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Symmetric PointInfoNCE over sampled matches (see the module docstring); a scalar tensor.

    f0 (N0, D), f1 (N1, D) descriptors (L2-normalised); positive_pairs (P, 2) int64 ``[i0, i1]``;
    positions0 (N0, 3), positions1 (N1, 3) the rows' positions in their own frames (for the
    neighbour mask); ``safe_radius`` in the positions' units. Raises ValueError on bad input.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pairs = _checked_pairs(f0, f1, positive_pairs)  # (P, 2) CPU int64
    sample = pairs[_sample(pairs.shape[0], num_pos, generator)]  # (Ps, 2)
    src = _as_tensor(positions0, torch.float64).cpu()[sample[:, 0]]  # (Ps, 3)
    dst = _as_tensor(positions1, torch.float64).cpu()[sample[:, 1]]  # (Ps, 3)
    near = (torch.cdist(src, src) < safe_radius) | (torch.cdist(dst, dst) < safe_radius)  # (Ps, Ps)
    near.fill_diagonal_(False)
    dev = f0.device
    logits = (f0[sample[:, 0].to(dev)] @ f1[sample[:, 1].to(dev)].T) / temperature  # (Ps, Ps)
    logits = logits.masked_fill(near.to(dev), float("-inf"))
    target = torch.arange(sample.shape[0], device=dev)
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits, target) + ce(logits.T, target))


def _transform(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return points @ T[:3, :3].T + T[:3, 3]  # (N, 3)


def correspondences(
    points0: np.ndarray | torch.Tensor,
    points1: np.ndarray | torch.Tensor,
    T_1_from_0: np.ndarray | torch.Tensor,
    radius: float,
) -> torch.Tensor:
    """All pairs (i, j) with ``||T_1_from_0 @ p0_i - p1_j|| <= radius``; (P, 2) int64 CPU tensor.

    points0 (N0, 3), points1 (N1, 3), T (4, 4). Rows are sorted by i, then j. Candidates come
    from Open3D's fixed-radius search (a spatial hash) and are confirmed with float64 distances.
    """
    p0 = _as_tensor(points0, torch.float64).cpu()
    p1 = _as_tensor(points1, torch.float64).cpu()
    T = _as_tensor(T_1_from_0, torch.float64).cpu()
    if p0.ndim != 2 or p0.shape[1] != 3 or p1.ndim != 2 or p1.shape[1] != 3 or T.shape != (4, 4):
        raise ValueError("points must be (N, 3) and T_1_from_0 (4, 4)")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if p0.shape[0] == 0 or p1.shape[0] == 0:
        return torch.zeros(0, 2, dtype=torch.int64)
    q = _transform(p0, T)  # (N0, 3) in frame 1
    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(p1.numpy()))
    search = radius * (1.0 + 1e-6)
    nns.fixed_radius_index(search)
    idx, _, splits = nns.fixed_radius_search(o3d.core.Tensor(q.numpy()), search)
    j = torch.from_numpy(idx.numpy().astype(np.int64))  # (C,) candidate rows of points1
    counts = torch.from_numpy(np.diff(splits.numpy()).astype(np.int64))  # (N0,)
    i = torch.repeat_interleave(torch.arange(q.shape[0]), counts)  # (C,)
    keep = (q[i] - p1[j]).norm(dim=1) <= radius
    i, j = i[keep], j[keep]
    order = torch.argsort(i * p1.shape[0] + j)
    pairs = torch.stack([i[order], j[order]], dim=1)  # (P, 2)
    logger.debug("correspondences: %d pairs within %.4g", pairs.shape[0], radius)
    return pairs


def feature_match_recall(
    f0: np.ndarray | torch.Tensor,
    f1: np.ndarray | torch.Tensor,
    points0: np.ndarray | torch.Tensor,
    points1: np.ndarray | torch.Tensor,
    T_1_from_0: np.ndarray | torch.Tensor,
    inlier_dist: float = 0.10,
    inlier_ratio: float = 0.05,
    mutual: bool = False,
) -> tuple[bool, float]:
    """3DMatch feature-match recall of one fragment pair: (recall_flag, inlier_fraction).

    f0 (N0, D) are the descriptors of points0 (N0, 3), f1 (N1, D) of points1 (N1, 3). Every point
    of cloud 0 is matched to its nearest neighbour in feature space in cloud 1 (one-way, as FCGF's
    evaluation; with ``mutual`` only mutual nearest neighbours are kept and the fraction is over
    those). A match is an inlier when ``||T_1_from_0 @ p0_i - p1_nn(i)|| < inlier_dist``; the pair
    counts as recalled when the inlier fraction exceeds ``inlier_ratio`` (3DMatch: 0.1 m, 5 %).
    """
    a = _as_tensor(f0, torch.float32).detach().cpu()
    b = _as_tensor(f1, torch.float32).detach().cpu()
    p0 = _as_tensor(points0, torch.float64).cpu()
    p1 = _as_tensor(points1, torch.float64).cpu()
    T = _as_tensor(T_1_from_0, torch.float64).cpu()
    if a.shape[0] != p0.shape[0] or b.shape[0] != p1.shape[0] or a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("need non-empty f0 / points0 and f1 / points1 with matching row counts")
    nn01 = _nearest(a, b)  # (N0,)
    rows = torch.arange(a.shape[0])
    if mutual:
        nn10 = _nearest(b, a)  # (N1,)
        rows = rows[nn10[nn01] == rows]
        if rows.numel() == 0:
            return False, 0.0
    dist = (_transform(p0[rows], T) - p1[nn01[rows]]).norm(dim=1)  # (R,)
    fraction = float((dist < inlier_dist).to(torch.float64).mean())
    return fraction > inlier_ratio, fraction


def _nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Index in b (B, D) of each row of a (A, D)'s nearest neighbour; (A,) int64."""
    out = [torch.cdist(a[s : s + _CHUNK], b).argmin(dim=1) for s in range(0, a.shape[0], _CHUNK)]
    return torch.cat(out, 0)
