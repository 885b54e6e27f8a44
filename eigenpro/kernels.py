"""Kernel functions evaluated blockwise on torch tensors.

A :class:`Kernel` maps two row sets ``X`` (m x d) and ``Z`` (p x d) to the block
``K(X, Z)`` (m x p) on the tensors' own device and dtype. The full n x n matrix is never
needed: :func:`kernel_matmul` multiplies ``K(X, Z) @ W`` block by block, and is the single
place where the package does blocked kernel products.

Radial kernels share one squared-distance computation (clamped at 0 against round-off)
and apply their profile in place.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

__all__ = [
    "Kernel",
    "RadialKernel",
    "GaussianKernel",
    "LaplacianKernel",
    "CauchyKernel",
    "MaternKernel",
    "PolynomialKernel",
    "LinearKernel",
    "CallableKernel",
    "KERNELS",
    "get_kernel",
    "squared_distances",
    "kernel_matmul",
]


def squared_distances(
    X: torch.Tensor,
    Z: torch.Tensor,
    x_sq_norms: torch.Tensor | None = None,
    z_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``|x_i - z_j|^2``, clamped at 0.

    Uses ``|x|^2 + |z|^2 - 2 x.z`` (one matrix product); pass precomputed squared row norms
    to avoid recomputing them for a fixed set of centers.
    """
    if x_sq_norms is None:
        x_sq_norms = X.pow(2).sum(dim=1)
    if z_sq_norms is None:
        z_sq_norms = Z.pow(2).sum(dim=1)
    dist = torch.addmm(z_sq_norms.unsqueeze(0), X, Z.T, alpha=-2.0)
    dist.add_(x_sq_norms.unsqueeze(1))
    return dist.clamp_(min=0.0)


