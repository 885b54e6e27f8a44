"""How a preconditioned step enters a model on fixed centers: the projections.

One EigenPro step on a data batch ``B`` (residual ``g = f(X_B) - Y_B``, ``m`` points) is the
function ``-(eta / m) (sum_i g_i k(x_i, .) - sum_s (E D c)_s k(x_s, .))`` with
``c = E^T K(X_S, X_B) g``; the model can only hold functions on its centers ``Z``, so the
step is projected onto span{k(z_j, .)}. The Nystrom subsample ``X_S`` is always among the
centers, so its part is added to the coefficients directly; the batch part is projected by:

- :class:`IdentityProjection` (EigenPro 2): the batch points are centers, nothing to solve;
  ``K(Z, Z)^-1 K(Z, X_B) g`` selects rows.
- :class:`CholeskyProjection` (EigenPro 3, small p, one process): the values at the
  centers ``b`` follow the functional iteration and ``coef = K(Z, Z)^-1 b`` exactly, after
  every step, by a Cholesky factor.
- :class:`TrackedProjection` (EigenPro 3): the same ``b``, with ``coef`` tracking
  ``K(Z, Z)^-1 b`` by a few warm-started inner EigenPro steps per data step.
- :class:`DelayedProjection` (EigenPro 4, Abedsoltan, Ma, Pandit & Belkin 2025): the batch
  points stay in the model as temporary centers with weights ``-(eta / m) g``, so every
  prediction is exact; every ``T`` batches their values at the centers ``h`` are projected
  by one pass of the inner EigenPro iteration on ``K(Z, Z) delta = h`` and the temporary
  centers are dropped.

All of them have the same fixed point, the least-squares fit on the centers
``K(Z, X) (K(X, Z) coef - Y) = 0`` (plus the ridge term), because the steps they project
vanish there. They share one protocol: :meth:`extra_parts` (partial sums that ride on the
data batch's all_reduce, and additions to the batch's partial predictions), :meth:`update`,
:meth:`flush` (before the model is evaluated), ``state_dict``/``load_state_dict`` and
:meth:`settings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kernels import kernel_matmul, narrow_mm
from .model import CenterModel
from .preconditioner import BETA_PROBES, EigenProPreconditioner, build_preconditioner

__all__ = [
    "INNER_KEYS",
    "METHODS",
    "CholeskyProjection",
    "DelayedProjection",
    "IdentityProjection",
    "LocalBasis",
    "Projection",
    "Step",
    "TrackedProjection",
    "check_inner",
]

#: Keys accepted in ``inner_params`` (each "auto" by default).
INNER_KEYS = (
    "method", "n_components", "subsample_size", "batch_size", "step_size", "n_steps",
    "sgd_epochs",
)  # fmt: skip
#: Projection methods a user may ask for on general centers.
METHODS = ("auto", "cholesky", "eigenpro", "delayed")
#: ``n_steps="auto"`` of the tracked projection runs enough inner steps for this many passes
#: over the centers per epoch, and at least one per data batch (it rides on the data step's
#: all_reduce, so a sharded fit then costs one all_reduce per batch).
INNER_PASSES_PER_EPOCH = 2
#: Jitter of the Cholesky factor, relative to the largest diagonal, per training dtype.
CHOLESKY_JITTER = {torch.float32: 1e-6, torch.float64: 1e-12}
#: The delayed projection keeps at most this many temporary centers per center (the paper's
#: memory bound: about p extra rows), which sets T, the batches between projections.
DELAY_ROWS_PER_CENTER = 1.0
#: The delayed projection's inner passes stop when the squared residuals met in a pass fall
#: below this share of the squared values projected, or after :data:`MAX_PROJECTION_PASSES`.
#: The temporary centers of ``T`` steps form a function of large norm whose projection is
#: small, so a rough projection is costly: one pass (6% residual) made MNIST fits diverge.
PROJECTION_TOLERANCE = 1e-3
MAX_PROJECTION_PASSES = 10
#: Centers per block when the unprojected remainder ``K(Z, Z) delta`` is subtracted.
CARRY_ROWS = 4096


@dataclass
class LocalBasis:
    """A preconditioner's eigenbasis restricted to this rank's slice of the centers.

    Attributes
    ----------
    keep : slice or LongTensor
        Local positions of the subsample's centers on this rank (the columns of a kernel
        block the preconditioner reads).
    vectors : Tensor of shape (len(keep), q)
        The matching rows of ``E``.
    scales : Tensor of shape (q,)
        ``D``.
    sharded : bool
    """

    keep: slice | torch.Tensor
    vectors: torch.Tensor
    scales: torch.Tensor
    sharded: bool

    @property
    def n_components(self) -> int:
        return self.vectors.shape[1]

    def part(self, kept: torch.Tensor) -> torch.Tensor:
        """What a batch contributes to its reduction from ``K(X_B, X_{S_r})``: on several
        ranks the partial projection ``K(X_B, X_{S_r}) E_r`` (summed by the all_reduce), in
        one process the block itself, multiplied by the residual first in
        :meth:`coordinates` (``m s l`` operations instead of ``m s q``)."""
        return kept @ self.vectors if self.sharded else kept

    def coordinates(self, part: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``E^T K(X_S, X_B) r`` (q x l) from the summed :meth:`part`, computed transposed
        (``(r^T K(X_B, X_S)) E``): GEMMs on the row-major operands as stored, 2.4x faster at
        m = 508, s = 2000, q = 500, l = 10 than with the transposed views."""
        if self.sharded:
            return (residual.T @ part).T
        return ((residual.T @ part) @ self.vectors).T

    def change(self, coords: torch.Tensor) -> torch.Tensor:
        """``E_r D coords``: the subsample's coefficient change on this rank."""
        return narrow_mm(self.vectors, self.scales.unsqueeze(1) * coords)

    def add_to(self, coef: torch.Tensor, coords: torch.Tensor, rate: float) -> None:
        """``coef[S_r] += rate E_r D coords``."""
        if isinstance(self.keep, slice):
            coef[self.keep].add_(self.change(coords), alpha=rate)
        else:
            coef.index_add_(0, self.keep, self.change(coords), alpha=rate)


