"""Kernel functions evaluated blockwise on torch tensors.

A :class:`Kernel` maps two row sets ``X`` (m x d) and ``Z`` (p x d) to the block
``K(X, Z)`` (m x p) on the tensors' own device and dtype. The full n x n matrix is never
needed: :func:`kernel_matmul` multiplies ``K(X, Z) @ W`` block by block, and is the single
place where the package does blocked kernel products.

Radial kernels compute every block as one matrix product in bandwidth units about the
centers' mean (translation invariant, so features far from zero lose no precision) and apply
their profile in place.
"""

from __future__ import annotations

import contextlib
import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._device import private_cache_bytes
from .precision import bf16_products, round_to_bf16_, split_bf16

__all__ = [
    "Kernel",
    "PreparedCenters",
    "RadialKernel",
    "GaussianKernel",
    "LaplacianKernel",
    "CauchyKernel",
    "MaternKernel",
    "PolynomialKernel",
    "LinearKernel",
    "CallableKernel",
    "ScaledKernel",
    "MahalanobisKernel",
    "PrecomputedKernel",
    "KERNELS",
    "get_kernel",
    "squared_distances",
    "kernel_matmul",
]


#: Rows per chunk of the float64 reductions below (bounds their temporaries).
_REDUCTION_ROWS = 1024


def _origin(Z: torch.Tensor) -> torch.Tensor:
    """The mean of the rows of ``Z`` in float64 (zeros when ``Z`` is empty).

    Any point near the data would do: the shift is applied identically to both sides, so it
    only needs to remove the common offset, not to be exact.
    """
    total = torch.zeros(Z.shape[1], dtype=torch.float64, device=Z.device)
    for start in range(0, Z.shape[0], _REDUCTION_ROWS):
        total += Z[start : start + _REDUCTION_ROWS].sum(dim=0, dtype=torch.float64)
    return total / max(Z.shape[0], 1)


def _sq_norms(X: torch.Tensor) -> torch.Tensor:
    """Squared row norms accumulated in float64 and rounded once to ``X``'s dtype."""
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[0], _REDUCTION_ROWS):
        rows = X[start : start + _REDUCTION_ROWS].to(torch.float64)
        out[start : start + _REDUCTION_ROWS] = rows.pow(2).sum(dim=1)
    return out


@dataclass(frozen=True, eq=False)
class PreparedCenters:
    """Fixed centers in the form a kernel evaluates blocks against (:meth:`Kernel.prepare`).

    Attributes
    ----------
    data : Tensor of shape (p, k)
        The centers as the kernel wants them (radial kernels: shifted, scaled to bandwidth
        units and augmented for the one-GEMM distance product; others: the centers), with
        zero columns up to a multiple of :data:`FEATURE_MULTIPLE` for the built-in kernels.
    origin : Tensor of shape (d,) or None
        The float64 point both centers and evaluation points are shifted by (radial kernels).
    n_features : int or None
        d, the number of features of the centers before any augmentation or padding.
    """

    data: torch.Tensor
    origin: torch.Tensor | None = None
    n_features: int | None = None

    def __len__(self) -> int:
        return self.data.shape[0]

    def rows(self, start: int, stop: int) -> PreparedCenters:
        """The centers ``start:stop`` (a view, same origin)."""
        return PreparedCenters(self.data[start:stop], self.origin, self.n_features)


#: The built-in kernels' GEMM operands get zero columns up to a multiple of this many: MKL
#: multiplies operands with other widths (odd ones in float64, for instance) by code paths
#: whose rounding depends on a row's position in its block, which would make a prediction
#: depend on the rows predicted with it. Zeros change no value.
FEATURE_MULTIPLE = 8
#: bf16 parts of each squared norm in a bf16 distance product
#: (:func:`~eigenpro.precision.split_bf16`).
_NORM_PARTS = 3