class Kernel(ABC):
    """Base class: a positive semi-definite kernel evaluated on torch tensors.

    Subclasses implement :meth:`block` and :meth:`diag`; :meth:`row_stats` may return a
    per-row statistic (e.g. squared norms) that :meth:`block` reuses, so that fixed centers
    are preprocessed once.
    """

    name = "kernel"

    def row_stats(self, X: torch.Tensor) -> torch.Tensor | None:
        """Per-row statistic reused by :meth:`block` (None when the kernel needs none)."""
        return None

    @abstractmethod
    def block(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        x_stats: torch.Tensor | None = None,
        z_stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The kernel block ``K(X, Z)`` of shape (len(X), len(Z))."""

    @abstractmethod
    def diag(self, X: torch.Tensor) -> torch.Tensor:
        """The diagonal ``k(x_i, x_i)`` for every row of ``X``."""

    def prepare(self, Z: torch.Tensor, z_stats: torch.Tensor | None = None):
        """Preprocess fixed centers once for :meth:`prepared_block` (default: keep them with
        their row statistics)."""
        return (Z, self.row_stats(Z) if z_stats is None else z_stats)

    def prepared_block(self, X: torch.Tensor, x_stats, prepared, out=None) -> torch.Tensor:
        """``K(X, Z)`` for centers preprocessed by :meth:`prepare`; kernels that can write
        into a preallocated ``out`` of shape (len(X), len(Z)) do so."""
        Z, z_stats = prepared
        return self.block(X, Z, x_stats, z_stats)

    @staticmethod
    def prepared_rows(prepared, start: int, stop: int):
        """The part of ``prepared`` that belongs to centers ``start:stop``."""
        if isinstance(prepared, tuple):
            Z, stats = prepared
            return (Z[start:stop], None if stats is None else stats[start:stop])
        return prepared[start:stop]

    def __call__(self, X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return self.block(X, Z, self.row_stats(X), self.row_stats(Z))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class RadialKernel(Kernel):
    """A kernel ``k(x, z) = phi(|x - z|^2)`` with a positive ``bandwidth``.

    Blocks against fixed centers take a fused path (:meth:`prepare`): the centers are
    augmented once to ``[z, 1, c |z|^2]`` and each row block to ``[-2c x, c |x|^2, 1]``, so a
    single matrix product yields the scaled squared distances ``c |x - z|^2`` and the profile
    is applied in place (for the Gaussian kernel: one ``exp_`` pass, nothing else).
    """

    def __init__(self, bandwidth: float = 1.0):
        bandwidth = float(bandwidth)
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"bandwidth must be a positive finite number; got {bandwidth!r}")
        self.bandwidth = bandwidth

    def row_stats(self, X: torch.Tensor) -> torch.Tensor:
        return X.pow(2).sum(dim=1)

    @abstractmethod
    def profile_(self, sq_dist: torch.Tensor) -> torch.Tensor:
        """Turn squared distances into kernel values, in place."""

    def distance_scale(self) -> float:
        """The factor ``c`` with which :meth:`profile_scaled_` receives ``c |x - z|^2``."""
        return 1.0

    def profile_scaled_(self, scaled: torch.Tensor) -> torch.Tensor:
        """Turn ``c |x - z|^2`` into kernel values, in place (clamping round-off)."""
        return self.profile_(scaled.clamp_(min=0.0))

    def block(self, X, Z, x_stats=None, z_stats=None):
        return self.profile_(squared_distances(X, Z, x_stats, z_stats))

    def prepare(self, Z, z_stats=None):
        c = self.distance_scale()
        sq = self.row_stats(Z) if z_stats is None else z_stats
        return torch.cat([Z, torch.ones_like(sq).unsqueeze(1), (c * sq).unsqueeze(1)], dim=1)

    def prepared_block(self, X, x_stats, prepared, out=None):
        c = self.distance_scale()
        sq = self.row_stats(X) if x_stats is None else x_stats
        rows = torch.cat(
            [X * (-2.0 * c), (c * sq).unsqueeze(1), torch.ones_like(sq).unsqueeze(1)], 1
        )
        return self.profile_scaled_(torch.mm(rows, prepared.T, out=out))

    def diag(self, X):
        return self.profile_(torch.zeros(X.shape[0], dtype=X.dtype, device=X.device))


class GaussianKernel(RadialKernel):
    """Gaussian (RBF) kernel ``exp(-|x - z|^2 / (2 bandwidth^2))``."""

    name = "gaussian"

    def profile_(self, sq_dist):
        return sq_dist.mul_(-0.5 / self.bandwidth**2).exp_()

    def distance_scale(self):
        return -0.5 / self.bandwidth**2

    def profile_scaled_(self, scaled):
        # ``-|x - z|^2 / (2 bandwidth^2)`` is at most a round-off above 0, where exp is ~1: no
        # clamp pass is needed for finite, in-range values.
        return scaled.exp_()


class LaplacianKernel(RadialKernel):
    """Laplacian kernel ``exp(-|x - z| / bandwidth)`` (Euclidean norm)."""

    name = "laplacian"

    def profile_(self, sq_dist):
        return sq_dist.sqrt_().mul_(-1.0 / self.bandwidth).exp_()

    def distance_scale(self):
        return 1.0 / self.bandwidth**2

    def profile_scaled_(self, scaled):
        return scaled.clamp_(min=0.0).sqrt_().neg_().exp_()


class CauchyKernel(RadialKernel):
    """Cauchy kernel ``1 / (1 + |x - z|^2 / bandwidth^2)``."""

    name = "cauchy"

    def profile_(self, sq_dist):
        return sq_dist.mul_(1.0 / self.bandwidth**2).add_(1.0).reciprocal_()

    def distance_scale(self):
        return 1.0 / self.bandwidth**2

    def profile_scaled_(self, scaled):
        return scaled.clamp_(min=0.0).add_(1.0).reciprocal_()


class MaternKernel(RadialKernel):
    """Matern kernel with smoothness ``nu`` in {0.5, 1.5, 2.5} and length scale ``bandwidth``.

    Same convention as :class:`sklearn.gaussian_process.kernels.Matern`; ``nu=0.5`` is the
    Laplacian kernel.
    """

    name = "matern"

    def __init__(self, bandwidth: float = 1.0, nu: float = 1.5):
        super().__init__(bandwidth)
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern kernel supports nu in (0.5, 1.5, 2.5); got nu={nu!r}")
        self.nu = float(nu)

    def profile_(self, sq_dist):
        scale = math.sqrt(2.0 * self.nu) / self.bandwidth
        r = sq_dist.sqrt_().mul_(scale)  # scaled distance, in place
        if self.nu == 0.5:
            return r.neg_().exp_()
        decay = torch.exp(-r)
        if self.nu == 1.5:
            poly = r.add_(1.0)
        else:  # 2.5: 1 + r + r^2 / 3
            poly = r.pow(2).div_(3.0).add_(r).add_(1.0)
        return poly.mul_(decay)


class PolynomialKernel(Kernel):
    """Polynomial kernel ``(gamma <x, z> + coef0) ^ degree``; ``gamma=None`` means 1 / d."""

    name = "polynomial"

    def __init__(self, degree: int = 3, gamma: float | None = None, coef0: float = 1.0):
        if int(degree) != degree or degree < 1:
            raise ValueError(f"degree must be a positive integer; got {degree!r}")
        if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be None or a positive number; got {gamma!r}")
        if not math.isfinite(coef0) or coef0 < 0:
            raise ValueError(f"coef0 must be a non-negative number; got {coef0!r}")
        self.degree = int(degree)
        self.gamma = gamma
        self.coef0 = float(coef0)

    def _gamma(self, d: int) -> float:
        return 1.0 / d if self.gamma is None else float(self.gamma)

    def block(self, X, Z, x_stats=None, z_stats=None):
        gram = X @ Z.T
        return gram.mul_(self._gamma(X.shape[1])).add_(self.coef0).pow_(self.degree)

    def diag(self, X):
        return (X.pow(2).sum(dim=1) * self._gamma(X.shape[1]) + self.coef0).pow_(self.degree)


class LinearKernel(Kernel):
    """Linear kernel ``<x, z>``."""

    name = "linear"

    def block(self, X, Z, x_stats=None, z_stats=None):
        return X @ Z.T

    def diag(self, X):
        return X.pow(2).sum(dim=1)


class CallableKernel(Kernel):
    """Wrap a user function ``fn(X, Z, **params) -> (len(X), len(Z))`` matrix.

    The function receives torch tensors on the fitting device and should return a torch
    tensor (array-likes are converted). It must be symmetric positive semi-definite for
    EigenPro to converge.
    """

    name = "callable"

    def __init__(self, fn: Callable, **params):
        if not callable(fn):
            raise TypeError(f"kernel must be a name or a callable; got {type(fn).__name__}")
        self.fn = fn
        self.params = params

    def block(self, X, Z, x_stats=None, z_stats=None):
        out = self.fn(X, Z, **self.params)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        out = out.to(device=X.device, dtype=X.dtype)
        if out.shape != (X.shape[0], Z.shape[0]):
            raise ValueError(
                f"the kernel callable returned shape {tuple(out.shape)} for inputs with "
                f"{X.shape[0]} and {Z.shape[0]} rows; expected ({X.shape[0]}, {Z.shape[0]})"
            )
        return out

    def diag(self, X):
        chunk = 512
        parts = [
            self.block(X[i : i + chunk], X[i : i + chunk]).diagonal()
            for i in range(0, len(X), chunk)
        ]
        return torch.cat(parts) if parts else X.new_zeros(0)


KERNELS: dict[str, type[Kernel]] = {
    "gaussian": GaussianKernel,
    "rbf": GaussianKernel,
    "laplacian": LaplacianKernel,
    "laplace": LaplacianKernel,
    "cauchy": CauchyKernel,
    "matern": MaternKernel,
    "polynomial": PolynomialKernel,
    "poly": PolynomialKernel,
    "linear": LinearKernel,
}


def get_kernel(kernel: str | Callable | Kernel, bandwidth: float | None = None, **params) -> Kernel:
    """Build a :class:`Kernel` from a name, a user callable or a ready kernel object.

    Parameters
    ----------
    kernel : str, callable or Kernel
        One of ``KERNELS`` (``"gaussian"``/``"rbf"``, ``"laplacian"``, ``"cauchy"``,
        ``"matern"``, ``"polynomial"``, ``"linear"``), a function ``(X, Z) -> matrix``, or a
        :class:`Kernel` instance (returned as is).
    bandwidth : float, optional
        Bandwidth of radial kernels; ignored by the others.
    **params
        Extra kernel parameters (``nu`` for Matern; ``degree``, ``gamma``, ``coef0`` for
        polynomial; anything for a callable).
    """
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        try:
            cls = KERNELS[kernel.lower()]
        except KeyError:
            raise ValueError(
                f"unknown kernel {kernel!r}; choose one of {sorted(KERNELS)} or pass a callable"
            ) from None
        if issubclass(cls, RadialKernel):
            params = {"bandwidth": 1.0 if bandwidth is None else bandwidth, **params}
        try:
            return cls(**params)
        except TypeError as exc:
            raise ValueError(f"bad kernel_params for kernel {kernel!r}: {exc}") from None
    if callable(kernel):
        return CallableKernel(kernel, **params)
    raise TypeError(f"kernel must be a name, a callable or a Kernel; got {type(kernel).__name__}")


#: On the CPU the kernel block of a call is computed in column tiles of about this many
#: elements (8 MiB in float32), so that the exponentials and the product with the
#: coefficients read it from cache rather than from memory: on the 2-core benchmark machine
#: this cut an MNIST-60k epoch by 13% against one full-width block.
CPU_TILE_ELEMENTS = 2**21
#: ... but never narrower than this many columns (GEMM efficiency).
MIN_TILE_COLUMNS = 512


def _column_block_size(n_rows: int, n_cols: int, max_elements: int) -> int:
    return max(1, min(n_cols, max_elements // max(n_rows, 1)))


def kernel_matmul(
    kernel: Kernel,
    X: torch.Tensor,
    Z: torch.Tensor,
    W: torch.Tensor,
    *,
    z_stats: torch.Tensor | None = None,
    max_block_elements: int = 2**24,
    keep_columns: torch.Tensor | slice | None = None,
    prepared=None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Compute ``K(X, Z) @ W`` without holding more than one kernel block in memory.

    Parameters
    ----------
    kernel : Kernel
    X : Tensor of shape (m, d)
    Z : Tensor of shape (p, d)
        Centers.
    W : Tensor of shape (p, l)
        Coefficients.
    z_stats : Tensor, optional
        ``kernel.row_stats(Z)``, precomputed once for fixed centers.
    max_block_elements : int
        Largest kernel block (rows x columns) materialised at once. On the CPU blocks are
        further cut into column tiles of about :data:`CPU_TILE_ELEMENTS`.
    prepared : optional
        ``kernel.prepare(Z, z_stats)``, computed once for fixed centers (radial kernels:
        the augmented centers of the fused distance product); overrides ``z_stats``.
    workspace : Tensor, optional
        A flat buffer reused for the kernel blocks when large enough (the solver keeps one
        across batches).
    keep_columns : LongTensor or slice, optional
        Column indices ``J`` (sorted), or a contiguous ``slice(start, stop)`` of them; when
        given, also return ``K(X, Z[J])``, copied from the blocks already computed (no second
        kernel evaluation).

    Returns
    -------
    out : Tensor of shape (m, l)
    kept : Tensor of shape (m, len(J))
        Only when ``keep_columns`` is given.
    """
    m, p = X.shape[0], Z.shape[0]
    if prepared is None:
        prepared = kernel.prepare(Z, z_stats)
    out = torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)
    kept = None
    if keep_columns is not None:
        if isinstance(keep_columns, slice):
            n_kept = keep_columns.stop - keep_columns.start
        else:
            n_kept = keep_columns.numel()
        kept = torch.empty(m, n_kept, dtype=X.dtype, device=X.device)
    # Rows in chunks only when a full-width block of at least 256 rows would not fit.
    min_rows = min(m, 256)
    cols = _column_block_size(min_rows, p, max_block_elements)
    rows = max(min_rows, max_block_elements // max(cols, 1)) if cols == p else min_rows
    rows = min(rows, m) if m else 1
    if X.device.type == "cpu":
        cols = min(cols, max(MIN_TILE_COLUMNS, CPU_TILE_ELEMENTS // rows))
    # One buffer for every block (and, passed in, for every call): fresh memory for each block
    # would be page-faulted and zeroed by the OS, a cost comparable to the exponentials.
    needed = rows * min(cols, p)
    if workspace is None or workspace.numel() < needed:
        workspace = torch.empty(needed, dtype=X.dtype, device=X.device)
    for r0 in range(0, m, rows):
        Xr = X[r0 : r0 + rows]
        x_stats = kernel.row_stats(Xr)
        for c0 in range(0, p, cols):
            c1 = min(p, c0 + cols)
            buffer = workspace[: Xr.shape[0] * (c1 - c0)].view(Xr.shape[0], c1 - c0)
            chunk = kernel.prepared_rows(prepared, c0, c1)
            block = kernel.prepared_block(Xr, x_stats, chunk, out=buffer)
            out[r0 : r0 + rows].addmm_(block, W[c0:c1])
            if kept is not None:
                _keep(block, c0, c1, keep_columns, kept[r0 : r0 + rows])
    if keep_columns is not None:
        return out, kept
    return out


def _keep(block, c0, c1, keep_columns, kept) -> None:
    """Copy the kept columns of one block (columns ``c0:c1``) into ``kept``."""
    if isinstance(keep_columns, slice):
        lo, hi = max(c0, keep_columns.start), min(c1, keep_columns.stop)
        if hi <= lo:
            return
        cols = block[:, lo - c0 : hi - c0]
        lo, hi = lo - keep_columns.start, hi - keep_columns.start
    else:
        lo, hi = torch.searchsorted(
            keep_columns, torch.tensor([c0, c1], device=keep_columns.device)
        ).tolist()
        if hi <= lo:
            return
        cols = block[:, keep_columns[lo:hi] - c0]
    kept[:, lo:hi] = cols