def local_basis(precond: EigenProPreconditioner, model: CenterModel) -> LocalBasis | None:
    """``precond``'s basis on this rank (None without components). Its subsample indices
    are global positions among the model's centers."""
    if precond.n_components == 0:
        return None
    glob = precond.subsample_indices
    mask = (glob >= model.lo) & (glob < model.hi)
    local = glob[mask] - model.lo
    keep: slice | torch.Tensor = local
    n_local = int(local.numel())
    if n_local and int(local[0]) + n_local - 1 == int(local[-1]):
        keep = slice(int(local[0]), int(local[0]) + n_local)  # contiguous: copied tile by tile
    elif n_local == 0:
        keep = slice(0, 0)
    return LocalBasis(keep, precond.eigenvectors[mask], precond.scales, model.comm.is_distributed)


@dataclass
class Step:
    """One data step, as the projections see it.

    Attributes
    ----------
    idx : LongTensor
        The batch's rows (positions among the centers for the identity projection).
    X : Tensor of shape (m, d)
    block : Tensor of shape (m, p_r) or None
        ``K(X_B, Z_r)`` when it was computed whole.
    residual : Tensor of shape (m, l)
        ``g`` (summed over ranks).
    coords : Tensor of shape (q, l) or None
        ``E^T K(X_S, X_B) g``, summed.
    rate : float
        ``eta / m``.
    extras : list of Tensor
        The projection's own parts of the batch's reduction, summed.
    """

    idx: torch.Tensor
    X: torch.Tensor
    block: torch.Tensor | None
    residual: torch.Tensor
    coords: torch.Tensor | None
    rate: float
    extras: list


