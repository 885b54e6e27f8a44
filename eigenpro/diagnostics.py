"""Checks of the training data against the kernel and the training dtype, before a fit.

They catch inputs on which a fit would otherwise be silently poor or misreport itself:

* problems with **no exact fit**: a single distinct row, rows repeated with different targets,
  or a kernel that is numerically constant on the data (a bandwidth far above the data's
  spread). The training loss then has a floor above zero, and the solver is told so, so that
  its warnings say it rather than blaming divergence;
* **scales the dtype cannot resolve**: points so many bandwidths from their mean that float32
  distances lose their precision (a warning; a ``ValueError`` once the round-off reaches a
  squared bandwidth, where even ``k(x, x)`` is wrong), or a bandwidth so small that the
  kernel between any two distinct points underflows to 0;
* **overflow**: points so far out (in bandwidth units) that squared distances are not finite
  in the training dtype (a clear ``ValueError`` instead of NaN).

Everything here is O(n d) or works on samples of a few hundred rows, in float64 on the host.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .kernels import Kernel, RadialKernel

__all__ = ["DataDiagnosis", "diagnose", "repeated_rows_with_other_targets"]

#: Rows whose distance to their mean (in bandwidths) is measured.
EXTENT_SAMPLE = 2000
#: Query and reference rows of the nearest-neighbour distances (fixed bandwidths only).
NEIGHBOUR_QUERIES = 200
NEIGHBOUR_REFERENCES = 10000
#: Largest relative round-off of squared distances, ``eps * extent^2``, accepted without a
#: warning (kernel values then carry about this relative error).
DISTANCE_PRECISION = 1e-2
#: ... and beyond this (a round-off of a squared bandwidth), the kernel of a point with
#: itself is not resolved: a ``ValueError`` (bandwidth 1e-12 on standardised data predicted
#: 0 at 10% of the training points).
DISTANCE_ROUNDOFF_LIMIT = 1.0


@dataclass
class DataDiagnosis:
    """What :func:`diagnose` found.

    Attributes
    ----------
    exact_fit : bool
        False when no function of the kernel's span can fit every training target exactly
        (the training loss has a floor above zero).
    reasons : list of str
        Why ``exact_fit`` is False (empty otherwise).
    """

    exact_fit: bool = True
    reasons: list[str] = field(default_factory=list)

    def no_exact_fit(self, reason: str) -> None:
        self.exact_fit = False
        self.reasons.append(reason)


def repeated_rows_with_other_targets(X: np.ndarray, Y: np.ndarray) -> int:
    """How many rows of ``X`` repeat an earlier row exactly with a different target row.

    Rows are grouped by a hash of their bytes (one pass over ``X``); candidates are then
    compared exactly, so hash collisions never count.
    """
    n = X.shape[0]
    if n < 2:
        return 0
    X = np.ascontiguousarray(X)
    hashes = np.fromiter((hash(row.tobytes()) for row in X), dtype=np.int64, count=n)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    if len(first) == n:
        return 0
    source = first[inverse.ravel()]  # the first row with the same hash
    rows = np.nonzero(source != np.arange(n))[0]
    source = source[rows]
    Y = Y.reshape(n, -1)
    same = np.all(X[rows] == X[source], axis=1)
    return int((same & np.any(Y[rows] != Y[source], axis=1)).sum())


def diagnose(
    kernel: Kernel,
    X_sample: np.ndarray,
    dtype: torch.dtype,
    *,
    bandwidth_fixed: bool,
    single_row: bool = False,
    repeated: int = 0,
    ridge: float = 0.0,
) -> DataDiagnosis:
    """Check training data against the kernel and the dtype; warn about what was found.

    Parameters
    ----------
    kernel : Kernel
    X_sample : ndarray of shape (k, d)
        Training rows (all of them, or a random sample), float64.
    dtype : torch dtype
        The training dtype.
    bandwidth_fixed : bool
        Whether the user chose the bandwidth (the automatic one cannot be too small or too
        large for the data, so those checks are skipped).
    single_row : bool
        Whether every training row is the same.
    repeated : int
        Rows repeating an earlier one with a different target.
    ridge : float
        With a ridge, ``(K + ridge I) c = y`` always has an exact solution.

    Returns
    -------
    DataDiagnosis

    Raises
    ------
    ValueError
        If the data are so far out in bandwidth units that squared distances overflow.
    """
    out = DataDiagnosis()
    X = np.asarray(X_sample, dtype=np.float64)
    if single_row and ridge == 0:
        out.no_exact_fit(
            "X has a single distinct row: the model can only fit a constant (the mean of y)"
        )
    if repeated and ridge == 0 and not single_row:
        out.no_exact_fit(
            f"{repeated} training rows repeat an earlier row with a different target: no model "
            "fits both, the best fit averages them"
        )
    if isinstance(kernel, RadialKernel) and not single_row:
        _check_radial(kernel, X, dtype, bandwidth_fixed, ridge, out)
    for reason in out.reasons:
        warnings.warn(
            f"{reason}, so the training loss cannot reach zero (no exact fit).",
            UserWarning,
            stacklevel=4,
        )
    return out


def _profile(kernel: RadialKernel, distance: float) -> float:
    """``k`` at a distance of ``distance`` bandwidths, in float64."""
    scaled = torch.tensor([kernel.distance_scale * distance**2], dtype=torch.float64)
    return float(kernel.profile_(scaled)[0])


def _check_radial(kernel, X, dtype, bandwidth_fixed, ridge, out) -> None:
    h = kernel.bandwidth
    finfo = torch.finfo(dtype)
    name = str(dtype).removeprefix("torch.")
    rng = np.random.default_rng(0)
    sample = X if len(X) <= EXTENT_SAMPLE else X[rng.choice(len(X), EXTENT_SAMPLE, replace=False)]
    units = (sample - sample.mean(axis=0)) / h
    extent_sq = float(np.max(np.einsum("ij,ij->i", units, units)))
    if not math.isfinite(extent_sq) or 4 * extent_sq >= finfo.max:
        raise ValueError(
            f"the training points lie up to {math.sqrt(extent_sq):.3g} bandwidths from their "
            f"mean (bandwidth={h:.3g}): squared distances overflow {name}. Use a larger "
            "bandwidth (e.g. 'auto') or rescale the features."
        )
    if finfo.eps * extent_sq > DISTANCE_ROUNDOFF_LIMIT:
        raise ValueError(
            f"bandwidth={h:.3g} is too small for these data in {name}: the training points "
            f"lie up to {math.sqrt(extent_sq):.3g} bandwidths from their mean, so squared "
            f"distances carry a round-off of about {finfo.eps * extent_sq:.1g} squared "
            "bandwidths and even k(x, x) comes out wrong (the model would predict the "
            "intercept at training points). Use a larger bandwidth (e.g. 'auto'), or "
            "rescale the features."
        )
    if finfo.eps * extent_sq > DISTANCE_PRECISION:
        warnings.warn(
            f"the training points lie up to {math.sqrt(extent_sq):.3g} bandwidths from their "
            f"mean (bandwidth={h:.3g}): in {name} squared distances carry a round-off of "
            f"about {finfo.eps * extent_sq:.1g} relative to the bandwidth, and the kernel "
            "values lose accuracy. Use dtype='float64', or a larger bandwidth.",
            UserWarning,
            stacklevel=4,
        )
    if not bandwidth_fixed:
        return
    queries = sample[: min(NEIGHBOUR_QUERIES, len(sample))]
    references = X if len(X) <= NEIGHBOUR_REFERENCES else X[
        rng.choice(len(X), NEIGHBOUR_REFERENCES, replace=False)
    ]  # fmt: skip
    origin = references.mean(axis=0)
    # One float64 GEMM about the references' mean: accurate, and fast at d = 784 too.
    dist = torch.cdist(
        torch.from_numpy(queries - origin), torch.from_numpy(references - origin),
        compute_mode="use_mm_for_euclid_dist",
    ).numpy() / h  # fmt: skip
    largest = float(dist.max())
    if largest > 0 and 1.0 - _profile(kernel, largest) < finfo.eps and ridge == 0:
        out.no_exact_fit(
            f"bandwidth={h:.3g} is {1 / largest:.3g} times the largest distance between "
            f"sampled training points: in {name} the kernel matrix is constant (every value "
            "rounds to 1), so the model can only fit a constant; a bandwidth near the data's "
            "spread ('auto': half the median distance) fits more"
        )
    positive = np.where(dist > 0, dist, np.inf).min(axis=1)
    positive = positive[np.isfinite(positive)]
    if positive.size:
        near = float(np.percentile(positive, 10))
        if _profile(kernel, near) < finfo.tiny:
            warnings.warn(
                f"bandwidth={h:.3g} is {near:.3g} times smaller than the distance from most "
                f"training points to their nearest neighbour: in {name} the kernel between "
                "distinct points underflows to 0, so the model predicts about 0 away from "
                "the training points. Use a larger bandwidth (e.g. 'auto').",
                UserWarning,
                stacklevel=4,
            )
