"""Adaptive density control of Kerbl et al. 2023 (Sec. 5): clone, split, prune, opacity reset.

Inputs: the Gaussian ``ParameterDict`` and its per-parameter Adam optimisers (see
:mod:`capture3d.tasks.nvs.gaussians.model`), each iteration's :class:`RenderOutput` after backward,
the step, the scene extent and a ``torch.Generator``. Outputs: the parameters and optimiser
states edited in place (rows added, removed or reset), and the explicit :class:`DensifyState`.

Rules (gsplat's ``DefaultStrategy`` with 3DGS's values): the screen-space gradient of each mean,
in NDC units (pixels x W/2, H/2), is averaged over the views that saw it; every
``refine_every`` steps between ``refine_start`` and ``refine_stop`` a Gaussian whose average
exceeds ``grad_threshold`` is cloned when its largest scale is at most ``percent_dense`` x extent,
else split into two samples drawn from it with scales / 1.6. Then Gaussians with opacity under
``prune_opacity`` are removed, and after the first opacity reset also those larger than
``prune_scale3d`` x extent or wider than ``prune_scale2d`` x the image on screen. Every
``reset_every`` steps opacities are clamped to 0.01. ``max_gaussians`` caps growth (the largest
gradients win), which bounds the CPU cost of a fit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from capture3d.tasks.nvs.gaussians.project import quat_to_rotmat
from capture3d.tasks.nvs.gaussians.render import RenderOutput, screen_grad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DensifyConfig:
    """Hyperparameters of adaptive density control (3DGS: threshold 0.0002, 1 % dense, refine
    500-15k every 100, reset every 3000)."""

    grad_threshold: float
    """mean screen-space gradient (NDC units) that triggers clone / split"""
    percent_dense: float
    """clone below this fraction of the scene extent, split above"""
    split_scale_factor: float
    """a split Gaussian's two children are this much smaller"""
    prune_opacity: float
    """Gaussians less opaque than this are pruned"""
    prune_scale3d: float
    """after the first opacity reset: prune wider than this times the scene extent ..."""
    prune_scale2d: float
    """... or than this fraction of the image"""
    refine_start: int
    """first iteration of adaptive density control"""
    refine_stop: int
    """no densification after this iteration"""
    refine_every: int
    """densify and prune every this many iterations"""
    reset_every: int
    """opacities reset every this many iterations"""
    reset_opacity: float
    """opacities are reset to at most this"""
    max_gaussians: int
    """growth cap (bounds CPU time per iteration)"""


@dataclass
class DensifyState:
    """Per-Gaussian statistics since the last refinement: grad2d (N,), count (N,), max_radius (N,)."""

    grad2d: torch.Tensor
    count: torch.Tensor
    max_radius: torch.Tensor

    @classmethod
    def empty(cls, n: int, device: torch.device) -> DensifyState:
        z = torch.zeros(n, device=device)
        return cls(z.clone(), z.clone(), z.clone())

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"grad2d": self.grad2d, "count": self.count, "max_radius": self.max_radius}


def accumulate(state: DensifyState, out: RenderOutput, width: int, height: int) -> None:
    """Add one view's screen-space gradient norms (NDC units) and radii to ``state``."""
    g = screen_grad(out)
    if g is None:
        return
    with torch.no_grad():
        g = g.detach() * torch.tensor([width / 2.0, height / 2.0], device=g.device)
        seen = out.radii > 0
        state.grad2d[seen] += g[seen].norm(dim=-1)
        state.count[seen] += 1
        state.max_radius[seen] = torch.maximum(state.max_radius[seen], out.radii[seen].float() / max(width, height))


def _edit(
    splats: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Adam],
    fn: Callable[[str, torch.Tensor, bool], torch.Tensor],
) -> None:
    """Replace every parameter p (named n) by fn(n, p, False) and its Adam moments m by fn(n, m, True)."""
    for name in list(splats.keys()):
        old = splats[name]
        new = torch.nn.Parameter(fn(name, old.detach(), False))
        opt = optimizers[name]
        st = opt.state.pop(old, None)
        if st:
            for key in ("exp_avg", "exp_avg_sq"):
                st[key] = fn(name, st[key], True)
            opt.state[new] = st
        opt.param_groups[0]["params"] = [new]
        splats[name] = new


