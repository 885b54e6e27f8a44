"""The EigenPro preconditioner and the automatic batch and step sizes of EigenPro 2.0.

With the Nystrom eigensystem ``(lambda_i, u_i)`` of ``K_S / s`` on a subsample ``S``, the
preconditioner ``P = I - sum_{i<=q} (1 - lambda_{q+1} / lambda_i) e_i (x) e_i`` flattens the
top ``q`` eigenvalues of the kernel operator down to ``lambda_{q+1}``. Applied to a stochastic
gradient it changes only the coefficients of ``S``::

    alpha_S += (eta / m) * E @ diag(D) @ E.T @ K(X_S, X_B) @ r
    E = U_q / sqrt(s),   D_i = (1 - lambda_{q+1} / lambda_i) / lambda_i

``q = 0`` gives plain kernel SGD (no correction) with its own, much smaller, critical batch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .eigensystem import Eigensystem, NystromSample, nystrom_eigensystem, top_eigensystem
from .kernels import Kernel, narrow_mm

__all__ = [
    "EigenProPreconditioner",
    "build_preconditioner",
    "auto_components",
    "default_subsample_size",
    "preconditioned_top_eigenvalue",
    "setup_bytes",
    "subsample_suffices",
    "STEP_SAFETY",
]

#: Automatic step sizes are taken this fraction of the EigenPro 2.0 formula.
STEP_SAFETY = 0.95
#: Relative size under which an eigenvalue counts as numerically zero.
EIGENVALUE_FLOOR = 1e-12
#: Smallest ``lambda_{q+1} / lambda_1`` that ``n_components="auto"`` flattens down to, per
#: training dtype. The step grows like ``1 / lambda_{q+1}``, and so does the round-off of the
#: residual it multiplies: in float32 a ratio near 1e-7 (its epsilon) diverges.
PRECISION_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-10}
#: Spread of the spectrum (``1 - lambda_1 / mean k(x, x)``) below which the precision floor
#: rises (:func:`precision_floor`).
SPREAD_REFERENCE = 0.1
#: Number of extra points, outside the subsample, on which beta and the preconditioned
#: operator's top eigenvalue are measured.
BETA_PROBES = 2000
#: Fewest and most probes with which the top eigenvalue after preconditioning is measured
#: (a dense probes x probes float64 matrix). A measurement on P probes cannot certify a
#: critical batch above about P, so few probes only make the step safer: with none, a
#: subsample of 50 among 200 points gave steps that diverged slowly (1.1-1.9x per epoch).
MIN_CALIBRATION_PROBES = 50
CALIBRATION_PROBES = 1000
#: Columns per chunk when the preconditioned diagonals are accumulated (bounds memory).
DIAGONAL_CHUNK = 256


def precision_floor(dtype: torch.dtype, top: float, mean_diagonal: float) -> float:
    """The smallest ``lambda_{q+1} / lambda_1`` the dtype resolves on this kernel:
    :data:`PRECISION_FLOOR`, raised where the kernel is nearly constant on the data.

    Kernel values near 1 (a bandwidth far above the data's spread) carry the part that
    tells points apart, ``1 - lambda_1 / mean k(x, x)`` of the trace, in that many fewer
    significant digits: at a spread of 0.009 (a Gaussian 8 median distances wide) float32
    fits flattened to 1e-5 rolled back twice. Below a spread of :data:`SPREAD_REFERENCE`
    the floor grows as its inverse."""
    spread = 1.0 - top / mean_diagonal if mean_diagonal > 0 else 1.0
    return PRECISION_FLOOR[dtype] * max(1.0, SPREAD_REFERENCE / max(spread, 1e-12))


def default_subsample_size(n_centers: int) -> int:
    """Subsample size used when ``subsample_size="auto"``: ``n / 15`` clipped to
    [2000, 12000] (and at most n): 2000 up to 30k points, 4000 for MNIST's 60k, 12000 from
    180k on. Enough for the few hundred leading eigenpairs EigenPro flattens, while the
    eigensolver stays at seconds."""
    return int(min(n_centers, max(2000, min(12_000, n_centers // 15))))


def setup_bytes(subsample_size: int, n_features: int, n_points: int) -> int:
    """Peak bytes :func:`build_preconditioner` allocates beyond its inputs (float64 throughout):
    the subsample's kernel matrix and the eigensolver's copy of it, the eigenvectors, the
    chunks of the preconditioned diagonals, and the dense calibration matrix on the probes.
    """
    s = subsample_size
    k = default_max_components(s) + 1
    probes = min(BETA_PROBES, max(n_points - s, 0))
    cal = min(CALIBRATION_PROBES, probes) if probes >= MIN_CALIBRATION_PROBES else 0
    eigensolver = 2 * s * s + s * (k + n_features + 2)  # + a reordered copy of the vectors
    diagonals = DIAGONAL_CHUNK * (s + 5 * k) + (s + probes) * (n_features + 2)
    calibration = 2 * cal * cal + cal * (s + k + n_features)
    return 8 * (s * k + max(eigensolver, diagonals, calibration))


def auto_components(critical_batches: torch.Tensor, max_batch_size: int) -> int:
    """The q of ``n_components="auto"``: the fewest components whose critical batch size
    reaches ``max_batch_size`` (batches of ``max_batch_size`` then take the linear-scaling
    step ``m / beta``, which makes the progress of batch-1 SGD per epoch in the fewest
    steps), or the most components available when none reaches it.

    Parameters
    ----------
    critical_batches : Tensor of shape (k,)
        ``beta_q / lambda_{q+1}`` for q = 0 .. k-1 (increasing).
    max_batch_size : int
    """
    reach = torch.nonzero(critical_batches >= max_batch_size).flatten()
    return int(reach.min()) if reach.numel() else int(critical_batches.shape[0] - 1)


def subsample_suffices(kernel: Kernel, X_sub: torch.Tensor, eigenvalues, dtype) -> bool:
    """Whether a subsample with these Nystrom eigenvalues (of ``K_S / s``, decreasing) gives
    every component ``dtype`` resolves: fewer eigenvalues lie above the precision floor
    (:func:`precision_floor`) than the subsample's cap (:func:`default_max_components`), so
    a larger subsample would flatten no more directions."""
    raw = eigenvalues
    if not raw.numel() or not raw[0] > 0:
        return False
    mean_diagonal = float(kernel.diag(X_sub.to(torch.float64)).mean())
    floor = precision_floor(dtype, float(raw[0]), mean_diagonal)
    return int((raw > floor * raw[0]).sum()) <= default_max_components(X_sub.shape[0])


def default_max_components(subsample_size: int) -> int:
    """Largest q tried when ``n_components="auto"``: a quarter of the subsample, at most 1000
    (Nystrom estimates of eigenvalues deep in the spectrum are unreliable)."""
    return max(0, min(1000, subsample_size // 4, subsample_size - 1))


@dataclass
class EigenProPreconditioner:
    """The fitted EigenPro preconditioner.

    Attributes
    ----------
    subsample_indices : LongTensor of shape (s,)
        Sorted positions of the subsample ``S`` among the centers.
    eigenvectors : Tensor of shape (s, q)
        ``E = U_q / sqrt(s)`` in the training dtype.
    scales : Tensor of shape (q,)
        ``D_i = (1 - lambda_{q+1} / lambda_i) / lambda_i`` in the training dtype.
    eigenvalues : Tensor of shape (k,)
        All Nystrom eigenvalues computed (float64, decreasing, ridge shift included).
    n_components : int
        q, the number of flattened eigendirections (0: plain SGD).
    top_eigenvalue : float
        lambda_1.
    tail_eigenvalue : float
        The top eigenvalue of the preconditioned operator: lambda_{q+1}, or larger where the
        measurement on probe points outside the subsample shows it is.
    beta : float
        ``max_x k_P(x, x)``, the largest diagonal of the preconditioned kernel.
    critical_batches : Tensor of shape (k,), optional
        ``beta_q / lambda_{q+1}`` for every q the training dtype resolves (float64): the
        critical batch size each number of components would give.
    """

    subsample_indices: torch.Tensor
    eigenvectors: torch.Tensor
    scales: torch.Tensor
    eigenvalues: torch.Tensor
    n_components: int
    top_eigenvalue: float
    tail_eigenvalue: float
    beta: float
    critical_batches: torch.Tensor | None = field(default=None, repr=False)

    @property
    def critical_batch_size(self) -> float:
        """``m* = beta / lambda_{q+1}``: up to this batch size, one epoch makes the progress
        of batch-1 SGD."""
        return self.beta / self.tail_eigenvalue

    def step_size(self, batch_size: int) -> float:
        """Step size ``eta`` for a batch of ``m`` points (EigenPro 2.0).

        ``eta = m / beta`` up to the critical batch size ``m*`` (linear scaling: one epoch
        makes the progress of batch-1 SGD on the preconditioned problem), then
        ``2m / (beta + (m - 1) lambda_{q+1})``, which tends to ``2 / lambda_{q+1}``; both
        times :data:`STEP_SAFETY`. At ``m = m*`` the step is ``1 / lambda_{q+1}``: for large
        batches the flattened top eigendirections are solved in one step.
        """
        m = int(batch_size)
        if m <= self.critical_batch_size:
            return STEP_SAFETY * m / self.beta
        return STEP_SAFETY * 2.0 * m / (self.beta + (m - 1) * self.tail_eigenvalue)

    def auto_batch_size(self, max_batch_size: int, n_train: int) -> int:
        """The critical batch size, bounded by ``max_batch_size`` and the data size."""
        return int(max(1, min(math.floor(self.critical_batch_size), max_batch_size, n_train)))

    def correction(
        self, kmat_batch_subsample: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """``E diag(D) E^T K(X_S, X_B) r``, the change of the subsample's coefficients per
        unit of ``eta / m`` (shape (s, l)).

        Evaluated right to left: ``K(X_S, X_B) r`` costs ``m s l`` operations, and the rest
        ``2 s q l``, against ``m s q`` for projecting the block onto ``E`` first.

        Parameters
        ----------
        kmat_batch_subsample : Tensor of shape (m, s)
            ``K(X_B, X_S)``, taken from the batch's kernel block.
        residual : Tensor of shape (m, l)
        """
        coords = self.eigenvectors.T @ (kmat_batch_subsample.T @ residual)  # (q, l)
        return narrow_mm(self.eigenvectors, self.scales.unsqueeze(1) * coords)


def _preconditioned_diagonals(
    kernel: Kernel,
    X_sub: torch.Tensor,
    X_probe: torch.Tensor,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
) -> torch.Tensor:
    """``max_x k_P(x, x)`` over the subsample and the probes for every q = 0 .. k-1 (float64,
    shape (k,)).

    ``k_P(x, x) = k(x, x) - sum_{i<=q} (1 - lambda_{q+1}/lambda_i) e_i(x)^2``; on subsample
    points ``e_i(x_j)^2 = s lambda_i u_ij^2``, elsewhere the Nystrom extension is evaluated.
    Points are taken :data:`DIAGONAL_CHUNK` at a time, so memory stays O(k x chunk).
    """
    s = X_sub.shape[0]
    lam = eigenvalues
    best = torch.full_like(lam, -math.inf)

    def fold(sq: torch.Tensor, diag: torch.Tensor) -> None:
        # sq[i, j] = e_i(x_j)^2; row q of the reduction sums eigenfunctions 0..q-1.
        reduction = torch.zeros_like(sq)
        reduction[1:] = sq.cumsum(0)[:-1] - lam[1:, None] * (sq / lam[:, None]).cumsum(0)[:-1]
        torch.maximum(best, (diag[None, :] - reduction).amax(dim=1), out=best)

    X_sub64 = X_sub.to(torch.float64)
    for start in range(0, s, DIAGONAL_CHUNK):
        cols = slice(start, start + DIAGONAL_CHUNK)
        sq = (s * lam)[:, None] * eigenvectors[cols].T.pow(2)
        fold(sq, kernel.diag(X_sub64[cols]))
    if X_probe.shape[0]:
        centers = kernel.prepare(X_sub64)
        for start in range(0, X_probe.shape[0], DIAGONAL_CHUNK):
            probes = X_probe[start : start + DIAGONAL_CHUNK].to(torch.float64)
            block = kernel.prepared_block(kernel.prepare_points(probes, centers), centers)
            proj = eigenvectors.T @ block.T  # (k, chunk)
            fold(proj.pow_(2) / (s * lam)[:, None], kernel.diag(probes))
    return best


def preconditioned_top_eigenvalue(
    kernel: Kernel,
    X_probe: torch.Tensor,
    X_sub: torch.Tensor,
    eigenvectors: torch.Tensor,
    scales: torch.Tensor,
) -> float:
    """Top eigenvalue of the preconditioned operator, measured on probe points (float64).

    The Nystrom eigenvalues deep in the spectrum (around ``lambda_{q+1}``) are estimated from
    the subsample alone and tend to be too small, which makes the EigenPro step, about
    ``1 / lambda_{q+1}``, too large. On probes ``X_P`` outside the subsample the
    preconditioned kernel matrix is ``K_PP - K_PS E diag(D) E^T K_SP``; the top eigenvalue of
    that matrix divided by ``|P|`` estimates the operator's top eigenvalue independently.

    Parameters
    ----------
    kernel : Kernel
    X_probe : Tensor of shape (P, d)
    X_sub : Tensor of shape (s, d)
        The Nystrom subsample.
    eigenvectors, scales : Tensors of shape (s, q) and (q,)
        ``E`` and ``D`` of the preconditioner.
    """
    probe = X_probe.to(torch.float64)
    matrix = kernel(probe, probe)
    if eigenvectors.shape[1]:
        lifted = kernel(probe, X_sub.to(torch.float64)) @ eigenvectors.to(torch.float64)
        matrix -= (lifted * scales.to(torch.float64)) @ lifted.T
    matrix /= probe.shape[0]
    # A dense solver: after flattening, the top eigenvalues cluster and Lanczos stalls. In
    # single precision (the matrix itself is formed in float64, where the flattening
    # cancels): its top eigenvalue is the largest entry's scale, which float32 resolves to
    # 1e-6, and the solve takes half the time (0.02 against 0.04 s at 1000 probes).
    top = top_eigensystem(matrix, 1, method="exact", precision=torch.float32)
    return float(top.eigenvalues[0])


def _check_components(
    q: int, s: int, valid: int, precise: int, ratio: float, dtype, floor: float
) -> None:
    """Reject a requested q beyond the numerically positive eigenvalues (``valid``); warn
    when it flattens below what ``dtype`` resolves (``precise``; ``ratio``:
    ``lambda_{q+1} / lambda_1``) or beyond a quarter of the subsample."""
    if q >= valid:
        raise ValueError(
            f"n_components={q} is too large: eigenvalue {q + 1} of the subsample kernel matrix is "
            f"numerically zero (only {valid} are positive). Use fewer components."
        )
    elif q >= precise:
        warnings.warn(
            f"n_components={q} flattens the spectrum to lambda_{{q+1}}/lambda_1 = "
            f"{ratio:.1e}, below what {dtype} resolves reliably "
            f"({floor:.0e} on this kernel); the fit may diverge. Use fewer components or "
            "dtype='float64'.",
            RuntimeWarning,
            stacklevel=4,
        )
    elif q > default_max_components(s):
        warnings.warn(
            f"n_components={q} is more than a quarter of subsample_size={s}: Nystrom estimates "
            "of eigenvalues that deep in the spectrum are unreliable, so the preconditioner "
            "flattens less than asked (the step is set from a measurement on probe points) and "
            "converges slowly. Use fewer components or a larger subsample_size.",
            RuntimeWarning,
            stacklevel=4,
        )


def build_preconditioner(
    kernel: Kernel,
    centers: torch.Tensor,
    *,
    n_components: int | str = "auto",
    subsample_size: int | str = "auto",
    max_batch_size: int,
    ridge: float = 0.0,
    n_train: int | None = None,
    rng: np.random.Generator | None = None,
    eigen_method: str = "auto",
    dtype: torch.dtype | None = None,
    nystrom: NystromSample | None = None,
) -> EigenProPreconditioner:
    """Estimate the top eigensystem on a random subsample and build the preconditioner.

    Parameters
    ----------
    kernel : Kernel
    centers : Tensor of shape (p, d)
        The model's centers (the training points for EigenPro 2).
    n_components : "auto" or int
        q. ``"auto"``: :func:`auto_components`, the fewest components whose critical batch
        size ``beta / lambda_{q+1}`` reaches ``max_batch_size``, or the most available (up to
        :func:`default_max_components` and what the dtype resolves); 0 gives plain SGD.
    subsample_size : "auto" or int
        s, the Nystrom subsample size (:func:`default_subsample_size`).
    max_batch_size : int
        Largest batch the device handles (from the memory budget).
    ridge : float
        The ridge ``alpha`` of ``(K + alpha I) c = y``: eigenvalues shift by ``alpha / n``
        and the diagonal by ``alpha``.
    n_train : int, optional
        Number of training points n (default: the number of centers).
    rng : numpy Generator, optional
        Draws the subsample and the probes.
    eigen_method : {"auto", "exact", "randomized"}
    dtype : torch dtype, optional
        Dtype of the stored eigenvectors (default: the centers' dtype).
    nystrom : NystromSample, optional
        A subsample of the centers whose eigensystem is known (the model selection's):
        used as the subsample, with no eigendecomposition; ``subsample_size`` is ignored.
    """
    rng = np.random.default_rng() if rng is None else rng
    p = centers.shape[0]
    n_train = p if n_train is None else n_train
    dtype = centers.dtype if dtype is None else dtype
    device = centers.device

    s = default_subsample_size(p) if subsample_size == "auto" else int(subsample_size)
    if nystrom is not None:
        s = len(nystrom.indices)
    if not 1 <= s <= p:
        raise ValueError(
            f"subsample_size must be between 1 and the number of centers ({p}); got {s}"
        )
    if n_components == "auto":
        n_eigen = default_max_components(s) + 1
    else:
        q = int(n_components)
        if not 0 <= q < s:
            raise ValueError(
                f"n_components must be smaller than subsample_size (here {s}, with n_samples={p}); "
                f"got {q}. Increase subsample_size or lower n_components."
            )
        n_eigen = q + 1

    order = rng.permutation(p)
    if nystrom is None:
        sub_idx = np.sort(order[:s])
        probe_idx = order[s : s + min(BETA_PROBES, p - s)]
    else:
        sub_idx = nystrom.indices
        outside = np.ones(p, dtype=bool)
        outside[sub_idx] = False
        probe_idx = order[outside[order]][:BETA_PROBES]
    sub_idx_t = torch.as_tensor(sub_idx, device=device)
    X_sub = centers[sub_idx_t]
    X_probe = centers[torch.as_tensor(probe_idx, device=device)]

    if nystrom is None:
        # A float32 fit with q chosen by the precision floor (1e-5 of lambda_1 and above)
        # needs no float64 eigensolve: its eigenvalue errors are near 1e-7 of lambda_1.
        single = dtype == torch.float32 and n_components == "auto"
        eig = nystrom_eigensystem(
            kernel, X_sub, n_eigen, method=eigen_method, seed=int(rng.integers(2**31)),
            precision=torch.float32 if single else torch.float64,
        )  # fmt: skip
    else:
        known = nystrom.eigensystem
        eig = Eigensystem(
            known.eigenvalues[:n_eigen].to(device),
            known.eigenvectors[:, :n_eigen].to(device),
        )
    raw = eig.eigenvalues
    if not (raw[0] > 0):
        raise ValueError(
            "the kernel matrix of the subsample has no positive eigenvalue; the kernel is not "
            "positive definite on this data (check the kernel and its bandwidth)"
        )
    mean_diagonal = float(kernel.diag(X_sub.to(torch.float64)).mean())
    lam = raw + ridge / n_train
    valid = int((raw > EIGENVALUE_FLOOR * raw[0]).sum())  # eigenvalues usable as lambda_{q+1}
    floor = precision_floor(dtype, float(raw[0]), mean_diagonal)
    precise = int((raw > floor * raw[0]).sum())
    # Diagonals only for the q that can be chosen: the usable ones, or the one asked for.
    kept = max(1, precise) if n_components == "auto" else max(1, precise, min(q, valid) + 1)
    kept = min(kept, raw.shape[0])
    betas = _preconditioned_diagonals(
        kernel, X_sub, X_probe, lam[:kept], eig.eigenvectors[:, :kept]
    ) + ridge  # fmt: skip
    # k_P(x, x) >= lambda_{q+1} always holds in exact arithmetic
    betas = torch.maximum(betas, lam[:kept])
    critical = (betas / lam[:kept])[: max(1, precise)]  # critical batch size of each usable q
    if n_components == "auto":
        q = auto_components(critical, max_batch_size)
    else:
        _check_components(q, s, valid, precise, float(raw[q] / raw[0]), dtype, floor)

    vecs = eig.eigenvectors[:, :q] / math.sqrt(s)
    top = lam[:q]
    tail = float(lam[q])
    scales = (1.0 - tail / top) / top
    if q and X_probe.shape[0] >= MIN_CALIBRATION_PROBES:
        # The step follows the tail eigenvalue; trust the estimate only as far as the probes
        # confirm it (never below it: flattening to lambda_{q+1} is what D encodes).
        probes = X_probe[:CALIBRATION_PROBES]
        measured = preconditioned_top_eigenvalue(kernel, probes, X_sub, vecs, scales)
        tail_for_step = max(tail, measured + ridge / n_train)
    else:
        tail_for_step = tail
    return EigenProPreconditioner(
        subsample_indices=sub_idx_t,
        eigenvectors=vecs.to(dtype),
        scales=scales.to(dtype),
        eigenvalues=lam,
        n_components=q,
        top_eigenvalue=float(lam[0]),
        tail_eigenvalue=tail_for_step,
        beta=float(betas[q]),
        critical_batches=critical,
    )
