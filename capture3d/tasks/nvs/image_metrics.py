"""Image-quality metrics and losses for novel-view synthesis: PSNR, SSIM, L1 + D-SSIM.

Inputs: torch images (H, W, 3) or batches (B, H, W, 3), float in [0, 1]. Outputs: scalar tensors.
SSIM follows Wang et al. 2004 as used by 3DGS and NeRF evaluations: an 11x11 Gaussian window
(sigma 1.5), constants C1 = 0.01^2, C2 = 0.03^2, averaged over pixels and channels ("valid"
window positions are not cropped: zero padding as in 3DGS's ``ssim``).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]; pred, target: (..., H, W, 3)."""
    mse = torch.mean((pred.float() - target.float()) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def _window(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :])[None, None]  # (1, 1, 11, 11)
    return w.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean structural similarity of two images (H, W, 3) or batches (B, H, W, 3)."""
    if pred.dim() == 3:
        pred, target = pred[None], target[None]
    x = pred.permute(0, 3, 1, 2)  # (B, 3, H, W)
    y = target.permute(0, 3, 1, 2).to(x.dtype)
    c = x.shape[1]
    w = _window(c, x.device, x.dtype)
    pad = SSIM_WINDOW // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


def l1_dssim_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """3DGS's photometric loss: (1 - lambda) * L1 + lambda * (1 - SSIM); images (H, W, 3)."""
    l1 = torch.abs(pred - target).mean()
    if lambda_dssim <= 0:
        return l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(pred, target))


def mse_to_psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error of [0, 1] images."""
    return -10.0 * math.log10(max(mse, 1e-12))
