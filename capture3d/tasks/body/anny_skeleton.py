"""Anny keypoints without skinning the mesh or running Anny's full forward kinematics.

Inputs: Anny's rig buffers (once), then per call the blend-shape coefficients (B, A), the delta
rotations of the posable bones (B, P, 3, 3) and keypoint names. Output: (B, N, 3) keypoints in
Anny's model frame (before the global orientation and translation).

Anny 0.6.2 poses its skeleton in the ``local-ref`` parameterisation with ``cached`` rest
orientations (``anny.utils.kinematics.forward_kinematic``). For a bone c with parent p, rest pose
``[R_c | h_c]``, reference orientation ``U_c`` and delta rotation ``D_c`` (identity for bones that
are not posed), the posed pose is ``W_c = W_p [U_p^T D_c U_c | R_p^T (h_c - h_p)]`` (the root's
translation term uses ``U_0^T``) and the skinning transform is ``T_c = W_c [R_c | h_c]^-1``.
Writing ``Z_c = V_c U_c^T`` for the rotation ``V_c`` of ``W_c`` and ``A_c = U_c R_c^T``:

- ``Z_c = Z_p D_c`` with ``Z_0 = U_0^T``: Z changes only at posed bones, so there are just
  1 + P distinct values (the *groups*: the root and each posed bone), a product down a tree of
  depth 8 instead of Anny's 17 levels over 104 bones;
- ``w_c = w_p + Z_p e_c`` with ``e_c = A_p (h_c - h_p)`` (``A_0`` read as I here): the head
  positions are sums of group rotations applied to shape-only vectors;
- ``T_c = [Z_c A_c | w_c - Z_c A_c h_c]``.

A regressed keypoint is ``sum_j T_j (sum_v w_kv a_vj [rest_v; 1])``, so it equals
``sum_g Z_g F_kg`` with ``F_kg`` depending on the shape only (heads, rest orientations and the
precomputed per-bone vertex sums). Hand keypoints are bone heads ``w_c``, the same form. Only the
bones a keypoint reads and their ancestors enter. This is exact: it matches regressing the skinned
mesh to float rounding (tests/test_body_fit.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import roma
import torch

logger = logging.getLogger(__name__)


class KeypointSkeleton:
    """Precomputed per-keypoint, per-bone sums over an Anny model's rig (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        regression_weights: torch.Tensor,
        regressed: Sequence[str],
        heads: Mapping[str, int],
        posed: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """``regression_weights`` (K, V) regress ``regressed``; ``heads`` names bone heads used as
        keypoints; ``posed`` lists the bone indices whose rotations ``__call__`` receives, in order."""
        expected = (model.pose_parameterization, model.bone_orientation, model.root_identity_orientation)
        if (
            expected != ("local-ref", "cached", False)
            or model.rest_orientation_refiner is not None
            or model.reference_bone_orientations is None
        ):
            raise RuntimeError(f"unsupported Anny rig settings {expected}; capture3d is written for anny==0.6.2")
        parents = [int(p) for p in model.bone_parents]
        f64 = torch.float64
        w = regression_weights.to(f64)
        used = torch.nonzero(w.sum(0) != 0).squeeze(1)
        a = torch.zeros(len(used), len(parents), dtype=f64, device=w.device)
        a.scatter_add_(1, model.vertex_bone_indices[used].long(), model.vertex_bone_weights[used].to(f64))
        wa = w[:, used, None] * a[None]  # (K, U, J)
        ms_all = wa.sum(1)  # (K, J)

        # Bones that matter: read by a keypoint, posed, or an ancestor of those.
        keep = set(torch.nonzero(ms_all.abs().sum(0) > 0).squeeze(1).tolist()) | set(heads.values()) | set(posed)
        for bone in list(keep):
            while bone > 0:
                bone = parents[bone]
                keep.add(bone)
        bones = sorted(keep)  # parents precede children
        if bones[0] != 0 or parents[0] >= 0:
            raise RuntimeError("Anny's root must be bone 0")
        local = {b: i for i, b in enumerate(bones)}
        parent = [local[parents[b]] if b else 0 for b in bones]
        sel = torch.tensor(bones, device=w.device)
        wa = wa[:, :, sel]
        template = model.template_vertices[used].to(f64)
        blend = model.blendshapes[:, used].to(f64)
        m0 = torch.einsum("kuj,ud->kjd", wa, template)  # (K, J', 3)
        mb = torch.einsum("kuj,aud->akjd", wa, blend)  # (A, K, J', 3)
        ms = wa.sum(1)  # (K, J')

        # Groups: the root and the posed bones, numbered breadth-first so that every level of the
        # group tree is a contiguous slice whose parents lie in the slice before it.
        posed_set = set(posed)

        def owner(b: int) -> int:  # nearest posed ancestor-or-self, else the root
            while b > 0 and b not in posed_set:
                b = parents[b]
            return b

        depth = {0: 0}
        for b in sorted(posed_set):
            depth[b] = depth[owner(parents[b])] + 1
        group_bones = sorted(depth, key=lambda b: (depth[b], b))
        gid = {b: g for g, b in enumerate(group_bones)}
        group_of = [gid[owner(b)] for b in bones]  # (J',)
        self._levels: list[tuple[int, int, torch.Tensor]] = []
        for level in range(1, max(depth.values()) + 1):
            members = [g for g, b in enumerate(group_bones) if depth[b] == level]
            first = members[0]
            prev_first = min(g for g, b in enumerate(group_bones) if depth[b] == level - 1)
            gparent = [gid[owner(parents[group_bones[g]])] - prev_first for g in members]
            self._levels.append((first, first + len(members), torch.tensor(gparent, device=device)))
        slot = {b: i for i, b in enumerate(posed)}
        self._rotation_rows = torch.tensor([slot[b] for b in group_bones[1:]], device=device)

        # C[s, x]: how much the edge vector of bone x (rotated by its parent's group) moves source s,
        # through the heads w_j of the bones it reads: sum_j omega_sj [x on the path root -> j].
        n_groups, n_bones = len(group_bones), len(bones)
        path = torch.zeros(n_bones, n_bones, dtype=f64)  # [j, x]
        for j in range(n_bones):
            x = j
            while x != 0:
                path[j, x] = 1.0
                x = parent[x]
        self.sources = tuple(regressed) + tuple(heads)
        omega = torch.zeros(len(self.sources), n_bones, dtype=f64)
        omega[: len(regressed)] = ms.cpu()
        for i, name in enumerate(heads, start=len(regressed)):
            omega[i, local[heads[name]]] = 1.0
        pad = len(heads)
        m0 = torch.cat([m0.cpu(), torch.zeros(pad, n_bones, 3, dtype=f64)])
        mb = torch.cat([mb.cpu(), torch.zeros(mb.shape[0], pad, n_bones, 3, dtype=f64)], 1)
        ms = torch.cat([ms.cpu(), torch.zeros(pad, n_bones, dtype=f64)])
        c = omega @ path  # (S, J')

        cast = {"dtype": dtype, "device": device}
        self._index = {name: i for i, name in enumerate(self.sources)}
        self._m0, self._mb, self._ms, self._c = m0.to(**cast), mb.to(**cast), ms.to(**cast), c.to(**cast)
        self._parent = torch.tensor(parent, device=device)
        self._group_of = torch.tensor(group_of, device=device)
        self._parent_group = torch.tensor([group_of[p] for p in parent], device=device)
        self._heads0 = model.template_bone_heads[sel].to(**cast)  # (J', 3)
        self._heads_b = model.bone_heads_blendshapes[:, sel].reshape(mb.shape[0], -1).to(**cast)
        self._orient0 = model.bone_template_orientation_matrices[sel].to(**cast)  # (J', 3, 3)
        self._orient_b = model.bone_orientation_blendshapes[:, sel].reshape(mb.shape[0], -1).to(**cast)
        self._reference = model.reference_bone_orientations[sel].to(**cast)  # (J', 3, 3)
        self._z0 = self._reference[0].T.contiguous()
        self._rows: dict[tuple[str, ...], tuple[torch.Tensor, ...]] = {}
        logger.debug("Anny keypoint skeleton: %d bones, %d groups, %d sources", n_bones, n_groups, len(self.sources))

    def _constants(self, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """The per-source constants restricted to ``names`` (cached per name tuple)."""
        if names not in self._rows:
            rows = torch.tensor([self._index[n] for n in names], device=self._m0.device)
            mb = self._mb[:, rows].reshape(self._mb.shape[0], -1)  # (A, R*J'*3)
            self._rows[names] = (self._m0[rows], mb, self._ms[rows], self._c[rows])
        return self._rows[names]

    def group_rotations(self, rotations: torch.Tensor) -> torch.Tensor:
        """(B, G, 3, 3) Z per group from the posed bones' delta rotations (B, P, 3, 3)."""
        batch = rotations.shape[0]
        delta = rotations[:, self._rotation_rows]  # (B, G-1, 3, 3) group order
        levels = [self._z0.expand(batch, 1, 3, 3)]
        for first, last, gparent in self._levels:
            levels.append(levels[-1][:, gparent] @ delta[:, first - 1 : last - 1])
        return torch.cat(levels, 1)

    def __call__(self, coeffs: torch.Tensor, rotations: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """(B, N, 3) keypoints ``names`` (from :attr:`sources`) in the model frame, for blend-shape
        coefficients (B, A) and posed-bone delta rotations (B, P, 3, 3)."""
        m0, mb, ms, c = self._constants(tuple(names))
        batch, count, n_bones = coeffs.shape[0], len(names), self._heads0.shape[0]
        heads = self._heads0 + (coeffs @ self._heads_b).view(batch, n_bones, 3)  # (B, J', 3)
        orient = self._orient0 + (coeffs @ self._orient_b).view(batch, n_bones, 3, 3)
        a = self._reference @ roma.special_procrustes(orient).transpose(-1, -2)  # (B, J', 3, 3) U R^T
        eye = torch.eye(3, dtype=a.dtype, device=a.device).expand(batch, 1, 3, 3)
        a_edge = torch.cat([eye, a[:, 1:]], 1)[:, self._parent]  # (B, J', 3, 3) A of the parent
        z = self.group_rotations(rotations)  # (B, G, 3, 3)
        bone_rot = z[:, self._group_of] @ a  # (B, J', 3, 3) T's rotation
        edge_rot = z[:, self._parent_group] @ a_edge  # (B, J', 3, 3)
        moved = (edge_rot @ (heads - heads[:, self._parent])[..., None]).squeeze(-1)  # (B, J', 3)
        local = m0 + (coeffs @ mb).view(batch, count, n_bones, 3) - ms[None, :, :, None] * heads[:, None]
        rotated = torch.bmm(
            local.reshape(batch, count, n_bones * 3),  # (B, R, 3)
            bone_rot.transpose(1, 2).reshape(batch, 3, n_bones * 3).transpose(1, 2),
        )
        return rotated + torch.einsum("rj,bjx->brx", c, moved)
