"""Gaussian mixtures over pose vectors: SMPLify's max-mixture pose prior, and fitting one by EM.

Inputs: mixture arrays (means (M, D), covariances (M, D, D), weights (M,)) or samples (N, D).
Outputs: a :class:`MaxMixture` whose :meth:`MaxMixture.nll` is the differentiable negative
log-likelihood SMPLify and SMPLify-X use (Bogo et al. 2016; smplify-x ``MaxMixturePrior``), and
:func:`fit_mixture`, plain EM with a variance floor (numpy, seeded k-means++ start).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


class MixtureError(ValueError):
    """Mixture arrays that do not describe one valid Gaussian mixture."""


@dataclass(frozen=True)
class MaxMixture:
    """A Gaussian mixture evaluated as SMPLify does: the best component's negative log-likelihood.

    means (M, D), precisions (M, D, D), consts (M,) = -log w_m + log normaliser_m, with smplify-x's
    normaliser ``(2 pi)^(D/2) sqrt(det C_m) / min_m sqrt(det C_m)``."""

    means: torch.Tensor
    precisions: torch.Tensor
    consts: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_arrays(
        cls,
        means: np.ndarray,
        covars: np.ndarray,
        weights: np.ndarray,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> MaxMixture:
        """From means (M, D), covariances (M, D, D) and weights (M,); :class:`MixtureError` when
        they do not fit together, a weight is not positive or a covariance not positive definite."""
        means, covars, weights = (np.asarray(a, dtype=np.float64) for a in (means, covars, weights))
        if means.ndim != 2 or len(means) == 0:
            raise MixtureError(f"means {means.shape} must be (M, D) with M > 0")
        m, d = means.shape
        if covars.shape != (m, d, d) or weights.shape != (m,):
            raise MixtureError(f"means {means.shape}, covars {covars.shape} and weights {weights.shape} disagree")
        if np.any(weights <= 0) or not np.isfinite(weights).all():
            raise MixtureError("mixture weights must be positive")
        try:
            chol = np.linalg.cholesky(covars)  # (M, D, D)
        except np.linalg.LinAlgError:
            raise MixtureError("a covariance is not positive definite") from None
        inv_chol = np.linalg.solve(chol, np.broadcast_to(np.eye(d), covars.shape))
        precisions = np.swapaxes(inv_chol, 1, 2) @ inv_chol
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # (M,)
        consts = -np.log(weights) + 0.5 * d * math.log(2 * math.pi) + 0.5 * (logdet - logdet.min())
        cast = {"dtype": dtype, "device": device}
        return cls(torch.as_tensor(means, **cast), torch.as_tensor(precisions, **cast), torch.as_tensor(consts, **cast))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) ``min_m 0.5 (x - mu_m)^T P_m (x - mu_m) + const_m`` for x (B, D)."""
        diff = x[:, None] - self.means  # (B, M, D)
        maha = torch.einsum("bmi,mij,bmj->bm", diff, self.precisions, diff)
        return (0.5 * maha + self.consts).min(1).values


def fit_mixture(
    samples: np.ndarray,
    components: int,
    *,
    seed: int,
    iterations: int = 200,
    var_floor: float = 1e-4,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """EM for a full-covariance Gaussian mixture on samples (N, D).

    Starts from k-means++ centres (seeded); each covariance gets ``var_floor`` added to its
    diagonal (keeps directions the data barely spans from collapsing). Returns means (M, D),
    covariances (M, D, D), weights (M,) and the final mean log-likelihood per sample."""
    x = np.asarray(samples, dtype=np.float64)
    n, d = x.shape
    if n < components * (d + 1):
        raise MixtureError(f"{n} samples are too few for {components} full-covariance components in {d} dimensions")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, components):
        dist = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(n, p=dist / dist.sum())])
    means = np.asarray(centres)
    nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), 1)
    resp = np.eye(components)[nearest]  # (N, M) hard start
    previous = -np.inf
    loglik = -np.inf
    eye = np.eye(d)
    for step in range(iterations):
        counts = resp.sum(0) + 1e-10  # (M,)
        weights = counts / n
        means = (resp.T @ x) / counts[:, None]
        covars = np.empty((components, d, d))
        for m in range(components):
            diff = x - means[m]
            covars[m] = (resp[:, m, None] * diff).T @ diff / counts[m] + var_floor * eye
        chol = np.linalg.cholesky(covars)
        logp = np.empty((n, components))
        for m in range(components):
            z = np.linalg.solve(chol[m], (x - means[m]).T)  # (D, N)
            logdet = 2 * np.log(np.diag(chol[m])).sum()
            logp[:, m] = np.log(weights[m]) - 0.5 * (z * z).sum(0) - 0.5 * (logdet + d * math.log(2 * math.pi))
        top = logp.max(1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(logp - top).sum(1))
        resp = np.exp(logp - total[:, None])
        loglik = float(total.mean())
        if loglik - previous < tol * abs(loglik):
            logger.debug("EM converged after %d iterations (mean log-likelihood %.3f)", step + 1, loglik)
            break
        previous = loglik
    return means, covars, weights, loglik