class Projection:
    """The protocol every projection follows, with the defaults of one that keeps no state
    of its own: ``extra_parts`` (partial sums riding on the batch's all_reduce, and additions
    to its partial predictions), ``update`` (apply the step), ``flush`` (finish pending work
    before the model is evaluated), ``state_dict``/``load_state_dict`` (roll-backs),
    ``halve_step`` (of an inner iteration), ``take_loss`` (an inner residual for the
    history) and ``settings`` (what it used)."""

    method = ""
    needs_gradient = True
    #: Whether the coefficients alone are the model (no step pending elsewhere).
    settled = True

    def extra_parts(self, idx: torch.Tensor, X: torch.Tensor, pred: torch.Tensor) -> list:
        return []

    def prediction_error(self, residual: torch.Tensor, extras: list, targets: torch.Tensor):
        """``(f(X_B) - Y_B, the batch's share of the ridge penalty per output or None)``
        from the step's residual (they differ where a ridge term rides on the residual)."""
        return residual, None

    def epoch_penalty(self, ridge: float) -> torch.Tensor | None:
        """``ridge coef^T K(Z, Z) coef`` per output at the end of an epoch, where the
        projection can tell it cheaply (None otherwise)."""
        return None

    def update(self, step: Step) -> None:
        """Apply the step to the model (every projection defines it)."""
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def halve_step(self) -> None:
        pass

    def take_loss(self) -> float | None:
        return None

    def settings(self) -> dict:
        return {"method": self.method}


class IdentityProjection(Projection):
    """EigenPro 2: the centers are the training points, the batch's rows are centers.

    ``coef_B -= (eta / m) (g + ridge coef_B)``; the fixed point solves
    ``(K + ridge I) coef = Y``.
    """

    method = "identity"
    needs_gradient = False

    def __init__(self, model: CenterModel, basis: LocalBasis | None, ridge: float):
        self.model, self.basis, self.ridge = model, basis, ridge

    def extra_parts(self, idx: torch.Tensor, X: torch.Tensor, pred: torch.Tensor) -> list:
        if not self.ridge:
            return []
        rows, local = self.model.owned(idx)
        term = torch.zeros_like(pred)  # ridge coef_B: this rank's rows, summed over ranks
        term[rows] = self.ridge * self.model.coef[local]
        pred += term
        return [term]

    def prediction_error(self, residual, extras, targets):
        """The residual less the ridge term, and the batch's ``ridge coef_B^T f(X_B)``:
        summed over an epoch's batches, a running estimate of ``ridge coef^T K coef``."""
        if not self.ridge:
            return residual, None
        error = residual - extras[0]
        return error, (extras[0] * (error + targets)).sum(dim=0, dtype=torch.float64)

    def update(self, step: Step) -> None:
        rows, local = self.model.owned(step.idx)
        self.model.coef.index_add_(0, local, step.residual[rows], alpha=-step.rate)
        if step.coords is not None:
            self.basis.add_to(self.model.coef, step.coords, step.rate)


