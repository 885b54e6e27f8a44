"""The EigenPro 3 iteration: preconditioned SGD for a model on p general centers.

The model is ``f = sum_j theta_j k(z_j, .)`` over centers ``Z`` (p x d) chosen independently
of the n training points (Abedsoltan, Belkin & Pandit, ICML 2023). Memory is O(p), work per
epoch O(np + p^2).

**Iteration.** Besides the coefficients ``theta`` the solver keeps ``b``, the values at the
centers of the functional-gradient iterate, ``b = K(Z, Z) theta`` at convergence. On a data
batch ``B`` of m points (``g = K(X_B, Z) theta - Y_B``, m x l)::

    v  = K(Z, X_B) g  (+ ridge * m/n * b)                     # gradient, evaluated at Z
    c  = D E^T (K(X_S, X_B) g  (+ ridge * m/n * b_S))         # data preconditioner, q x l
    b -= (eta / m) * (v - K(Z, X_S) E c)                      # preconditioned gradient at Z

that is, EigenPro's preconditioned functional gradient evaluated at the centers; the
projection onto span{k(z_j, .)} is ``theta = K(Z, Z)^{-1} b``. It is computed by an inner
EigenPro 2 iteration on ``K(Z, Z) theta = b`` with its own preconditioner (on a subsample of
the centers), warm-started: ``theta`` is carried over from step to step and a few inner
steps per data batch track the slowly moving ``b``.

The preconditioner's Nystrom subsample ``X_S`` is drawn from the centers. With
``n_centers=int`` those are a uniform subsample of the data, so this is EigenPro 3's data
preconditioner; in every case its eigenfunctions then lie in span{k(z_j, .)}, the
preconditioner commutes with the projection, and the fixed point is exactly the least-squares
solution on the centers, ``K(Z, X) (K(X, Z) theta - Y) + ridge K(Z, Z) theta = 0``.

**Streaming.** The data stay on the host (:class:`~eigenpro.streaming.HostData`); each batch
is gathered, checked and moved to the device on its own.

**Sharding.** With a :class:`~eigenpro.distributed.Communicator` over several ranks, each rank
holds a contiguous slice of ``Z``, ``theta``, ``b`` and ``K(Z, X_S) E``. Every rank draws the
same batches; the partial products ``K(X_B, Z_r) theta_r``, ``K(X_B, X_{S_r}) E_r`` and those
of the first inner step (and the coordinates of the next inner batch) travel in one
``all_reduce`` per data batch; each further inner step costs one more. Each rank updates only
its own slice, so a run on R ranks computes the same iterates as one process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .distributed import Communicator
from .kernels import Kernel, kernel_matmul, padded_width
from .preconditioner import (
    BETA_PROBES,
    EigenProPreconditioner,
    build_preconditioner,
    default_max_components,
    default_subsample_size,
    preconditioned_top_eigenvalue,
)
from .solver import (
    CPU_MAX_BATCH,
    MIN_EPOCH_BATCHES,
    DivergenceGuard,
    EpochLoss,
    ValidationTracker,
    check_step_size,
    final_check_rows,
    running_loss_ok,
    subsample_size_for_budget,
)
from .streaming import HostData

__all__ = [
    "EigenPro3Result",
    "MemoryPlan3",
    "INNER_KEYS",
    "fit_eigenpro3",
    "memory_plan3",
]

#: Keys accepted in ``inner`` (each "auto" by default).
INNER_KEYS = ("method", "n_components", "subsample_size", "batch_size", "step_size", "n_steps")
#: ``n_steps="auto"`` runs enough inner steps for this many passes over the centers per epoch.
INNER_PASSES_PER_EPOCH = 2
#: ... and at least this many per data batch. One step rides on the data step's all_reduce,
#: so a sharded fit then costs one all_reduce per batch. Measured against two steps (synthetic,
#: n = 20000, d = 8, p = 2000, 20 epochs, float64): the same test MSE (0.00289 against
#: 0.00290) in 0.55x the time.
MIN_INNER_STEPS = 1
#: ``method="auto"`` projects with an exact Cholesky factor up to this many centers.
CHOLESKY_MAX_CENTERS = 8000
#: Jitter of that factor, relative to the largest diagonal, per training dtype.
CHOLESKY_JITTER = {torch.float32: 1e-6, torch.float64: 1e-12}
#: Data points on which the preconditioned operator's top eigenvalue is measured.
CALIBRATION_SAMPLE = 2000
#: The automatic step is multiplied by this when the projection is tracked by inner steps:
#: a lagging ``theta`` makes the coupled iteration stable only up to half the usual step.
TRACKING_SAFETY = 0.5


@dataclass
class MemoryPlan3:
    """Batch and block sizes of the EigenPro 3 solver on one rank.

    Attributes
    ----------
    max_batch_size : int
        Largest data batch whose kernel block against the local centers fits.
    max_inner_batch_size : int
        The same for a batch of centers (inner iteration).
    max_block_elements : int
        Largest kernel block materialised at once.
    """

    max_batch_size: int
    max_inner_batch_size: int
    max_block_elements: int


def memory_plan3(
    n_local_centers: int,
    n_features: int,
    n_outputs: int,
    subsample_size: int,
    inner_subsample_size: int,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
) -> MemoryPlan3:
    """Split ``memory_budget`` bytes between the model and one batch.

    Fixed: the local centers and their prepared form (p_r x (d + d + 2), the second rounded
    up by :func:`~eigenpro.kernels.padded_width`), ``theta``, ``b``, their
    snapshots at the start of the epoch and of the best epoch and the best validated ``theta``
    (7 p_r l), ``K(Z_r, X_S) E`` (p_r x q) and both preconditioners (s x (q + d)). Per batch
    row: a row of the kernel block and a temporary (2 p_r), the batch, its targets and
    residual, and its projections on both eigenbases.
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    q_out = default_max_components(subsample_size) + 1
    q_in = default_max_components(inner_subsample_size) + 1
    p = n_local_centers
    fixed = itemsize * (
        p * (n_features + padded_width(n_features + 2) + 7 * n_outputs + q_out)
        + subsample_size * (q_out + n_features)
        + inner_subsample_size * (q_in + n_features)
    )
    free = max(memory_budget - fixed, 0)
    per_row = itemsize * (2 * p + n_features + 3 * n_outputs + q_out + q_in)
    batch = max(1, free // per_row)
    if device.type == "cpu":
        batch = min(batch, CPU_MAX_BATCH)
    block = max(2**16, free // (2 * itemsize))
    return MemoryPlan3(int(batch), int(batch), int(block))


@dataclass
class EigenPro3Result:
    """What :func:`fit_eigenpro3` returns.

    Attributes
    ----------
    coef : Tensor of shape (p, l)
        All coefficients (gathered from every rank), on the CPU.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``inner_loss`` (mean squared residual of
        ``K(Z, Z) theta = b`` over the inner steps, relative to the mean square of ``b``),
        ``val_score``, ``seconds``, ``step_size``.
    n_epochs, best_epoch : int
    inner_method : str
        "eigenpro" or "cholesky".
    batch_size, inner_batch_size, inner_steps : int
    step_size, inner_step_size : float
        Final values (halved when divergence was recovered).
    preconditioner, inner_preconditioner : EigenProPreconditioner
        Their ``subsample_indices`` are positions among the centers.
    """

    coef: torch.Tensor
    history: list[dict] = field(default_factory=list)
    n_epochs: int = 0
    best_epoch: int = 0
    batch_size: int = 0
    step_size: float = 0.0
    inner_method: str = ""
    inner_batch_size: int = 0
    inner_step_size: float = 0.0
    inner_steps: int = 0
    preconditioner: EigenProPreconditioner | None = None
    inner_preconditioner: EigenProPreconditioner | None = None


@dataclass
class _LocalBasis:
    """A preconditioner's eigenbasis restricted to this rank's slice of the centers."""

    positions: torch.Tensor  # sorted positions of the subsample in the local slice
    vectors: torch.Tensor  # the matching rows of E
    scales: torch.Tensor  # D
    n_components: int


def _center_preconditioner(
    kernel: Kernel,
    centers: torch.Tensor,
    lo: int,
    hi: int,
    *,
    n_components,
    subsample_size: int,
    max_batch_size: int,
    ridge: float,
    n_train: int,
    rng: np.random.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[EigenProPreconditioner, _LocalBasis, torch.Tensor]:
    """Build a preconditioner on a random subsample of the (host) centers.

    Returns the preconditioner (subsample indices mapped to positions among all centers),
    its restriction to the slice ``[lo, hi)``, and the subsample's coordinates on the device.
    """
    p = centers.shape[0]
    pool_idx = np.sort(rng.choice(p, size=min(p, subsample_size + BETA_PROBES), replace=False))
    pool = centers[torch.from_numpy(pool_idx)].to(device)
    precond = build_preconditioner(
        kernel,
        pool,
        n_components=n_components,
        subsample_size=subsample_size,
        max_batch_size=max_batch_size,
        ridge=ridge,
        n_train=n_train,
        rng=rng,
        dtype=dtype,
    )
    in_pool = precond.subsample_indices
    sub_coords = pool[in_pool]
    glob = torch.as_tensor(pool_idx, device=device)[in_pool]  # sorted, as pool_idx is
    precond.subsample_indices = glob
    mask = (glob >= lo) & (glob < hi)
    local = _LocalBasis(
        positions=glob[mask] - lo,
        vectors=precond.eigenvectors[mask],
        scales=precond.scales,
        n_components=precond.n_components,
    )
    return precond, local, sub_coords


def _calibrate_tail(
    kernel: Kernel,
    data: HostData,
    precond: EigenProPreconditioner,
    sub_coords: torch.Tensor,
    ridge: float,
    rng: np.random.Generator,
    device: torch.device,
) -> EigenProPreconditioner:
    """Raise ``tail_eigenvalue`` to the top eigenvalue of the preconditioned operator measured
    on a fresh sample of the data.

    The eigensystem comes from a subsample of the centers, which can be much smaller than the
    data: deep eigenvalues are then underestimated and the EigenPro 2 step (about
    ``1 / lambda_{q+1}``) would diverge. On a data sample ``X_P`` of size ``s_p``, the
    preconditioned operator is the symmetric matrix
    ``(K_PP - K_PS E D E^T K_SP) / s_p``; its top eigenvalue (plus ``ridge / n``) replaces
    ``lambda_{q+1}`` when larger, which sets the critical batch and the step.
    """
    n = data.n_samples
    size = min(n, CALIBRATION_SAMPLE)
    probe = data.take(np.sort(rng.choice(n, size=size, replace=False)), torch.float64, device)
    measured = (
        preconditioned_top_eigenvalue(
            kernel, probe, sub_coords, precond.eigenvectors, precond.scales
        )
        + ridge / n
    )
    if measured <= precond.tail_eigenvalue:
        return precond
    return dataclasses.replace(precond, tail_eigenvalue=measured)


class _InnerBatches:
    """Endless sorted batches of center indices: consecutive slices of fresh permutations."""

    def __init__(self, p: int, batch_size: int, rng: np.random.Generator):
        self.p, self.batch_size, self.rng = p, batch_size, rng
        self._order, self._pos = rng.permutation(p), 0

    def next(self) -> np.ndarray:
        if self._pos >= self.p:
            self._order, self._pos = self.rng.permutation(self.p), 0
        idx = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return np.sort(idx)


class _Shard:
    """This rank's slice of the model and the steps that read and update it."""

    def __init__(self, kernel, centers, lo, hi, n_outputs, device, dtype, comm, max_block):
        self.kernel, self.lo, self.hi, self.comm = kernel, lo, hi, comm
        self.device, self.dtype, self.max_block = device, dtype, max_block
        self.centers_host = centers
        self.Z = centers[lo:hi].to(device)
        self.prepared = kernel.prepare(self.Z)  # once: the fused form of the local centers
        self.theta = torch.zeros(hi - lo, n_outputs, dtype=dtype, device=device)
        self.target = torch.zeros_like(self.theta)  # b

    # -------------------------------------------------------------- helpers
    def owned(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of a global index batch that this rank owns: (rows in the batch, local rows)."""
        idx_t = torch.as_tensor(idx, device=self.device)
        rows = torch.nonzero((idx_t >= self.lo) & (idx_t < self.hi)).flatten()
        return rows, idx_t[rows] - self.lo

    def coordinates(self, idx: np.ndarray) -> torch.Tensor:
        """The rows of this rank's centers at ``idx``, zeros elsewhere (summed over ranks:
        the coordinates of the whole batch)."""
        if not self.comm.is_distributed:
            return self.Z[torch.as_tensor(idx, device=self.device) - self.lo]
        out = torch.zeros(len(idx), self.Z.shape[1], dtype=self.dtype, device=self.device)
        rows, local = self.owned(idx)
        out[rows] = self.Z[local]
        return out

    def reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum every tensor over the ranks with a single all_reduce."""
        if not self.comm.is_distributed:
            return tensors
        flat = self.comm.all_reduce_(torch.cat([t.reshape(-1) for t in tensors]))
        chunks = flat.split([t.numel() for t in tensors])
        return [c.view_as(t) for c, t in zip(chunks, tensors, strict=True)]

    def products(self, X: torch.Tensor, basis: _LocalBasis | None):
        """Partial ``K(X, Z_r) theta_r`` and :meth:`subsample_part` (None without a basis)."""
        if basis is None or basis.n_components == 0:
            pred = kernel_matmul(
                self.kernel, X, None, self.theta, prepared=self.prepared,
                max_block_elements=self.max_block,
            )  # fmt: skip
            return pred, None
        pred, kept = kernel_matmul(
            self.kernel, X, None, self.theta, prepared=self.prepared,
            max_block_elements=self.max_block, keep_columns=basis.positions,
        )  # fmt: skip
        return pred, self.subsample_part(kept, basis)

    def subsample_part(self, kmat_subsample: torch.Tensor, basis: _LocalBasis) -> torch.Tensor:
        """What a batch contributes to the preconditioner, from ``K(X_B, X_{S_r})``.

        On several ranks, the partial projection ``K(X_B, X_{S_r}) E_r`` (m x q), summed by
        the batch's one all_reduce; on one rank ``K(X_B, X_S)`` itself, which
        :meth:`basis_coordinates` multiplies by the residual first (``m s l`` operations
        instead of ``m s q``).
        """
        if self.comm.is_distributed:
            return kmat_subsample @ basis.vectors
        return kmat_subsample

    def basis_coordinates(
        self, part: torch.Tensor, basis: _LocalBasis, residual: torch.Tensor
    ) -> torch.Tensor:
        """``E^T K(X_S, X_B) r`` (q x l) from the summed :meth:`subsample_part`."""
        if self.comm.is_distributed:
            return part.T @ residual
        return basis.vectors.T @ (part.T @ residual)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """``K(X, Z) theta`` summed over the ranks."""
        return self.reduce([self.products(X, None)[0]])[0]

    def gather_coef(self) -> torch.Tensor:
        full = torch.zeros(
            self.centers_host.shape[0], self.theta.shape[1], dtype=self.dtype, device=self.device
        )
        full[self.lo : self.hi] = self.theta
        return self.reduce([full])[0].cpu()


def _check_inner(inner: dict | None) -> dict:
    inner = dict(inner or {})
    unknown = set(inner) - set(INNER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown inner setting(s) {sorted(unknown)}; valid keys are {list(INNER_KEYS)}"
        )
    for key in INNER_KEYS:
        inner.setdefault(key, "auto")
    if inner["method"] not in ("auto", "eigenpro", "cholesky"):
        raise ValueError(
            f"inner method must be 'auto', 'eigenpro' or 'cholesky'; got {inner['method']!r}"
        )
    for key in ("subsample_size", "batch_size", "n_steps"):
        value = inner[key]
        if value != "auto" and not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"inner {key} must be 'auto' or a positive integer; got {value!r}")
    value = inner["n_components"]
    if value != "auto" and not (isinstance(value, (int, np.integer)) and value >= 0):
        raise ValueError(f"inner n_components must be 'auto' or an integer >= 0; got {value!r}")
    value = inner["step_size"]
    if value != "auto" and not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"inner step_size must be 'auto' or a positive number; got {value!r}")
    return inner


def _subsample(value, p: int, name: str, sized: int | None = None) -> int:
    """The requested subsample size, or the automatic one (``sized``: already fitted to the
    memory budget)."""
    if value == "auto":
        s = default_subsample_size(p) if sized is None else sized
    else:
        s = int(value)
    if not 1 <= s <= p:
        raise ValueError(f"{name}={s} must be between 1 and the number of centers ({p})")
    return s


class _CholeskyProjector:
    """``theta = (K(Z, Z) + jitter I)^{-1} b`` after every data step, by a Cholesky factor.

    For small p in a single process. The jitter (relative to the largest diagonal, grown
    until the factorisation succeeds) changes how fast the tiniest eigendirections move, not
    the fixed point: that is set by the data step on ``b`` alone.
    """

    method = "cholesky"

    def __init__(self, shard: _Shard):
        self.shard = shard
        kmat = shard.kernel(shard.Z, shard.Z)
        if not torch.isfinite(kmat).all():
            raise ValueError("the kernel matrix of the centers contains NaN or infinite values")
        scale = float(kmat.diagonal().abs().max()) or 1.0
        jitter = CHOLESKY_JITTER[shard.dtype] * scale
        for _ in range(8):
            factor, info = torch.linalg.cholesky_ex(
                kmat + jitter * torch.eye(len(kmat), dtype=kmat.dtype, device=kmat.device)
            )
            if int(info) == 0:
                break
            jitter *= 10
        else:
            raise ValueError(
                "the kernel matrix of the centers is not positive definite even with a jitter "
                f"of {jitter:.1e}; check the kernel, or use inner={{'method': 'eigenpro'}}"
            )
        self.factor, self.jitter = factor, jitter
        self.step_size = 0.0

    def fused_parts(self) -> list[torch.Tensor]:
        return []

    def absorb(self, parts: list[torch.Tensor]) -> None:
        pass

    def after_data_step(self) -> None:
        self.shard.theta.copy_(torch.cholesky_solve(self.shard.target, self.factor))

    def take_loss(self) -> float:
        return 0.0


class _EigenProProjector:
    """Track ``theta = K(Z, Z)^{-1} b`` by warm-started EigenPro 2 steps on batches of centers.

    Its first step of every data batch rides on the data step's all_reduce (it only reads
    ``theta``); each reduction also brings the coordinates of the next batch of centers.
    """

    method = "eigenpro"

    def __init__(self, shard, precond, basis, batch_size, step_size, n_steps, rng):
        self.shard, self.precond, self.basis = shard, precond, basis
        self.batch_size, self.step_size, self.n_steps = batch_size, step_size, n_steps
        self.batches = _InnerBatches(shard.centers_host.shape[0], batch_size, rng)
        self.idx = self.batches.next()
        self.coords = shard.reduce([shard.coordinates(self.idx)])[0]
        self._next = None
        self._has_proj = basis.n_components > 0
        self._total = torch.zeros((), dtype=torch.float64, device=shard.device)
        self._count = 0

    def fused_parts(self) -> list[torch.Tensor]:
        shard = self.shard
        pred, proj = shard.products(self.coords, self.basis)
        rows, local = shard.owned(self.idx)
        pred[rows] -= shard.target[local]  # summed over ranks: K(Z_I, Z) theta - b_I
        self._next = self.batches.next()
        return [pred] + ([proj] if self._has_proj else []) + [shard.coordinates(self._next)]

    def absorb(self, parts: list[torch.Tensor]) -> None:
        shard, basis = self.shard, self.basis
        residual, next_coords = parts[0], parts[-1]
        rate = self.step_size / self.batch_size
        rows, local = shard.owned(self.idx)
        shard.theta.index_add_(0, local, residual[rows], alpha=-rate)
        if self._has_proj:
            coords = shard.basis_coordinates(parts[1], basis, residual)
            change = basis.vectors @ (basis.scales.unsqueeze(1) * coords)
            shard.theta.index_add_(0, basis.positions, change, alpha=rate)
        self._total += residual.pow(2).sum(dtype=torch.float64)
        self._count += residual.numel()
        self.idx, self.coords = self._next, next_coords

    def after_data_step(self) -> None:
        for _ in range(self.n_steps - 1):
            self.absorb(self.shard.reduce(self.fused_parts()))

    def take_loss(self) -> float:
        """Mean squared inner residual since the last call, relative to the mean square of b."""
        shard = self.shard
        b_square = shard.reduce([shard.target.pow(2).sum(dtype=torch.float64).reshape(1)])[0]
        b_mean = max(float(b_square) / shard.target.shape[1] / shard.centers_host.shape[0], 1e-30)
        loss = float(self._total) / max(self._count, 1) / b_mean
        self._total.zero_()
        self._count = 0
        return loss


def fit_eigenpro3(
    kernel: Kernel,
    data: HostData,
    targets: torch.Tensor,
    centers: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    n_epochs: int,
    memory_budget: int,
    batch_size: int | str = "auto",
    step_size: float | str = "auto",
    n_components: int | str = "auto",
    subsample_size: int | str = "auto",
    inner: dict | None = None,
    ridge: float = 0.0,
    rng: np.random.Generator | None = None,
    comm: Communicator | None = None,
    validation: tuple[torch.Tensor, Callable[[torch.Tensor], float]] | None = None,
    n_iter_no_change: int | None = None,
    callback: Callable[[int, Callable[[torch.Tensor], torch.Tensor]], dict | None] | None = None,
    verbose: int = 0,
    no_exact_fit: str | None = None,
) -> EigenPro3Result:
    """Fit ``f = sum_j theta_j k(z_j, .)`` on general centers with EigenPro 3.

    Parameters
    ----------
    kernel : Kernel
    data : HostData
        Training points, kept on the host and streamed batch by batch.
    targets : Tensor of shape (n, l)
        On the host, in the training dtype.
    centers : Tensor of shape (p, d)
        On the host, in the training dtype (each rank moves only its slice to the device).
    device, dtype : torch.device, torch.dtype
    n_epochs : int
        Passes over the data.
    memory_budget : int
        Bytes available on the device (per rank).
    batch_size, step_size, n_components, subsample_size : "auto" or number
        Data batch ``m``, step ``eta``, and the data preconditioner's ``q`` and ``s``.
    inner : dict, optional
        Projection settings, each "auto" by default. ``method``: ``"eigenpro"`` (the inner
        EigenPro 2 iteration on ``K(Z, Z) theta = b``) or ``"cholesky"`` (an exact factor, for
        small p in one process); ``"auto"`` takes the factor when ``p <=``
        :data:`CHOLESKY_MAX_CENTERS` and it fits in a quarter of the budget. For ``"eigenpro"``:
        ``n_components``, ``subsample_size``, ``batch_size``, ``step_size`` of the inner
        iteration and ``n_steps``, inner steps per data batch.
    ridge : float
        Minimise ``||K(X, Z) theta - Y||^2 + ridge theta^T K(Z, Z) theta``.
    rng : numpy Generator
        Draws subsamples and batches; must be seeded identically on every rank.
    comm : Communicator, optional
        Shards the centers over its ranks (default: a single process).
    validation : (X_val, score) pair, optional
        ``score(predictions) -> float`` (higher is better) after each epoch; the best
        epoch's coefficients are returned.
    n_iter_no_change : int, optional
        With ``validation``: stop after this many epochs without improvement.
    callback : callable, optional
        ``callback(epoch, predict)`` after each epoch, with ``predict(X) -> K(X, Z) theta``;
        a returned dict is merged into the epoch's history record.
    verbose : int
        1: a progress bar per epoch.
    no_exact_fit : str, optional
        Why the problem has no exact fit (see :class:`~eigenpro.solver.DivergenceGuard`).

    Returns
    -------
    EigenPro3Result
    """
    rng = np.random.default_rng() if rng is None else rng
    comm = Communicator() if comm is None else comm
    inner = _check_inner(inner)
    n, n_out = targets.shape
    p, d = centers.shape
    if data.n_samples != n:
        raise ValueError(f"data has {data.n_samples} rows but targets have {n}")
    if data.n_features != d:
        raise ValueError(f"data has {data.n_features} features but the centers have {d}")
    lo, hi = comm.shard(p)
    itemsize = torch.empty(0, dtype=dtype).element_size()

    method = inner["method"]
    if method == "auto":
        fits = p <= CHOLESKY_MAX_CENTERS and p * p * itemsize * 2 <= memory_budget // 4
        method = "cholesky" if fits and not comm.is_distributed else "eigenpro"
    if method == "cholesky" and comm.is_distributed:
        raise ValueError("inner method 'cholesky' cannot shard the centers; use 'eigenpro'")

    budget = memory_budget - (2 * p * p * itemsize if method == "cholesky" else 0)
    # Building a preconditioner must fit in the budget beside the local centers.
    sized = subsample_size_for_budget(p, d, n_out, device, dtype, budget)
    s_out = _subsample(subsample_size, p, "subsample_size", sized)
    s_in = _subsample(inner["subsample_size"], p, "inner subsample_size", sized)
    plan = memory_plan3(hi - lo, d, n_out, s_out, s_in, device, dtype, budget)
    shard = _Shard(kernel, centers, lo, hi, n_out, device, dtype, comm, plan.max_block_elements)

    outer_pc, basis, outer_coords = _center_preconditioner(
        kernel, centers, lo, hi, n_components=n_components, subsample_size=s_out,
        max_batch_size=plan.max_batch_size, ridge=ridge, n_train=n, rng=rng,
        device=device, dtype=dtype,
    )  # fmt: skip
    outer_pc = _calibrate_tail(kernel, data, outer_pc, outer_coords, ridge, rng, device)
    m = outer_pc.auto_batch_size(plan.max_batch_size, n) if batch_size == "auto" else batch_size
    m = int(min(int(m), n))
    if step_size == "auto":
        # A tracked (lagging) projection is stable for half the step an exact one allows.
        eta = outer_pc.step_size(m) * (1.0 if method == "cholesky" else TRACKING_SAFETY)
    else:
        eta = check_step_size(step_size, m, dtype)
    # K(Z_r, X_S) E maps the preconditioner's q-vector to values at the local centers.
    lift = None
    if outer_pc.n_components:
        lift = kernel_matmul(
            kernel, shard.Z, outer_coords, outer_pc.eigenvectors,
            max_block_elements=plan.max_block_elements,
        )  # fmt: skip

    if method == "cholesky":
        projector = _CholeskyProjector(shard)
        inner_pc = None
    else:
        inner_pc, inner_basis, _ = _center_preconditioner(
            kernel, centers, lo, hi, n_components=inner["n_components"], subsample_size=s_in,
            max_batch_size=plan.max_inner_batch_size, ridge=0.0, n_train=p, rng=rng,
            device=device, dtype=dtype,
        )  # fmt: skip
        m_z = inner["batch_size"]
        m_z = inner_pc.auto_batch_size(plan.max_inner_batch_size, p) if m_z == "auto" else m_z
        m_z = int(min(int(m_z), p))
        eta_z = inner["step_size"]
        eta_z = inner_pc.step_size(m_z) if eta_z == "auto" else float(eta_z)
        n_steps = inner["n_steps"]
        if n_steps == "auto":
            n_steps = max(MIN_INNER_STEPS, math.ceil(INNER_PASSES_PER_EPOCH * m * p / (n * m_z)))
        projector = _EigenProProjector(shard, inner_pc, inner_basis, m_z, eta_z, int(n_steps), rng)

    zero_loss = max(_mean_square(targets), 1e-30)
    result = EigenPro3Result(
        coef=torch.empty(0), batch_size=m, preconditioner=outer_pc,
        inner_preconditioner=inner_pc, inner_method=method,
    )  # fmt: skip
    if method == "eigenpro":
        result.inner_batch_size, result.inner_steps = projector.batch_size, projector.n_steps
    sync_every = 1 if device.type == "cpu" else 32
    check_rows = final_check_rows(n)
    X_check = data.take(check_rows, dtype, device)
    Y_check = targets[torch.from_numpy(check_rows)].to(device)
    check_zero_loss = max(_mean_square(Y_check), 1e-30)

    def training_loss(theta: torch.Tensor) -> float:
        saved = shard.theta.clone()
        shard.theta.copy_(theta)
        residual = shard.predict(X_check).sub_(Y_check)
        shard.theta.copy_(saved)
        return float(residual.pow(2).sum(dtype=torch.float64)) / residual.numel()

    tracker = ValidationTracker(n_iter_no_change) if validation is not None else None
    # Few batches per epoch: judge each epoch by its final iterate on the check rows.
    by_iterate = math.ceil(n / m) < MIN_EPOCH_BATCHES
    guard = DivergenceGuard(
        [shard.theta, shard.target], check_zero_loss if by_iterate else zero_loss,
        no_exact_fit, [tracker] if tracker else [],
    )  # fmt: skip
    epoch = 1
    while epoch <= n_epochs:
        guard.start_epoch(epoch)
        start_check = training_loss(shard.theta) if epoch == n_epochs else None
        start = time.perf_counter()
        loss, finished, stderr = _run_epoch(
            shard, data, targets, basis, lift, projector, m, eta, ridge, rng,
            math.inf if by_iterate else guard.loss_limit, sync_every, epoch, n_epochs, verbose,
        )  # fmt: skip
        inner_loss = projector.take_loss()
        seconds = time.perf_counter() - start
        if by_iterate and finished:
            judged, stderr = training_loss(shard.theta), 0.0
        else:
            judged = loss
        problem = guard.problem(judged, finished, stderr)
        record = {
            "epoch": epoch,
            "train_loss": loss,
            "inner_loss": inner_loss,
            "val_score": None,
            "seconds": seconds,
            "step_size": eta,
        }
        stop = False
        if problem is None and tracker is not None:
            X_val, score_fn = validation
            record["val_score"] = float(score_fn(shard.predict(X_val)))
            stop = tracker.update(epoch, record["val_score"], shard.theta)
        if problem is None and callback is not None:
            record.update(callback(epoch, shard.predict) or {})
        if problem is None and (stop or epoch == n_epochs):
            current = tracker is None or tracker.best_coef is None
            theta = shard.theta if current else tracker.best_coef
            final_loss = judged if by_iterate and current else training_loss(theta)
            problem = guard.final_problem(
                final_loss, check_zero_loss, start_check if current else None
            )
        if problem is not None:
            resume = guard.roll_back(problem, eta, epoch)
            eta /= 2
            projector.step_size /= 2
            guard.warn(problem, resume, eta)
            del result.history[resume - 1 :]
            epoch = resume
            continue
        guard.accept(epoch, judged, stderr)
        result.history.append(record)
        result.n_epochs = epoch
        if stop:
            break
        epoch += 1

    result.best_epoch = result.n_epochs
    if tracker is not None and tracker.best_coef is not None:
        shard.theta.copy_(tracker.best_coef)
        result.best_epoch = tracker.best_epoch
    result.coef = shard.gather_coef()
    result.step_size, result.inner_step_size = eta, projector.step_size
    return result


def _mean_square(targets: torch.Tensor) -> float:
    return float(targets.double().pow(2).mean()) if targets.numel() else 0.0


def _run_epoch(
    shard, data, targets, basis, lift, projector, m, eta, ridge, rng, loss_limit, sync_every,
    epoch, n_epochs, verbose,
):  # fmt: skip
    """One pass over the data. Returns (mean batch loss, finished without diverging, standard
    error of that mean)."""
    n, n_out = targets.shape
    device, dtype, kernel = shard.device, shard.dtype, shard.kernel
    batches = np.array_split(rng.permutation(n), range(m, n, m))
    epoch_loss = EpochLoss(device)
    rate, ridge_rate = eta / m, ridge * m / n
    bar = tqdm(
        batches, desc=f"epoch {epoch}/{n_epochs}", unit="batch", leave=True,
        disable=verbose < 1, mininterval=0.5,
    )  # fmt: skip
    for i, idx in enumerate(bar):
        idx = np.sort(idx)  # locality for memmaps; a batch gradient is a sum
        Xb = data.take(idx, dtype, device)
        Yb = targets[torch.from_numpy(idx)].to(device)
        # One kernel block serves K(X_B, Z) theta and K(Z, X_B) g when it fits.
        block = None
        if Xb.shape[0] * shard.Z.shape[0] <= shard.max_block:
            points = kernel.prepare_points(Xb, shard.prepared)
            block = kernel.prepared_block(points, shard.prepared)
            pred = block @ shard.theta
            proj = None
            if lift is not None:
                proj = shard.subsample_part(block[:, basis.positions], basis)
        else:
            pred, proj = shard.products(Xb, basis if lift is not None else None)
        parts = [pred] + ([proj] if lift is not None else [])
        if ridge and lift is not None:
            parts.append(basis.vectors.T @ shard.target[basis.positions])
        n_data = len(parts)
        summed = shard.reduce(parts + projector.fused_parts())
        projector.absorb(summed[n_data:])  # reads only theta and b from before this step

        residual = summed[0].sub_(Yb)
        epoch_loss.add(residual)
        if block is not None:
            grad = block.T @ residual
            del block
        else:
            grad = kernel_matmul(kernel, shard.Z, Xb, residual, max_block_elements=shard.max_block)
        if ridge:
            grad.add_(shard.target, alpha=ridge_rate)
        if lift is not None:
            coeff = shard.basis_coordinates(summed[1], basis, residual)
            if ridge:
                coeff.add_(summed[2], alpha=ridge_rate)
            grad.sub_(lift @ (basis.scales.unsqueeze(1) * coeff))
        shard.target.sub_(grad, alpha=rate)
        projector.after_data_step()

        if (i + 1) % sync_every == 0 or i + 1 == len(batches):
            running = epoch_loss.mean(n_out)
            if not running_loss_ok(running, loss_limit, bar, verbose, epoch_loss.points / n):
                return running, False, 0.0
    bar.close()
    return epoch_loss.mean(n_out), True, epoch_loss.stderr()
