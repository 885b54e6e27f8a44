"""Top eigensystem of the kernel operator, estimated by Nystrom on a subsample.

The top eigenvalues of the kernel integral operator are approximated by those of
``K_S / s``, the kernel matrix of a random subsample of size ``s`` divided by ``s``.
Kernel matrices and results are float64 whatever the training dtype: eigenvalues that span
many orders of magnitude need it. The exact solver may run in float32 (``precision``) where
only eigenvalues above 1e-5 of the largest are used (float32 fits).

Two solvers:

* ``"exact"``: a dense symmetric eigensolver that computes only the wanted top eigenpairs
  (LAPACK ``syevr`` through :func:`scipy.linalg.eigh` on the CPU; :func:`torch.linalg.eigh`
  on accelerators, where the full decomposition is fast).
* ``"randomized"``: randomized subspace iteration with a Rayleigh-Ritz step
  (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.3), seeded explicitly. Its cost is
  ``O(s^2 k)`` instead of ``O(s^3)``, so large subsamples stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from .kernels import Kernel

__all__ = [
    "Eigensystem", "NystromSample", "check_symmetric", "top_eigensystem", "nystrom_eigensystem",
    "EXACT_MAX_SIZE",
]  # fmt: skip

#: Largest entry a single-precision eigensolve is given (far below float32's 3.4e38, so that
#: its intermediate products stay finite too).
SINGLE_PRECISION_MAX = 1e30
#: Largest matrix for which ``method="auto"`` uses the dense exact solver.
EXACT_MAX_SIZE = 4000


@dataclass
class Eigensystem:
    """Top eigenpairs of a symmetric positive semi-definite matrix.

    Attributes
    ----------
    eigenvalues : Tensor of shape (k,)
        Float64, in decreasing order.
    eigenvectors : Tensor of shape (s, k)
        Float64, orthonormal columns, ``eigenvectors[:, i]`` belongs to ``eigenvalues[i]``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


@dataclass
class NystromSample:
    """A Nystrom subsample whose eigensystem is already known (the model selection's, at
    the chosen kernel), so a preconditioner built on it needs no eigendecomposition.

    Attributes
    ----------
    indices : ndarray of shape (s,)
        Sorted positions of the subsample among the points.
    eigensystem : Eigensystem
        Of ``K_S / s``, every eigenpair, decreasing.
    """

    indices: np.ndarray
    eigensystem: Eigensystem

    @classmethod
    def from_kernel_matrix(
        cls, indices: np.ndarray, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor
    ) -> NystromSample:
        """From the eigenpairs of ``K_S`` itself in increasing order (LAPACK's)."""
        s = len(indices)
        system = Eigensystem(
            eigenvalues.flip(0).to(torch.float64) / s, eigenvectors.flip(1).to(torch.float64)
        )
        return cls(np.asarray(indices, dtype=np.int64), system)


