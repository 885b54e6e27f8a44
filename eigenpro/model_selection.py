"""Automatic ridge and bandwidth: closed-form leave-one-out on a subsample.

Exact kernel ridge regression on ``s`` rows, ``(K + alpha I) c = y``, has a closed form for
every ``alpha`` once ``K = U diag(lambda) U^T`` is known, and so do its leave-one-out
residuals (as in :class:`sklearn.linear_model.RidgeCV`)::

    r(alpha)      = y - H y = U diag(alpha / (lambda + alpha)) U^T y
    1 - H_ii      = sum_j U_ij^2 alpha / (lambda_j + alpha)
    e_i(alpha)    = r_i(alpha) / (1 - H_ii(alpha))

One symmetric eigendecomposition per bandwidth therefore scores a whole log grid of ridges
(``s^2`` operations per ``alpha`` and output). :func:`select_hyperparameters` scores a few
bandwidths about the data's scale this way (the middle ones first, then outward while an
end scores best) and keeps the pair with the smallest leave-one-out error. The ridge is
chosen for ``s`` rows; :func:`ridge_for_size` carries it to the ``n`` rows of the fit (the
per-row regularisation ``alpha / n`` a kernel ridge estimator needs falls as n grows,
``alpha`` itself grows more slowly than n).

Sample weights enter as a diagonal scaling of the kernel (``S K S``, targets ``S y``,
``S = diag(sqrt(w))``): the leave-one-out residuals of that problem are ``sqrt(w_i)`` times the
weighted problem's, so their sum of squares is the weighted leave-one-out error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch
from scipy.spatial.distance import pdist

from .eigensystem import check_symmetric

__all__ = [
    "Selection",
    "leave_one_out_errors",
    "select_hyperparameters",
    "ridge_for_size",
    "ALPHA_FLOOR",
    "ALPHA_GRID",
    "BANDWIDTH_FACTORS",
    "SELECTION_ROWS",
    "choose",
    "median_distance",
]

#: Rows of the subsample on which the ridge and the bandwidth are chosen (one dense
#: eigendecomposition of this size per bandwidth: 0.05 s at 1000 on 2 cores, single
#: precision). On 500 rows the search chose bandwidths up to 4x larger, and held-out R^2
#: fell by 0.02-0.06 on two of five real tables; on 2000 or 4000 rows it changed by -0.004
#: to +0.003 (BudgetFood and CPS1988, three splits of the training rows each) at 1.3-5x
#: the fit time.
SELECTION_ROWS = 1000
#: Fewer rows than this are too few to score candidates on: half the median distance and
#: :data:`FALLBACK_ALPHA` are used.
MIN_SELECTION_ROWS = 10
#: The ridge per training row used when there are too few rows to choose one.
FALLBACK_ALPHA = 1e-3
#: The smallest ridge searched for a fit on n rows, relative to the mean kernel diagonal
#: (``alpha_ >= ALPHA_FLOOR k(x, x)``). Two reasons: an iteration that runs a few tens of
#: epochs fits the directions of the kernel matrix whose eigenvalue is below about
#: ``k(x, x) / epochs`` only partly, so it cannot deliver a much smaller ridge's fit (a
#: Gaussian fit of 3204 rows chosen at 0.0006 reached held-out R^2 0.846 in 10 epochs,
#: 0.905 in 100, and 0.910 exactly); and the leave-one-out residuals of nearly exact
#: interpolants favour, in floating point, bandwidths far above the data's scale. Measured
#: on five real tables: the best leave-one-out R^2 at or above 0.01 was within 0.005 of
#: the best without a floor (README, tabular benchmark). A given ``alpha`` below it is used
#: as given, but a bandwidth is searched for it as if it were this.
ALPHA_FLOOR = 1e-2
#: Ridges searched, relative to the subsample's mean kernel diagonal times its size: the
#: per-row regularisation ``alpha / s`` in units of ``k(x, x)``.
ALPHA_GRID = np.logspace(-7, 1, 33)
#: Bandwidths searched, as multiples of the median distance between the subsample's rows.
BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Exponent of :func:`ridge_for_size`: ``alpha`` grows like ``n ** 0.5`` (the per-row
#: regularisation ``alpha / n`` falls like ``n ** -0.5``, kernel ridge regression's rate
#: without assumptions on the target's smoothness). Measured on five real tables, subsamples
#: of 250 to 4000 rows: the leave-one-out ``alpha / s`` fell by 0 to 10x over that range,
#: noisily (README, tabular benchmark).
RIDGE_EXPONENT = 0.5
#: Precision of the selection's eigendecompositions (the leave-one-out sums are float64).
#: Single precision halves their cost (0.05 against 0.10 s at 1000 rows on 2 cores); its
#: eigenvalue errors, about 6e-8 times the largest, stay far below the smallest ridge
#: searched (:data:`ALPHA_FLOOR`). Measured on six real tables: the same bandwidth and ridge
#: chosen as in float64, leave-one-out R^2 within 0.004 anywhere in the table.
SELECTION_EIGH_DTYPE = np.float32


@dataclass
class Selection:
    """What :func:`select_hyperparameters` chose, and the scores behind it.

    Attributes
    ----------
    bandwidth : float or None
        The chosen bandwidth (None for kernels without one).
    alpha : float
        The chosen ridge for the ``n_rows`` rows of the subsample.
    n_rows : int
        Rows the scores were computed on.
    bandwidths : list of float or None
        Bandwidths scored (``[None]`` when the kernel has none or it was given).
    alphas : ndarray of shape (k,)
        Ridges scored (for ``n_rows`` rows).
    scores : ndarray of shape (len(bandwidths), k)
        Leave-one-out R^2 (1 - mean squared leave-one-out error / variance of the targets)
        of every pair.
    loo_predictions : ndarray of shape (n_rows, l) or None
        Each row's prediction by the chosen pair fitted without it (the solver's target
        units): held-out outputs at no cost, on which the classifier fits its
        probabilities' temperature.
    rows : ndarray of shape (n_rows,) or None
        Positions of the subsample's rows in the training data (set by the caller).
    eigensystem : (eigenvalues, eigenvectors) or None
        Every eigenpair of the chosen kernel's matrix on the rows, increasing, float64
        (computed in :data:`SELECTION_EIGH_DTYPE`); None with sample weights (then it is
        the weighted matrix's). The EigenPro 2 preconditioner reuses it.
    """

    bandwidth: float | None
    alpha: float
    n_rows: int
    bandwidths: list = field(default_factory=list)
    alphas: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    loo_predictions: np.ndarray | None = field(default=None, repr=False)
    rows: np.ndarray | None = field(default=None, repr=False)
    eigensystem: tuple | None = field(default=None, repr=False)

    @property
    def best_score(self) -> float:
        return float(np.nanmax(self.scores)) if self.scores.size else math.nan

    def as_dict(self) -> dict:
        """Plain values (the estimators' ``selection_``)."""
        return {
            "n_rows": self.n_rows,
            "bandwidths": list(self.bandwidths),
            "alphas": self.alphas.copy(),
            "loo_r2": self.scores.copy(),
            "best_score": self.best_score,
            "bandwidth": self.bandwidth,
            "alpha": self.alpha,
        }


def _eigh(matrix: torch.Tensor, dtype=np.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs of a symmetric matrix, computed in ``dtype`` and returned in float64
    (LAPACK's divide and conquer on the CPU)."""
    if matrix.device.type == "cpu":
        vals, vecs = scipy.linalg.eigh(
            matrix.numpy().astype(dtype, copy=False), driver="evd", check_finite=False
        )
        return torch.from_numpy(vals.astype(np.float64)), torch.from_numpy(vecs.astype(np.float64))
    vals, vecs = torch.linalg.eigh(matrix.to(getattr(torch, np.dtype(dtype).name)))
    return vals.to(torch.float64), vecs.to(torch.float64)


def leave_one_out_errors(
    kmat: torch.Tensor, Y: torch.Tensor, alphas: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Sum over rows and outputs of the squared leave-one-out residuals of kernel ridge
    regression ``(K + alpha I) c = y``, for every ``alpha``.

    Parameters
    ----------
    kmat : Tensor of shape (s, s)
        Symmetric positive semi-definite kernel matrix (float64).
    Y : Tensor of shape (s, l)
        Targets (float64).
    alphas : array of shape (k,)
        Positive ridges.

    Returns
    -------
    Tensor of shape (k,)
        ``sum_i |y_i - f_{-i}(x_i)|^2`` per ridge, float64 (infinite where a ridge is so
        small that a leave-one-out fit is numerically undetermined).

    Examples
    --------
    >>> import torch
    >>> from eigenpro.model_selection import leave_one_out_errors
    >>> X = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
    >>> K, y = torch.exp(-torch.cdist(X, X) ** 2), torch.sin(6 * X)
    >>> def refit_without(i, alpha=0.1):  # the slow way: 20 fits
    ...     keep = torch.arange(20) != i
    ...     A = K[keep][:, keep] + alpha * torch.eye(19, dtype=K.dtype)
    ...     return float(y[i] - K[i, keep] @ torch.linalg.solve(A, y[keep]))
    >>> slow = sum(refit_without(i) ** 2 for i in range(20))
    >>> abs(float(leave_one_out_errors(K, y, [0.1])[0]) - slow) < 1e-10 * slow
    True
    """
    vals, vecs = _eigh(kmat.to(torch.float64))
    return _loo_from_eigensystem(vals, vecs, Y.to(torch.float64), alphas)


def _loo_from_eigensystem(vals, vecs, Y, alphas) -> torch.Tensor:
    alphas = torch.as_tensor(np.asarray(alphas, dtype=np.float64), device=vecs.device)
    residual, leverage_gap = _loo_parts(vals, vecs, Y, alphas)
    errors = (residual / leverage_gap[:, :, None]).pow(2).sum(dim=(0, 2))
    tiny = 1e-12  # a leverage of 1 to round-off: the left-out row is not predicted at all
    return torch.where(leverage_gap.min(dim=0).values > tiny, errors, torch.inf)


def _loo_parts(vals, vecs, Y, alphas: torch.Tensor):
    """Residuals ``(s, k, l)`` and ``1 - H_ii`` ``(s, k)`` for every ridge."""
    vals = vals.clamp(min=0.0)
    shrink = alphas[None, :] / (vals[:, None] + alphas[None, :])  # (s, k): 1 - lambda/(lambda+a)
    leverage_gap = (vecs * vecs) @ shrink  # (s, k): 1 - H_ii
    coords = vecs.T @ Y  # (s, l)
    # residuals for every ridge: U diag(shrink_k) U^T y, as one (s, s) x (s, k l) product
    residual = vecs @ (shrink[:, :, None] * coords[:, None, :]).reshape(vecs.shape[0], -1)
    return residual.reshape(vecs.shape[0], alphas.numel(), Y.shape[1]), leverage_gap


def _scored(kernel, X, Y, root_weights, alphas, alpha_floor, check: bool = False):
    """(ridges, their leave-one-out squared errors, the eigensystem) for one kernel
    (``check``: that its matrix is symmetric, as the solvers' eigendecompositions assume)."""
    s = X.shape[0]
    kmat = kernel(X, X).to(torch.float64)
    if check:
        check_symmetric(kmat)
    if root_weights is not None:
        kmat = kmat * root_weights[:, None] * root_weights[None, :]
    kmat = 0.5 * (kmat + kmat.T)
    scale = float(kmat.diagonal().mean())
    scale = scale if scale > 0 else 1.0
    grid = ALPHA_GRID * s * scale if alphas is None else np.asarray(alphas, np.float64)
    grid = np.unique(np.maximum(grid, alpha_floor * scale))
    vals, vecs = _eigh(kmat, SELECTION_EIGH_DTYPE)
    return grid, _loo_from_eigensystem(vals, vecs, Y, grid).cpu().numpy(), (vals, vecs)


def _walk(count: int, score: Callable[[int], float]) -> None:
    """Score sorted candidates (``score(i)``) until the best has worse neighbours on both
    sides: the middle three first, then outward from whichever end is best. On a curve with
    one peak this finds the best of all ``count`` candidates with fewer scorings (the
    leave-one-out score over bandwidth had one peak on six real tables: four of six scored)."""
    low, high = max(0, (count - 3) // 2), min(count, (count - 3) // 2 + 3)
    values = {i: score(i) for i in range(low, high)}
    while True:
        best = max(values, key=values.get)
        if best == low and low > 0:
            low -= 1
            values[low] = score(low)
        elif best == high - 1 and high < count:
            values[high] = score(high)
            high += 1
        else:
            return


def select_hyperparameters(
    make_kernel: Callable[[float | None], object],
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    bandwidths: list | None,
    alphas: np.ndarray | None,
    root_weights: torch.Tensor | None = None,
    alpha_floor: float = 0.0,
) -> Selection:
    """Choose a bandwidth and a ridge by closed-form leave-one-out error on ``X``.

    Parameters
    ----------
    make_kernel : callable
        ``make_kernel(bandwidth) -> Kernel`` (called with None when ``bandwidths`` is None).
    X : Tensor of shape (s, d)
        The subsample (float64).
    Y : Tensor of shape (s, l)
        Its targets, centred (float64).
    bandwidths : list of float, or None
        Candidates; None when the kernel has no bandwidth or it is fixed.
    alphas : array of positive floats, or None
        Candidate ridges for ``s`` rows; None: :data:`ALPHA_GRID` times ``s`` times the mean
        kernel diagonal.
    root_weights : Tensor of shape (s,), optional
        Square roots of sample weights (mean weight 1).
    alpha_floor : float
        No ridge below this times the mean kernel diagonal is scored (smaller candidates
        are raised to it).

    Returns
    -------
    Selection
        With ``loo_predictions``, the leave-one-out predictions of the chosen pair.
    """
    Y = Y.to(torch.float64)
    if root_weights is not None:
        Y = Y * root_weights[:, None]
    total = float(Y.pow(2).sum())
    candidates = [None] if bandwidths is None else sorted(bandwidths)
    scored: dict[int, tuple] = {}  # candidate index -> (scores, grid, eigensystem)

    def score(i: int) -> float:
        grid, errors, system = _scored(
            make_kernel(candidates[i]), X, Y, root_weights, alphas, alpha_floor,
            check=not scored,
        )  # fmt: skip
        row = 1.0 - errors / total if total > 0 else np.where(errors > 0, -np.inf, 0.0)
        scored[i] = (row, grid, system)
        finite = row[np.isfinite(row)]
        return float(finite.max()) if finite.size else -np.inf

    _walk(len(candidates), score)
    order = sorted(scored)
    candidates = [candidates[i] for i in order]
    scores = [scored[i][0] for i in order]
    grids = [scored[i][1] for i in order]
    systems = [scored[i][2] for i in order]
    width = max(len(g) for g in grids)  # grids differ in length only where raised to the floor
    table = np.full((len(candidates), width), -np.inf)
    for i, row in enumerate(scores):
        table[i, : len(row)] = row
    finite = np.where(np.isfinite(table), table, -np.inf)
    b, a = np.unravel_index(int(np.argmax(finite)), table.shape)
    alpha = float(grids[b][a])
    vals, vecs = systems[b]
    residual, gap = _loo_parts(vals, vecs, Y, torch.tensor([alpha], dtype=torch.float64))
    loo = Y - residual[:, 0] / gap[:, :1]
    if root_weights is not None:  # back from the scaled problem: y - e_i / sqrt(w_i)
        positive = root_weights > 0
        loo = torch.where(positive[:, None], loo / root_weights.clamp_min(1e-300)[:, None], 0.0)
    return Selection(
        bandwidth=candidates[b], alpha=alpha, n_rows=X.shape[0], bandwidths=candidates,
        alphas=grids[b], scores=table, loo_predictions=loo.numpy(),
        eigensystem=systems[b] if root_weights is None else None,
    )  # fmt: skip


def ridge_for_size(alpha: float, n_rows: int, n_train: int) -> float:
    """Carry a ridge chosen on ``n_rows`` rows to a fit on ``n_train`` rows:
    ``alpha (n_train / n_rows) ** RIDGE_EXPONENT``."""
    return float(alpha * (n_train / n_rows) ** RIDGE_EXPONENT)


def median_distance(X: np.ndarray, fallback: float = 1.0) -> float:
    """The median Euclidean distance between the rows of ``X`` (``fallback`` when there are
    fewer than two rows, or the median is 0)."""
    if X.shape[0] < 2:
        return fallback
    median = float(np.median(pdist(np.asarray(X, dtype=np.float64))))
    return median if median > 0 else fallback


def choose(
    make_kernel: Callable[[float | None], object],
    X: np.ndarray,
    Y: np.ndarray,
    *,
    bandwidth,
    alpha,
    n_train: int,
    radial: bool,
    root_weights: np.ndarray | None = None,
    score_given: bool = False,
) -> tuple[float | None, float, Selection | None]:
    """The bandwidth and the ridge of a fit on ``n_train`` rows, from a subsample.

    Parameters
    ----------
    make_kernel : callable
        ``make_kernel(bandwidth) -> Kernel``.
    X : ndarray of shape (s, d)
        Rows drawn from the training data (float64).
    Y : ndarray of shape (s, l)
        Their (centred, scaled) targets.
    bandwidth : float, "auto" or "median"
        A number is used as given; ``"median"``: half the median distance between the rows
        of ``X``; ``"auto"``: the best of :data:`BANDWIDTH_FACTORS` times that median by
        leave-one-out error. Ignored unless ``radial``.
    alpha : float or "auto"
        A number is used as given; ``"auto"``: the best of :data:`ALPHA_GRID` by
        leave-one-out error, carried to ``n_train`` rows by :func:`ridge_for_size`.
    n_train : int
    radial : bool
        Whether the kernel has a bandwidth.
    root_weights : ndarray of shape (s,), optional
        Square roots of the rows' sample weights, scaled to mean weight 1 over the data.
    score_given : bool
        Score the given values too when nothing is searched (one eigendecomposition), for
        their leave-one-out predictions.

    Returns
    -------
    (bandwidth, alpha, selection)
        ``bandwidth`` is None for kernels without one; ``selection`` is None when nothing
        was searched.
    """
    s = X.shape[0]
    if radial and bandwidth == "median":
        bandwidth = 0.5 * median_distance(X, fallback=2.0)
    search_bandwidth = radial and bandwidth == "auto"
    if not radial:
        bandwidth = None
    if not search_bandwidth and alpha != "auto" and not score_given:
        return bandwidth, float(alpha), None
    if s < MIN_SELECTION_ROWS:  # too few rows to score anything: the simple rules
        chosen = 0.5 * median_distance(X) if search_bandwidth else bandwidth
        if alpha != "auto":
            return chosen, float(alpha), None
        return chosen, FALLBACK_ALPHA * n_train, None
    bandwidths = None
    if search_bandwidth:
        median = median_distance(X)
        bandwidths = [median * f for f in BANDWIDTH_FACTORS]
    to_size = (s / n_train) ** RIDGE_EXPONENT  # a ridge for n_train rows, as it is on s rows
    selection = select_hyperparameters(
        lambda h: make_kernel(bandwidth if h is None else h),
        torch.from_numpy(np.asarray(X, dtype=np.float64)),
        torch.from_numpy(np.asarray(Y, dtype=np.float64)),
        bandwidths=bandwidths,
        alphas=None if alpha == "auto" else [float(alpha) * to_size],
        root_weights=None if root_weights is None else torch.from_numpy(root_weights),
        alpha_floor=ALPHA_FLOOR * to_size,
    )  # fmt: skip
    if search_bandwidth:
        bandwidth = selection.bandwidth
    if alpha == "auto":
        return bandwidth, ridge_for_size(selection.alpha, s, n_train), selection
    return bandwidth, float(alpha), selection