def padded_width(width: int) -> int:
    """``width`` rounded up to a multiple of :data:`FEATURE_MULTIPLE` (the built-in kernels'
    GEMM operand width, e.g. for memory plans)."""
    return -(-width // FEATURE_MULTIPLE) * FEATURE_MULTIPLE


def _pad_features(X: torch.Tensor) -> torch.Tensor:
    """``X`` with zero columns up to :func:`padded_width` (``X`` itself when none are needed)."""
    width = padded_width(X.shape[1])
    if width == X.shape[1]:
        return X
    out = X.new_zeros(X.shape[0], width)
    out[:, : X.shape[1]] = X
    return out


class Kernel(ABC):
    """Base class: a positive semi-definite kernel evaluated on torch tensors.

    Subclasses implement :meth:`block` and :meth:`diag`. Blocks against fixed centers go
    through :meth:`prepare` (once per set of centers), :meth:`prepare_points` (once per row
    block) and :meth:`prepared_block` (once per tile); the defaults simply call :meth:`block`.
    """

    name = "kernel"

    @abstractmethod
    def block(self, X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        """The kernel block ``K(X, Z)`` of shape (len(X), len(Z))."""

    @abstractmethod
    def diag(self, X: torch.Tensor) -> torch.Tensor:
        """The diagonal ``k(x_i, x_i)`` for every row of ``X``."""

    def prepare(self, Z: torch.Tensor) -> PreparedCenters:
        """Preprocess fixed centers once for :meth:`prepared_block`."""
        return PreparedCenters(Z, None, Z.shape[1])

    def prepare_points(self, X: torch.Tensor, centers: PreparedCenters) -> torch.Tensor:
        """Preprocess a block of evaluation points for blocks against ``centers``."""
        return X

    def prepared_block(
        self, points: torch.Tensor, centers: PreparedCenters, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``K(X, Z)`` from :meth:`prepare_points` and :meth:`prepare` (or a :meth:`rows` slice
        of it); kernels that can write into a preallocated ``out`` of shape
        (len(points), len(centers)) do so."""
        return self.block(points, centers.data)

    def __call__(self, X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return self.block(X, Z)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class RadialKernel(Kernel):
    """A kernel ``k(x, z) = phi(|x - z| / bandwidth)`` with a positive ``bandwidth``.

    Every block is one matrix product in **bandwidth units about the centers' mean**: the
    centers are shifted by their float64 mean ``o`` and divided by the bandwidth once,
    ``v = (z - o) / h``, and augmented to ``[v, 1, c |v|^2]``; each block of points to
    ``[-2c u, c |u|^2, 1]`` with ``u = (x - o) / h``; their product is ``c |u - v|^2`` and the
    profile is applied in place (Gaussian: a clamp and an ``exp_`` over the cached tile).
    Subclasses' :meth:`profile_` receive ``c |u - v|^2`` in bandwidth units. Shifting keeps
    ``|u|^2 + |v|^2 - 2 u.v`` from cancelling when features are large against their spread
    (distances are translation invariant), and working in bandwidth units keeps every
    intermediate near 1 whatever the features' scale (1e-20 or 1e20 alike).
    """

    #: The factor ``c`` of the fused product ``c |u - v|^2`` (a power of two, so that
    #: scaling by it keeps bf16 values exact).
    distance_scale = 1.0
    #: Operands of the distance product: ``"ieee"`` or ``"bf16"`` (:mod:`eigenpro.precision`;
    #: float32 blocks only, others are computed as they are).
    _precision = "ieee"
    #: bf16 rounds ``(x - o) / h``: one origin ``o`` for every block (None: each block's
    #: centers' mean, which IEEE float32 may use since it only changes round-off).
    _fixed_origin: torch.Tensor | None = None

    @property
    def precision(self) -> str:
        """The precision of this kernel's float32 distance products."""
        return self._precision

    def with_precision(self, precision: str, origin=None) -> RadialKernel:
        """A copy of this kernel whose float32 distance products use ``precision``
        (``"ieee"`` or ``"bf16"``, :mod:`eigenpro.precision`). ``origin``: the point every
        bf16 block rounds about (the training data's mean), so that every block, on every
        rank and at prediction, is the same kernel of the same rounded points."""
        if precision not in ("ieee", "bf16"):
            raise ValueError(f"precision must be 'ieee' or 'bf16'; got {precision!r}")
        other = copy.copy(self)
        other._precision = precision
        if origin is not None:
            other._fixed_origin = torch.as_tensor(np.asarray(origin, dtype=np.float64))
        return other

    def _bf16(self, X: torch.Tensor) -> bool:
        return self._precision == "bf16" and X.dtype == torch.float32

    def __init__(self, bandwidth: float = 1.0):
        bandwidth = float(bandwidth)
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"bandwidth must be a positive finite number; got {bandwidth!r}")
        self.bandwidth = bandwidth

    @abstractmethod
    def profile_(self, scaled: torch.Tensor) -> torch.Tensor:
        """Turn ``c |u - v|^2`` (bandwidth units, with round-off of either sign) into kernel
        values, in place."""

    def _augmented(self, X: torch.Tensor, origin: torch.Tensor, *, centers: bool) -> torch.Tensor:
        """``[v, 1, c |v|^2, 0...]`` (centers) or ``[-2c u, c |u|^2, 1, 0...]`` (points),
        written into one new tensor of :func:`padded_width` (d + 2) columns with no other
        copy of ``X``."""
        n, d = X.shape
        c = self.distance_scale
        bf16 = self._bf16(X)
        extra = 2 * _NORM_PARTS if bf16 else 2
        out = torch.empty(n, padded_width(d + extra), dtype=X.dtype, device=X.device)
        out[:, d + extra :] = 0.0
        units = out[:, :d]
        torch.sub(X, origin.to(device=X.device, dtype=X.dtype), out=units)
        units.div_(self.bandwidth)  # u = (x - o) / h
        if bf16:  # consistent rounding: the norms are the rounded operands' (precision.py)
            round_to_bf16_(units)
        sq = _sq_norms(units).mul_(c)
        if bf16:
            parts = split_bf16(sq, _NORM_PARTS)
            k = _NORM_PARTS
            first, second = slice(d, d + k), slice(d + k, d + 2 * k)
            ones, norms = (first, second) if centers else (second, first)
            if not centers:
                units.mul_(-2.0 * c)
            out[:, ones] = 1.0
            out[:, norms] = parts
        elif centers:
            out[:, d] = 1.0
            out[:, d + 1] = sq
        else:
            if c != -0.5:
                units.mul_(-2.0 * c)
            out[:, d] = sq
            out[:, d + 1] = 1.0
        return out

    def prepare(self, Z: torch.Tensor) -> PreparedCenters:
        origin = self._fixed_origin if self._bf16(Z) and self._fixed_origin is not None else None
        origin = _origin(Z) if origin is None else origin.to(Z.device)
        return PreparedCenters(self._augmented(Z, origin, centers=True), origin, Z.shape[1])

    def prepare_points(self, X: torch.Tensor, centers: PreparedCenters) -> torch.Tensor:
        return self._augmented(X, centers.origin, centers=False)

    def prepared_block(self, points, centers, out=None):
        with bf16_products(points.device) if self._bf16(points) else contextlib.nullcontext():
            block = torch.mm(points, centers.data.T, out=out)
        return self.profile_(block)

    def block(self, X, Z):
        centers = self.prepare(Z)
        return self.prepared_block(self.prepare_points(X, centers), centers)

    def diag(self, X):
        return self.profile_(torch.zeros(X.shape[0], dtype=X.dtype, device=X.device))


class GaussianKernel(RadialKernel):
    """Gaussian (RBF) kernel ``exp(-|x - z|^2 / (2 bandwidth^2))``."""

    name = "gaussian"
    distance_scale = -0.5

    def profile_(self, scaled):
        # The exponent -|u - v|^2 / 2 can come out a round-off above 0: clamped, so that
        # k <= 1 and no round-off ever reaches exp as a large positive number.
        return scaled.clamp_(max=0.0).exp_()


class LaplacianKernel(RadialKernel):
    """Laplacian kernel ``exp(-|x - z| / bandwidth)`` (Euclidean norm)."""

    name = "laplacian"

    def profile_(self, scaled):
        return scaled.clamp_(min=0.0).sqrt_().neg_().exp_()


class CauchyKernel(RadialKernel):
    """Cauchy kernel ``1 / (1 + |x - z|^2 / bandwidth^2)``."""

    name = "cauchy"

    def profile_(self, scaled):
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

    def profile_(self, scaled):
        r = scaled.clamp_(min=0.0).sqrt_().mul_(math.sqrt(2.0 * self.nu))  # in place
        if self.nu == 0.5:
            return r.neg_().exp_()
        decay = torch.exp(-r)
        if self.nu == 1.5:
            poly = r.add_(1.0)
        else:  # 2.5: 1 + r + r^2 / 3
            poly = r.pow(2).div_(3.0).add_(r).add_(1.0)
        return poly.mul_(decay)


class _SquaredDistance(RadialKernel):
    """``|x - z|^2`` itself, through the radial kernels' fused product (bandwidth 1)."""

    def profile_(self, scaled):
        return scaled.clamp_(min=0.0)


def squared_distances(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``|x_i - z_j|^2``, clamped at 0.

    The radial kernels' one matrix product about the mean of ``Z``: distances do not change,
    and features far from zero (years, coordinates, timestamps) do not cancel.
    """
    return _SquaredDistance(1.0).block(X, Z)


class _GramKernel(Kernel):
    """A kernel of the inner products ``<x, z>``: one GEMM on operands padded with zero
    columns (:func:`padded_width`), then :meth:`_profile_` in place."""

    def _profile_(self, gram: torch.Tensor, d: int) -> torch.Tensor:
        return gram

    def block(self, X, Z):
        return self._profile_(X @ Z.T, X.shape[1])

    def prepare(self, Z):
        return PreparedCenters(_pad_features(Z), None, Z.shape[1])

    def prepare_points(self, X, centers):
        return _pad_features(X)

    def prepared_block(self, points, centers, out=None):
        return self._profile_(torch.mm(points, centers.data.T, out=out), centers.n_features)


class PolynomialKernel(_GramKernel):
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

    def _profile_(self, gram: torch.Tensor, d: int) -> torch.Tensor:
        return gram.mul_(self._gamma(d)).add_(self.coef0).pow_(self.degree)

    def diag(self, X):
        return (X.pow(2).sum(dim=1) * self._gamma(X.shape[1]) + self.coef0).pow_(self.degree)


class LinearKernel(_GramKernel):
    """Linear kernel ``<x, z>``."""

    name = "linear"

    def diag(self, X):
        return X.pow(2).sum(dim=1)


class CallableKernel(Kernel):
    """Wrap a user function ``fn(X, Z, **params) -> (len(X), len(Z))`` matrix.

    The function receives torch tensors on the fitting device and should return a torch
    tensor (array-likes are converted). It must be symmetric positive semi-definite for
    EigenPro to converge; its output is checked for shape and finite values.
    """

    name = "callable"

    def __init__(self, fn: Callable, **params):
        if not callable(fn):
            raise TypeError(f"kernel must be a name or a callable; got {type(fn).__name__}")
        self.fn = fn
        self.params = params

    def _describe(self) -> str:
        return f"the kernel callable {getattr(self.fn, '__name__', repr(self.fn))}"

    def block(self, X, Z):
        out = self.fn(X, Z, **self.params)
        if not isinstance(out, torch.Tensor):
            try:
                array = np.asarray(out, dtype=np.float64)
            except (TypeError, ValueError):
                array = None
            if array is None or array.ndim != 2:
                raise TypeError(
                    f"{self._describe()} returned {type(out).__name__}; it must return a "
                    f"({X.shape[0]}, {Z.shape[0]}) matrix (a torch tensor or an array)"
                )
            out = torch.from_numpy(array)
        if out.shape != (X.shape[0], Z.shape[0]):
            raise ValueError(
                f"{self._describe()} returned shape {tuple(out.shape)} for inputs with "
                f"{X.shape[0]} and {Z.shape[0]} rows; expected ({X.shape[0]}, {Z.shape[0]})"
            )
        if out.is_complex() or out.dtype == torch.bool:
            raise TypeError(f"{self._describe()} returned a {out.dtype} matrix; it must be real")
        out = out.to(device=X.device, dtype=X.dtype)
        if not torch.isfinite(out).all():
            raise ValueError(f"{self._describe()} returned NaN or infinite values")
        return out

    def diag(self, X):
        chunk = 512
        parts = [
            self.block(X[i : i + chunk], X[i : i + chunk]).diagonal()
            for i in range(0, len(X), chunk)
        ]
        return torch.cat(parts) if parts else X.new_zeros(0)


@dataclass(frozen=True, eq=False)
class _ScaledCenters(PreparedCenters):
    """The base kernel's prepared centers and each center's scale (:class:`ScaledKernel`)."""

    scale: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> _ScaledCenters:
        return _ScaledCenters(
            self.data[start:stop], self.origin, self.n_features, self.scale[start:stop]
        )


class ScaledKernel(Kernel):
    """``a b k(x, z)`` for points ``(x, a)`` whose last column is a scale ``a``.

    Sample weights are this kernel with ``a = sqrt(w)``: its matrix on the training points
    is ``S K S`` with ``S = diag(sqrt(w))``, and EigenPro on it (targets ``S y``) solves the
    weighted problem ``(W K + alpha I) c = W y`` with ``c = S c'``. Everything the solver
    derives from the kernel (eigensystem, ``beta``, steps) then accounts for the weights.

    Parameters
    ----------
    base : Kernel
        ``k``, evaluated on all columns but the last.
    """

    name = "scaled"

    def __init__(self, base: Kernel):
        self.base = base

    def block(self, X, Z):
        return self.base.block(X[:, :-1], Z[:, :-1]) * X[:, -1:] * Z[:, -1]

    def diag(self, X):
        return self.base.diag(X[:, :-1]) * X[:, -1].square()

    def prepare(self, Z):
        inner = self.base.prepare(Z[:, :-1])
        return _ScaledCenters(inner.data, inner.origin, inner.n_features, Z[:, -1].contiguous())

    def prepare_points(self, X, centers):
        return self.base.prepare_points(X[:, :-1], centers), X[:, -1:].contiguous()

    def prepared_block(self, points, centers, out=None):
        inner, scale = points
        block = self.base.prepared_block(inner, centers, out=out)
        if isinstance(self.base, CallableKernel):  # the user's tensor: not in place
            return block * scale * centers.scale
        return block.mul_(scale).mul_(centers.scale)


class MahalanobisKernel(Kernel):
    """A radial kernel in a metric ``M``: ``k_M(x, z) = phi(|x - z|_M / bandwidth)`` with
    ``|v|_M^2 = v^T M v`` (the kernel of Recursive Feature Machines,
    :mod:`eigenpro.feature_learning`).

    The metric is folded into the operands once, ``x -> x T`` with ``T = M^(1/2)``: blocks,
    prepared centers and the offset-invariant distance product are the base kernel's on the
    mapped points.

    Parameters
    ----------
    base : RadialKernel
        ``phi`` and the bandwidth.
    metric : array-like of shape (d, d) or (d,)
        Symmetric positive semi-definite ``M``, or its diagonal.
    """

    name = "mahalanobis"

    def __init__(self, base: RadialKernel, metric):
        if not isinstance(base, RadialKernel):
            raise TypeError(f"base must be a radial kernel; got {base!r}")
        from .feature_learning import metric_root

        metric = np.asarray(metric, dtype=np.float64)
        if metric.ndim not in (1, 2) or (metric.ndim == 2 and metric.shape[0] != metric.shape[1]):
            raise ValueError(f"metric must be (d, d) or (d,); got shape {metric.shape}")
        if not np.isfinite(metric).all():
            raise ValueError("metric contains NaN or infinite values")
        self.base = base
        self.metric = metric
        root = metric_root(metric)
        self._root = torch.from_numpy(np.diag(root) if root.ndim == 1 else root)

    @property
    def bandwidth(self) -> float:
        return self.base.bandwidth

    def _map(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[1] != self._root.shape[0]:
            raise ValueError(
                f"X has {X.shape[1]} features, but the metric is {self._root.shape[0]} x "
                f"{self._root.shape[0]}"
            )
        return X @ self._root.to(device=X.device, dtype=X.dtype)

    def block(self, X, Z):
        return self.base.block(self._map(X), self._map(Z))

    def diag(self, X):
        return self.base.diag(self._map(X))

    def prepare(self, Z):
        return self.base.prepare(self._map(Z))

    def prepare_points(self, X, centers):
        return self.base.prepare_points(self._map(X), centers)

    def prepared_block(self, points, centers, out=None):
        return self.base.prepared_block(points, centers, out=out)


class PrecomputedKernel(Kernel):
    """Entries of a given kernel matrix; a point is its row index, as a one-column tensor.

    For users who already hold ``K`` (``kernel="precomputed"``): the solver's points are
    ``[[0.], [1.], ...]`` and a block is ``matrix[rows][:, columns]``, gathered tile by
    tile. The matrix is copied once to each device and dtype it is used on.

    Parameters
    ----------
    matrix : Tensor of shape (n, n)
        Symmetric positive semi-definite.
    """

    name = "precomputed"

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self._copies: dict = {}

    def _on(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._copies:
            self._copies[key] = self.matrix.to(device=like.device, dtype=like.dtype)
        return self._copies[key]

    def block(self, X, Z):
        rows, columns = X[:, 0].long(), Z[:, 0].long()
        return self._on(X)[rows[:, None], columns[None, :]]

    def diag(self, X):
        return self._on(X).diagonal()[X[:, 0].long()]

    def __repr__(self) -> str:
        return f"PrecomputedKernel(matrix of shape {tuple(self.matrix.shape)})"

    def __getstate__(self):  # pickles without the device copies
        return {"matrix": self.matrix, "_copies": {}}


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


#: On the CPU the kernel block of a call is computed in column tiles small enough that the
#: exponentials and the product with the coefficients read the tile from cache rather than
#: from memory: all threads' shares together fit in the cores' private caches
#: (:func:`~eigenpro._device.private_cache_bytes` x torch's threads, 2 MiB on the 2-core
#: benchmark machines). An earlier fixed 8 MiB, sized to a shared 32 MiB L3 that other
#: tenants of a cloud machine evict, ran 13-30% slower there (MNIST 30k, batches of 500:
#: 10.5-13.7 s against 8.7-9.6 s for the products of an epoch). Set an int to override.
CPU_TILE_ELEMENTS: int | None = None
#: ... but never narrower than this many columns (GEMM efficiency).
MIN_TILE_COLUMNS = 512
#: Row count for which row-invariant products (:func:`kernel_matmul` with
#: ``row_invariant=True``) size their column tiles, whatever the number of rows.
INVARIANT_TILE_ROWS = 1024
#: Row-invariant products on the CPU multiply row blocks padded to a multiple of this many
#: rows, by coefficients padded with zero columns to a multiple of this many: MKL takes other
#: code paths (other summation orders) for a handful of rows or columns and for row counts
#: off a multiple of 4, and then a row's result depends on how many rows come with it.
GEMM_MULTIPLE = 16
#: On the CPU, float32 products by a factor of 2 to 15 columns are computed on that factor
#: padded with zero columns to this many: MKL's path for so few columns (MNIST's 10 classes)
#: ran 2-4x slower than its 16-column path on the AMD EPYC benchmark machine (a 508 x 516
#: kernel tile by 516 x 10 coefficients: 384 against 97 us, 8% of an epoch). One column (a
#: matrix-vector product) and float64 gained nothing there, and are left alone.
NARROW_GEMM_COLUMNS = 16


def cpu_tile_elements(itemsize: int) -> int:
    """Elements of one CPU column tile (:data:`CPU_TILE_ELEMENTS`) for ``itemsize``-byte
    entries."""
    if CPU_TILE_ELEMENTS is not None:
        return CPU_TILE_ELEMENTS
    return max(1, private_cache_bytes() * torch.get_num_threads() // itemsize)


def gemm_width(n_cols: int, like: torch.Tensor) -> int:
    """Columns to compute a product by an ``n_cols``-column factor like ``like`` with
    (:data:`NARROW_GEMM_COLUMNS`)."""
    narrow = 2 <= n_cols < NARROW_GEMM_COLUMNS
    if narrow and like.device.type == "cpu" and like.dtype == torch.float32:
        return NARROW_GEMM_COLUMNS
    return n_cols


def pad_columns(B: torch.Tensor, width: int) -> torch.Tensor:
    """``B`` with zero columns appended up to ``width`` columns (``B`` itself if as wide)."""
    if B.shape[1] >= width:
        return B
    return torch.cat([B, B.new_zeros(B.shape[0], width - B.shape[1])], dim=1)


def narrow_mm(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A @ B``, with ``B`` padded to :func:`gemm_width` columns where that is faster (a
    view of the result's first columns is returned)."""
    width = gemm_width(B.shape[1], B)
    if width == B.shape[1]:
        return A @ B
    return (A @ pad_columns(B, width))[:, : B.shape[1]]


def _tile_shape(
    m: int, p: int, max_block_elements: int, device: torch.device, sized_for: int,
    itemsize: int = 4,
) -> tuple[int, int]:  # fmt: skip
    """(rows per chunk, columns per tile) of a blocked ``K(X, Z) @ W`` with m x p entries,
    the column tiles sized as if the call had ``sized_for`` rows."""
    # Rows in chunks only when a full-width block of at least 256 rows would not fit.
    base = max(1, min(sized_for, 256))
    cols = max(1, min(p, max_block_elements // base))
    rows = max(base, max_block_elements // cols) if cols == p else base
    if device.type == "cpu":
        tile = cpu_tile_elements(itemsize)
        cols = min(cols, max(MIN_TILE_COLUMNS, tile // min(rows, sized_for)))
    return max(1, min(rows, m)), max(1, cols)


def kernel_matmul(
    kernel: Kernel,
    X: torch.Tensor,
    Z: torch.Tensor | None,
    W: torch.Tensor,
    *,
    max_block_elements: int = 2**24,
    keep_columns: torch.Tensor | slice | None = None,
    prepared: PreparedCenters | None = None,
    workspace: torch.Tensor | None = None,
    row_invariant: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Compute ``K(X, Z) @ W`` without holding more than one kernel block in memory.

    Parameters
    ----------
    kernel : Kernel
    X : Tensor of shape (m, d)
    Z : Tensor of shape (p, d) or None
        Centers (None when ``prepared`` is given).
    W : Tensor of shape (p, l)
        Coefficients.
    max_block_elements : int
        Largest kernel block (rows x columns) materialised at once. On the CPU blocks are
        further cut into column tiles of about :func:`cpu_tile_elements`.
    keep_columns : LongTensor or slice, optional
        Column indices ``J`` (sorted), or a contiguous ``slice(start, stop)`` of them; when
        given, also return ``K(X, Z[J])``, copied from the blocks already computed (no second
        kernel evaluation).
    prepared : PreparedCenters, optional
        ``kernel.prepare(Z)``, computed once for fixed centers.
    workspace : Tensor, optional
        A flat buffer reused for the kernel blocks when large enough (the solver keeps one
        across batches).
    row_invariant : bool, default=False
        Make every row of the result independent of the other rows of ``X``: the tiling does
        not depend on ``m`` and, on the CPU, row blocks and coefficient columns are padded to
        multiples of :data:`GEMM_MULTIPLE`. Predictions use it, so that a row predicted alone
        equals the same row predicted in a batch, bit for bit (checked by the test suite on
        the MKL build of torch; GPUs make no such promise).

    Returns
    -------
    out : Tensor of shape (m, l)
    kept : Tensor of shape (m, len(J))
        Only when ``keep_columns`` is given.
    """
    m = X.shape[0]
    if prepared is None:
        prepared = kernel.prepare(Z)
    p = len(prepared)
    out = torch.zeros(m, W.shape[1], dtype=W.dtype, device=W.device)
    kept = None
    if keep_columns is not None:
        if isinstance(keep_columns, slice):
            n_kept = keep_columns.stop - keep_columns.start
        else:
            n_kept = keep_columns.numel()
        kept = torch.empty(m, n_kept, dtype=X.dtype, device=X.device)
    if m == 0:
        return out if kept is None else (out, kept)
    sized_for = INVARIANT_TILE_ROWS if row_invariant else m
    rows, cols = _tile_shape(m, p, max_block_elements, X.device, sized_for, X.element_size())
    multiple = 1
    n_out = W.shape[1]
    width = gemm_width(n_out, W)
    if row_invariant and X.device.type == "cpu":
        multiple = GEMM_MULTIPLE
        rows = max(multiple, rows // multiple * multiple)
        width = -(-n_out // multiple) * multiple
    W = pad_columns(W, width)
    # One buffer for every block (and, passed in, for every call): fresh memory for each block
    # would be page-faulted and zeroed by the OS, a cost comparable to the exponentials.
    tiles = _column_tiles(p, cols, keep_columns)
    direct = keep_columns if multiple == 1 else None  # a kept slice, computed where it is kept
    needed = rows * max((c1 - c0 for c0, c1 in tiles if not _is_slice(direct, c0, c1)), default=0)
    if workspace is None or workspace.numel() < needed:
        workspace = torch.empty(needed, dtype=X.dtype, device=X.device)
    for r0 in range(0, m, rows):
        Xr = X[r0 : r0 + rows]
        n_real = Xr.shape[0]
        acc = out[r0 : r0 + n_real]
        padded = -(-n_real // multiple) * multiple
        if padded != n_real:  # pad with copies of a real row; their results are dropped
            Xr = torch.cat([Xr, Xr[:1].expand(padded - n_real, -1)])
        if Xr.shape[0] != n_real or W.shape[1] != n_out:
            acc = torch.zeros(Xr.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
        points = kernel.prepare_points(Xr, prepared)
        for c0, c1 in tiles:
            into_kept = _is_slice(direct, c0, c1)
            if into_kept:  # rows are never padded here: the block is exactly the kept rows
                buffer = kept[r0 : r0 + n_real]
            else:
                buffer = workspace[: Xr.shape[0] * (c1 - c0)].view(Xr.shape[0], c1 - c0)
            block = kernel.prepared_block(points, prepared.rows(c0, c1), out=buffer)
            acc.addmm_(block, W[c0:c1])
            # Kernels free to ignore ``out`` (precomputed, user callables) are copied.
            if kept is not None and not (into_kept and block.data_ptr() == buffer.data_ptr()):
                _keep(block[:n_real], c0, c1, keep_columns, kept[r0 : r0 + n_real])
        if acc.shape != (n_real, n_out):
            out[r0 : r0 + n_real] = acc[:n_real, :n_out]
    if keep_columns is not None:
        return out, kept
    return out


def _is_slice(keep_columns, c0: int, c1: int) -> bool:
    """Whether ``keep_columns`` is the slice ``c0:c1``."""
    return isinstance(keep_columns, slice) and (keep_columns.start, keep_columns.stop) == (c0, c1)


def _column_tiles(p: int, cols: int, keep_columns) -> list[tuple[int, int]]:
    """Column ranges of tiles of at most ``cols`` columns covering ``0:p``; a kept slice of
    columns is one tile of its own (written straight into the kept block, 1.5% of a MNIST
    10k epoch saved against copying it out of cache-sized tiles)."""
    if not isinstance(keep_columns, slice) or keep_columns.stop <= keep_columns.start:
        return _even_tiles(0, p, cols)
    lo, hi = keep_columns.start, keep_columns.stop
    return _even_tiles(0, lo, cols) + [(lo, hi)] + _even_tiles(hi, p, cols)


def _even_tiles(lo: int, hi: int, cols: int) -> list[tuple[int, int]]:
    """``lo:hi`` in the fewest tiles of at most ``cols`` columns, of near-equal widths (no
    narrow last tile, on which GEMM is slow) that are multiples of :data:`GEMM_MULTIPLE`
    but for the last: a block's rows then start at aligned addresses. Tiles 509 columns wide
    (MNIST 60k, batches of 686) took 11% longer than 512 or 496 (GEMM, ``exp_`` and the
    product with the coefficients, fastest of 8)."""
    if hi <= lo:
        return []
    if hi - lo <= cols:
        return [(lo, hi)]
    unit = GEMM_MULTIPLE if cols >= GEMM_MULTIPLE else 1
    units = -(-(hi - lo) // unit)
    n_tiles = -(-units // (cols // unit))
    bounds = [min(hi, lo + units * i // n_tiles * unit) for i in range(n_tiles + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


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