def _append(splats, optimizers, new_rows: dict[str, torch.Tensor]) -> None:
    """Append rows (new Gaussians) to every parameter, with zero Adam moments."""
    _edit(
        splats,
        optimizers,
        lambda name, x, moment: torch.cat([x, torch.zeros_like(new_rows[name]) if moment else new_rows[name]]),
    )


def _keep(splats, optimizers, mask: torch.Tensor) -> None:
    _edit(splats, optimizers, lambda name, x, moment: x[mask])


def refine(
    splats: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Adam],
    state: DensifyState,
    step: int,
    config: DensifyConfig,
    extent: float,
    generator: torch.Generator,
) -> dict[str, int]:
    """Clone, split and prune once; returns the counts. ``state`` is reset to the new size."""
    n = splats["means"].shape[0]
    with torch.no_grad():
        avg = state.grad2d / state.count.clamp_min(1)
        big = torch.exp(splats["scales"]).amax(-1) > config.percent_dense * extent
        candidates = avg > config.grad_threshold
        room = max(config.max_gaussians - n, 0)
        # a split adds one Gaussian net, a clone one: keep the strongest gradients that fit
        if int(candidates.sum()) > room:
            order = torch.argsort(torch.where(candidates, avg, torch.full_like(avg, -1.0)), descending=True)
            chosen = torch.zeros_like(candidates)
            chosen[order[:room]] = True
            candidates &= chosen
        clone = candidates & ~big
        split = candidates & big
        rows = {k: v.detach()[clone] for k, v in splats.items()}
        # split: two samples from each selected Gaussian, scales shrunk; the original is removed
        s = torch.exp(splats["scales"].detach()[split])  # (S, 3)
        R = quat_to_rotmat(splats["quats"].detach()[split])  # (S, 3, 3)
        z = torch.randn((2,) + tuple(s.shape), generator=generator).to(s.device)  # CPU generator: same draws anywhere
        offsets = torch.einsum("sij,ksj->ksi", R, z * s[None])  # (2, S, 3)
        for k, v in splats.items():
            v = v.detach()[split]
            if k == "means":
                v2 = (v[None] + offsets).reshape(-1, 3)
            elif k == "scales":
                v2 = torch.log(s / config.split_scale_factor).repeat(2, 1)
            else:
                v2 = v.repeat((2,) + (1,) * (v.dim() - 1))
            rows[k] = torch.cat([rows[k], v2])
        _append(splats, optimizers, rows)
        keep = torch.ones(splats["means"].shape[0], dtype=torch.bool, device=split.device)
        keep[:n][split] = False
        _keep(splats, optimizers, keep)
        # prune
        opac = torch.sigmoid(splats["opacities"])
        prune = opac < config.prune_opacity
        if step > config.reset_every:
            prune |= torch.exp(splats["scales"]).amax(-1) > config.prune_scale3d * extent
            radius = torch.cat(
                [
                    state.max_radius[~split],
                    torch.zeros(splats["means"].shape[0] - int((~split).sum()), device=prune.device),
                ]
            )
            prune |= radius > config.prune_scale2d
        _keep(splats, optimizers, ~prune)
    n_new = splats["means"].shape[0]
    fresh = DensifyState.empty(n_new, splats["means"].device)
    state.grad2d, state.count, state.max_radius = fresh.grad2d, fresh.count, fresh.max_radius
    return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": int(prune.sum()), "total": n_new}


def reset_opacity(splats: torch.nn.ParameterDict, optimizers: dict[str, torch.optim.Adam], value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacity optimiser's moments (3DGS)."""
    logit = math.log(value / (1 - value))
    name = "opacities"
    with torch.no_grad():
        splats[name].data.clamp_(max=logit)
    st = optimizers[name].state.get(splats[name])
    if st:
        st["exp_avg"].zero_()
        st["exp_avg_sq"].zero_()


def step(
    splats: torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Adam],
    state: DensifyState,
    iteration: int,
    config: DensifyConfig,
    extent: float,
    generator: torch.Generator,
) -> dict[str, int] | None:
    """After ``iteration``'s optimiser step: refine and/or reset opacities when due."""
    report = None
    if config.refine_start < iteration < config.refine_stop and iteration % config.refine_every == 0:
        report = refine(splats, optimizers, state, iteration, config, extent, generator)
    if config.reset_every > 0 and iteration % config.reset_every == 0 and iteration < config.refine_stop:
        reset_opacity(splats, optimizers, config.reset_opacity)
    return report