class _ValuesProjection(Projection):
    """Projections that follow ``b``, the values of the functional iterate at the centers
    (``b = K(Z, Z) coef`` at convergence)::

        b -= (eta / m) (K(Z, X_B) g - K(Z, X_S) E D c)   (+ ridge: b shrinks by ridge m / n)

    and set ``coef`` from ``b``. With ``ridge``, the fixed point minimises
    ``||K(X, Z) coef - Y||^2 + ridge coef^T K(Z, Z) coef``.
    """

    def __init__(self, model: CenterModel, basis: LocalBasis | None, lift, ridge_rate: float):
        self.model, self.basis, self.lift = model, basis, lift
        self.ridge_rate = ridge_rate  # ridge * m / n
        self.target = torch.zeros_like(model.coef)  # b

    def extra_parts(self, idx, X, pred) -> list:
        if self.ridge_rate and self.basis is not None:
            return [self.basis.vectors.T @ self.target[self.basis.keep]]  # E_r^T b_{S_r}
        return []

    def update(self, step: Step) -> None:
        grad = self.model.gradient(step.X, step.residual, step.block)
        if self.ridge_rate:
            grad.add_(self.target, alpha=self.ridge_rate)
        if step.coords is not None:
            coords = step.coords
            if self.ridge_rate:
                coords = coords.add(step.extras[0], alpha=self.ridge_rate)
            grad.sub_(narrow_mm(self.lift, self.basis.scales.unsqueeze(1) * coords))
        self.target.sub_(grad, alpha=step.rate)
        self.after_update()

    def after_update(self) -> None:
        """Set the coefficients from the values ``b`` (each subclass defines it)."""
        raise NotImplementedError

    def epoch_penalty(self, ridge: float) -> torch.Tensor | None:
        if not self.ridge_rate:
            return None
        local = (self.model.coef * self.target).sum(dim=0, dtype=torch.float64)
        return ridge * self.model.reduce([local])[0]  # coef^T b, b = K(Z, Z) coef

    def state_dict(self) -> dict:
        return {"target": self.target.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.target.copy_(state["target"])


def cholesky_factor(model: CenterModel, relative_jitter: float = 0.0) -> tuple[torch.Tensor, float]:
    """A Cholesky factor of ``K(Z, Z) + jitter I`` (one process) and its jitter: relative to
    the largest diagonal (at least ``relative_jitter``), grown until the factorisation
    succeeds. It changes how fast the tiniest eigendirections move, not the fixed point."""
    kmat = model.kernel(model.centers, model.centers)
    if not torch.isfinite(kmat).all():
        raise ValueError("the kernel matrix of the centers contains NaN or infinite values")
    scale = float(kmat.diagonal().abs().max()) or 1.0
    jitter = max(CHOLESKY_JITTER[model.dtype], relative_jitter) * scale
    eye = torch.eye(len(kmat), dtype=kmat.dtype, device=kmat.device)
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(kmat + jitter * eye)
        if int(info) == 0:
            return factor, jitter
        jitter *= 10
    raise ValueError(
        "the kernel matrix of the centers is not positive definite even with a jitter "
        f"of {jitter:.1e}; check the kernel, or use inner_params={{'method': 'eigenpro'}}"
    )


class CholeskyProjection(_ValuesProjection):
    """``coef = (K(Z, Z) + jitter I)^-1 b`` after every step, by a Cholesky factor.

    For p centers in one process (``2 p^2`` numbers; :func:`cholesky_factor`).
    """

    method = "cholesky"

    def __init__(self, model, basis, lift, ridge_rate):
        super().__init__(model, basis, lift, ridge_rate)
        self.factor, self.jitter = cholesky_factor(model)

    def after_update(self) -> None:
        self.model.coef.copy_(torch.cholesky_solve(self.target, self.factor))


class _InnerBatches:
    """Endless sorted batches of center positions: consecutive slices of fresh permutations."""

    def __init__(self, p: int, batch_size: int, rng: np.random.Generator, device):
        self.p, self.batch_size, self.rng, self.device = p, batch_size, rng, device
        self._order, self._pos = rng.permutation(p), 0

    def next(self) -> torch.Tensor:
        if self._pos >= self.p:
            self._order, self._pos = self.rng.permutation(self.p), 0
        idx = np.sort(self._order[self._pos : self._pos + self.batch_size])
        self._pos += self.batch_size
        return torch.as_tensor(idx, device=self.device)


class InnerEigenPro:
    """EigenPro 2 steps on ``K(Z, Z) x = t`` over batches of centers, the solver of the
    tracked and the delayed projections.

    Each step's partial products and the coordinates of the next batch of centers travel in
    one reduction, so a step can ride on another reduction (:meth:`parts`, :meth:`absorb`).
    """

    def __init__(self, model, precond, basis, batch_size, step_size, rng):
        self.model, self.precond, self.basis = model, precond, basis
        self.batch_size, self.step_size = batch_size, step_size
        self.batches = _InnerBatches(model.n_centers, batch_size, rng, model.device)
        self.idx = self.batches.next()
        self.coords = model.reduce([model.coordinates(self.idx)])[0]
        self._next = None
        # (sum of squared residuals, of squared targets) since take_loss, and this pass
        self._since = torch.zeros(2, dtype=torch.float64, device=model.device)
        self._pass = torch.zeros(2, dtype=torch.float64, device=model.device)
        self._count = 0

    def parts(self, solution: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """Partial ``K(Z_I, Z_r) x_r - t_{I r}`` (and the preconditioner's part), and the
        coordinates of the next batch."""
        model, basis = self.model, self.basis
        if basis is None:
            pred, proj = model.products(self.coords, solution), None
        else:
            pred, kept = model.products(self.coords, solution, keep_columns=basis.keep)
            proj = basis.part(kept)
        rows, local = model.owned(self.idx)
        pred[rows] -= target[local]
        self._next = self.batches.next()
        return [pred] + ([] if proj is None else [proj]) + [model.coordinates(self._next)]

    def absorb(self, parts: list[torch.Tensor], solution: torch.Tensor, target) -> None:
        """Apply the step whose summed :meth:`parts` are given."""
        residual, next_coords = parts[0], parts[-1]
        rate = self.step_size / self.batch_size
        rows, local = self.model.owned(self.idx)
        solution.index_add_(0, local, residual[rows], alpha=-rate)
        if self.basis is not None:
            self.basis.add_to(solution, self.basis.coordinates(parts[1], residual), rate)
        # This rank's rows only: summed over the ranks, the whole batch's.
        step = torch.stack([residual[rows].pow(2).sum(dtype=torch.float64),
                            target[local].pow(2).sum(dtype=torch.float64)])  # fmt: skip
        self._since += step
        self._pass += step
        self._count += residual.numel()
        self.idx, self.coords = self._next, next_coords

    def run(self, n_steps: int, solution: torch.Tensor, target: torch.Tensor) -> None:
        for _ in range(n_steps):
            self.absorb(self.model.reduce(self.parts(solution, target)), solution, target)

    def solve(self, solution, target, steps_per_pass: int, tolerance: float, max_passes: int):
        """Passes over the centers until the squared residuals met during a pass fall below
        ``tolerance`` times the squared targets (or ``max_passes``); returns the passes."""
        passes = 0
        while passes < max_passes:
            self._pass.zero_()
            self.run(steps_per_pass, solution, target)
            passes += 1
            total, square = self.model.reduce([self._pass.clone()])[0]
            if float(total) <= tolerance * float(square):
                break
        return passes

    def take_loss(self) -> float | None:
        """Mean squared inner residual since the last call, relative to the mean square of
        the targets it was measured against."""
        if not self._count:
            return None
        total, square = self.model.reduce([self._since.clone()])[0]
        self._since.zero_()
        self._count = 0
        return float(total) / max(float(square), 1e-300)

    def settings(self, method: str, n_steps: int) -> dict:
        return {
            "method": method,
            "n_components": self.precond.n_components,
            "subsample_size": int(self.precond.subsample_indices.numel()),
            "batch_size": self.batch_size,
            "step_size": self.step_size,
            "n_steps": n_steps,
        }


class TrackedProjection(_ValuesProjection):
    """``coef`` tracks ``K(Z, Z)^-1 b`` by ``n_steps`` warm-started inner steps per data
    step; the first rides on the data step's all_reduce (it reads ``coef`` and ``b`` from
    before the step)."""

    method = "eigenpro"

    def __init__(self, model, basis, lift, ridge_rate, inner: InnerEigenPro, n_steps: int):
        super().__init__(model, basis, lift, ridge_rate)
        self.inner, self.n_steps = inner, n_steps
        self._n_own = 0

    def extra_parts(self, idx, X, pred) -> list:
        own = super().extra_parts(idx, X, pred)
        self._n_own = len(own)
        return own + self.inner.parts(self.model.coef, self.target)

    def update(self, step: Step) -> None:
        self.inner.absorb(step.extras[self._n_own :], self.model.coef, self.target)
        super().update(step)

    def after_update(self) -> None:
        self.inner.run(self.n_steps - 1, self.model.coef, self.target)

    def halve_step(self) -> None:
        self.inner.step_size /= 2

    def take_loss(self) -> float | None:
        return self.inner.take_loss()

    def settings(self) -> dict:
        return self.inner.settings(self.method, self.n_steps)


class DelayedProjection(Projection):
    """EigenPro 4's delayed projection.

    The batch points join the model as temporary centers with weights ``-(eta / m) g``
    (each rank keeps its share of every batch's rows), so predictions between projections
    are exact; ``h`` accumulates their values at the centers from the batch's kernel block,
    and the subsample's correction goes to the coefficients directly. When the temporary
    centers fill their buffer (``T`` batches, about p rows), ``K(Z, Z) delta = h`` is solved
    by a Cholesky factor when one fits (exact), else by passes of the inner iteration from
    zero (until :data:`PROJECTION_TOLERANCE`),
    ``coef += delta``, the temporary centers are dropped and ``h`` keeps only what the
    passes left unprojected, ``h - K(Z, Z) delta``: no step is ever lost, so the fixed point
    is the least-squares fit (dropping that remainder, as a single pass would, stalls far
    from it: 6% from the fit after 150 full-batch epochs, against 3% when it is kept).

    Its steps follow the data's gradient alone: with a ridge, the conjugate-gradient epochs
    that finish the fit (:mod:`eigenpro.conjugate_gradient`) solve the ridge's normal
    equations from where SGD left the coefficients (a ridge in the SGD steps would need the
    preconditioner applied to it too, which takes ``f`` at the subsample after every step).
    """

    method = "delayed"

    def __init__(
        self, model, basis, inner, n_steps: int, batch_size: int, factor=None,
        jitter: float = 0.0,
    ):  # fmt: skip
        self.model, self.basis, self.inner, self.n_steps = model, basis, inner, n_steps
        self.factor = factor  # a Cholesky factor of K(Z, Z) + jitter I: exact projections
        self.jitter = jitter
        # T from global sizes (the same on every rank); each rank keeps its share of a batch.
        self.batches_per_projection = max(
            1, int(DELAY_ROWS_PER_CENTER * model.n_centers) // batch_size
        )
        rows = self.batches_per_projection * math.ceil(batch_size / model.comm.world_size)
        d = model.centers.shape[1]
        self.temp_X = torch.empty(rows, d, dtype=model.dtype, device=model.device)
        self.temp_W = torch.empty(rows, model.coef.shape[1], dtype=model.dtype, device=model.device)
        self.used = 0
        self.pending = 0  # batches since the last projection
        self.values = torch.zeros_like(model.coef)  # h

    def extra_parts(self, idx, X, pred) -> list:
        if self.used:
            pred += kernel_matmul(
                self.model.kernel, X, self.temp_X[: self.used], self.temp_W[: self.used],
                max_block_elements=self.model.max_block,
            )  # fmt: skip
        return []

    def update(self, step: Step) -> None:
        model = self.model
        grad = model.gradient(step.X, step.residual, step.block)
        self.values.sub_(grad, alpha=step.rate)
        if step.coords is not None:
            self.basis.add_to(model.coef, step.coords, step.rate)
        lo, hi = model.comm.shard(step.X.shape[0])
        rows = hi - lo
        self.temp_X[self.used : self.used + rows] = step.X[lo:hi]
        torch.mul(step.residual[lo:hi], -step.rate, out=self.temp_W[self.used : self.used + rows])
        self.used += rows
        self.pending += 1
        if self.pending >= self.batches_per_projection:
            self.flush()

    def flush(self) -> None:
        """Project the temporary centers onto the centers and drop them."""
        if not self.pending:
            return
        model = self.model
        self.used = self.pending = 0
        if self.factor is not None:
            model.coef += torch.cholesky_solve(self.values, self.factor)
            self.values.zero_()
            return
        delta = torch.zeros_like(self.model.coef)
        self.inner.solve(
            delta, self.values, self.n_steps, PROJECTION_TOLERANCE, MAX_PROJECTION_PASSES
        )
        model.coef += delta
        # What the passes left unprojected stays pending: h -= K(Z, Z) delta.
        for lo in range(0, model.n_centers, CARRY_ROWS):
            idx = torch.arange(lo, min(lo + CARRY_ROWS, model.n_centers), device=model.device)
            points = model.reduce([model.coordinates(idx)])[0]
            applied = model.reduce([model.products(points, delta)])[0]
            rows, local = model.owned(idx)
            self.values[local] -= applied[rows]

    @property
    def settled(self) -> bool:
        return self.pending == 0

    def epoch_penalty(self, ridge: float) -> torch.Tensor | None:
        if not ridge or self.factor is None:
            return None
        coef = self.model.coef
        quad = (self.factor.T @ coef).pow(2).sum(0, dtype=torch.float64)
        return ridge * (quad - self.jitter * coef.pow(2).sum(0, dtype=torch.float64))

    def state_dict(self) -> dict:
        return {"values": self.values.clone()}  # taken when settled: no temporary centers

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"])
        self.used = self.pending = 0  # a roll-back drops the temporary centers

    def halve_step(self) -> None:
        if self.inner is not None:
            self.inner.step_size /= 2

    def take_loss(self) -> float | None:
        return None if self.inner is None else self.inner.take_loss()

    def settings(self) -> dict:
        if self.inner is None:
            return {"method": self.method}
        return self.inner.settings(self.method, self.n_steps)


def check_inner(inner: dict | None) -> dict:
    """``inner_params`` with every key present ("auto" by default); ValueError on bad ones."""
    inner = dict(inner or {})
    unknown = set(inner) - set(INNER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown inner_params key(s) {sorted(unknown)}; valid keys are {list(INNER_KEYS)}"
        )
    for key in INNER_KEYS:
        inner.setdefault(key, "auto")
    if inner["method"] not in METHODS:
        raise ValueError(f"inner method must be one of {list(METHODS)}; got {inner['method']!r}")
    for key in ("subsample_size", "batch_size", "n_steps"):
        value = inner[key]
        if value != "auto" and not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"inner {key} must be 'auto' or a positive integer; got {value!r}")
    for key in ("n_components", "sgd_epochs"):
        value = inner[key]
        if value != "auto" and not (isinstance(value, (int, np.integer)) and value >= 0):
            raise ValueError(f"inner {key} must be 'auto' or an integer >= 0; got {value!r}")
    value = inner["step_size"]
    if value != "auto" and not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"inner step_size must be 'auto' or a positive number; got {value!r}")
    return inner


def center_preconditioner(
    kernel, centers_host: torch.Tensor, *, n_components, subsample_size: int,
    max_batch_size: int, ridge: float, n_train: int, rng: np.random.Generator, device, dtype,
) -> tuple[EigenProPreconditioner, torch.Tensor]:  # fmt: skip
    """A preconditioner on a random subsample of the (host) centers, its subsample indices
    mapped to positions among all centers; and the subsample's coordinates on the device."""
    p = centers_host.shape[0]
    pool_idx = np.sort(rng.choice(p, size=min(p, subsample_size + BETA_PROBES), replace=False))
    pool = centers_host[torch.from_numpy(pool_idx)].to(device)
    precond = build_preconditioner(
        kernel, pool, n_components=n_components, subsample_size=subsample_size,
        max_batch_size=max_batch_size, ridge=ridge, n_train=n_train, rng=rng, dtype=dtype,
    )  # fmt: skip
    in_pool = precond.subsample_indices
    coords = pool[in_pool]
    precond.subsample_indices = torch.as_tensor(pool_idx, device=device)[in_pool]  # sorted
    return precond, coords