def _exact(
    matrix: torch.Tensor, k: int, precision: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    s = matrix.shape[0]
    if precision == torch.float32 and not float(matrix.abs().max()) < SINGLE_PRECISION_MAX:
        precision = torch.float64  # entries float32 cannot hold (a polynomial kernel on 1e7)
    if matrix.device.type == "cpu":
        vals, vecs = scipy.linalg.eigh(
            matrix.to(precision).numpy(), subset_by_index=[s - k, s - 1], driver="evr",
            check_finite=False,
        )  # fmt: skip
        vals, vecs = torch.from_numpy(vals).double(), torch.from_numpy(vecs).double()
    else:
        vals, vecs = torch.linalg.eigh(matrix)
        vals, vecs = vals[s - k :], vecs[:, s - k :]
    return vals.flip(0), vecs.flip(1)


def _randomized(
    matrix: torch.Tensor, k: int, n_oversamples: int, n_iter: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    s = matrix.shape[0]
    width = min(s, k + n_oversamples)
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: same sketch on every device
    sketch = torch.randn(s, width, generator=gen, dtype=matrix.dtype).to(matrix.device)
    basis = torch.linalg.qr(matrix @ sketch).Q
    for _ in range(n_iter):  # subspace (power) iterations sharpen the captured range
        basis = torch.linalg.qr(matrix @ basis).Q
    projected = basis.T @ (matrix @ basis)
    projected = 0.5 * (projected + projected.T)
    vals, small_vecs = torch.linalg.eigh(projected)
    vals, small_vecs = vals.flip(0)[:k], small_vecs.flip(1)[:, :k]
    return vals, basis @ small_vecs


def top_eigensystem(
    matrix: torch.Tensor,
    n_eigen: int,
    *,
    method: str = "auto",
    n_oversamples: int | None = None,
    n_iter: int = 4,
    seed: int = 0,
    precision: torch.dtype = torch.float64,
) -> Eigensystem:
    """Top ``n_eigen`` eigenpairs of a symmetric positive semi-definite matrix.

    Parameters
    ----------
    matrix : Tensor of shape (s, s)
        Symmetric; converted to float64.
    n_eigen : int
        Number of leading eigenpairs, ``1 <= n_eigen <= s``.
    method : {"auto", "exact", "randomized"}
        ``"auto"`` uses the exact solver up to ``EXACT_MAX_SIZE`` rows, or when more than a
        third of the spectrum is wanted, and the randomized one otherwise.
    n_oversamples : int, optional
        Extra columns of the randomized sketch (default ``max(10, n_eigen // 2)``).
    n_iter : int
        Subspace iterations of the randomized solver.
    seed : int
        Seed of the randomized sketch.
    precision : torch dtype
        Of the exact solver on the CPU (the results are float64 either way): float32 halves
        its time, with eigenvalue errors near 1e-7 of the largest.

    Returns
    -------
    Eigensystem
        Eigenvalues in decreasing order. Tiny negative eigenvalues from round-off are kept as
        computed; callers floor them where they divide by them.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square; got shape {tuple(matrix.shape)}")
    s = matrix.shape[0]
    if not 1 <= n_eigen <= s:
        raise ValueError(f"n_eigen must be between 1 and {s}; got {n_eigen}")
    if method not in ("auto", "exact", "randomized"):
        raise ValueError(f"method must be 'auto', 'exact' or 'randomized'; got {method!r}")
    matrix = matrix.to(torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError("the kernel matrix of the subsample contains NaN or infinite values")
    if n_oversamples is None:
        n_oversamples = max(10, n_eigen // 2)
    if method == "auto":
        method = (
            "exact" if s <= EXACT_MAX_SIZE or 3 * (n_eigen + n_oversamples) > s else "randomized"
        )
    if method == "exact":
        vals, vecs = _exact(matrix, n_eigen, precision)
    else:
        vals, vecs = _randomized(matrix, n_eigen, n_oversamples, n_iter, seed)
    return Eigensystem(eigenvalues=vals, eigenvectors=vecs)


def nystrom_eigensystem(
    kernel: Kernel,
    X_subsample: torch.Tensor,
    n_eigen: int,
    *,
    method: str = "auto",
    seed: int = 0,
    precision: torch.dtype = torch.float64,
) -> Eigensystem:
    """Nystrom estimate of the top eigensystem of the kernel operator.

    Returns the top ``n_eigen`` eigenpairs of ``K_S / s`` with ``K_S = k(X_S, X_S)``,
    computed in float64. The eigenvalues estimate those of the integral operator (and of
    ``K / n`` on the full data); the Nystrom eigenfunctions are
    ``e_i(x) = (s lambda_i)^(-1/2) sum_j u_ij k(x_j, x)``.

    Parameters
    ----------
    kernel : Kernel
    X_subsample : Tensor of shape (s, d)
    n_eigen : int
    method : {"auto", "exact", "randomized"}
    seed : int
        Seed of the randomized solver.
    precision : torch dtype
        Of the exact solver (:func:`top_eigensystem`).
    """
    X64 = X_subsample.to(torch.float64)
    kmat = kernel(X64, X64)
    check_symmetric(kmat)  # the symmetric solvers would silently read one triangle only
    kmat /= X64.shape[0]
    return top_eigensystem(kmat, n_eigen, method=method, seed=seed, precision=precision)


#: Largest ``|K - K^T|`` relative to ``max |K|`` accepted as round-off.
SYMMETRY_TOLERANCE = 1e-6


def check_symmetric(kmat: torch.Tensor, chunk: int = 512) -> None:
    """Raise ``ValueError`` when a kernel matrix is not symmetric (checked in row chunks)."""
    if not torch.isfinite(kmat).all():
        raise ValueError("the kernel matrix of the subsample contains NaN or infinite values")
    scale = max(float(kmat.amax()), -float(kmat.amin())) if kmat.numel() else 0.0
    worst = 0.0
    for start in range(0, kmat.shape[0], chunk):
        rows = kmat[start : start + chunk]
        worst = max(worst, float((rows - kmat[:, start : start + chunk].T).abs().max()))
    if worst > SYMMETRY_TOLERANCE * scale:
        raise ValueError(
            f"the kernel is not symmetric: k(x, z) and k(z, x) differ by up to {worst:.3g} "
            f"(largest value {scale:.3g}) on the training subsample. EigenPro needs a "
            "symmetric positive semi-definite kernel."
        )
