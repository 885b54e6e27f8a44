"""Target handling: the intercept, and the scale the solver works in.

A kernel expansion ``sum_j c_j k(z_j, x)`` decays to 0 away from its centers, and a ridge
shrinks it toward 0, so targets far from 0 (log prices near 12) are fitted badly unless their
offset is removed first. With ``fit_intercept=True`` the estimators fit the expansion to the
targets minus their (weighted) mean, per output column, and add the mean back when
predicting: ``f(x) = intercept_ + sum_j dual_coef_j k(z_j, x)``, as
:class:`sklearn.gaussian_process.GaussianProcessRegressor` does with ``normalize_y=True``.
The regressor's targets are also divided by their (weighted) standard deviation while the
solver runs: every solution the solver reaches (kernel ridge, least squares on the centers,
any epoch of the iteration) is linear in the targets, so the scale changes no fitted value,
only the size of the numbers, and the solver's loss thresholds see targets of unit scale.
Classifier targets (one-hot indicators, or +1/-1) are centred by the class frequencies and
not scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TargetScaler"]


@dataclass
class TargetScaler:
    """Per-column offset and scale of 2-d targets: ``(Y - offset) / scale`` for the solver.

    Attributes
    ----------
    offset : ndarray of shape (l,)
        The intercept (zeros without one).
    scale : ndarray of shape (l,)
        Positive; ones when targets are not scaled.
    """

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(
        cls,
        Y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        *,
        center: bool = True,
        scale: bool = True,
    ) -> TargetScaler:
        """The (weighted) mean and standard deviation of each column of ``Y``.

        A column whose deviation is 0 (or not finite) keeps scale 1. Rows of zero weight do
        not count.

        Parameters
        ----------
        Y : ndarray of shape (n, l)
        sample_weight : ndarray of shape (n,), optional
            Non-negative, not all zero.
        center, scale : bool
            Whether to remove the mean, and divide by the deviation about it (or about 0
            without ``center``).
        """
        Y = np.asarray(Y, dtype=np.float64)
        w = np.ones(Y.shape[0]) if sample_weight is None else np.asarray(sample_weight, float)
        total = w.sum()
        if not total > 0:  # nothing to learn the offset from: keep the targets as they are
            w, total = np.ones(Y.shape[0]), float(max(Y.shape[0], 1))
        offset = (w @ Y) / total if center else np.zeros(Y.shape[1])
        spread = np.ones(Y.shape[1])
        if scale:
            deviation = np.sqrt((w @ (Y - offset) ** 2) / total)
            good = np.isfinite(deviation) & (deviation > np.finfo(np.float64).tiny)
            spread = np.where(good, deviation, 1.0)
        return cls(offset=offset, scale=spread)

    @classmethod
    def identity(cls, n_outputs: int) -> TargetScaler:
        """No offset, unit scale."""
        return cls(offset=np.zeros(n_outputs), scale=np.ones(n_outputs))

    def transform(self, Y: np.ndarray) -> np.ndarray:
        """``(Y - offset) / scale``."""
        return (np.asarray(Y, dtype=np.float64) - self.offset) / self.scale

    def inverse_transform(self, F):
        """``F * scale + offset`` (numpy arrays or torch tensors, on any device)."""
        if isinstance(F, np.ndarray):
            return F * self.scale + self.offset
        scale = F.new_tensor(self.scale)
        return F * scale + F.new_tensor(self.offset)

    def coefficients(self, coef: np.ndarray) -> np.ndarray:
        """Coefficients fitted to the transformed targets, in the targets' own units."""
        return (coef * self.scale).astype(coef.dtype, copy=False)
