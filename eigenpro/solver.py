"""The EigenPro solver: one preconditioned SGD iteration for every model size.

The model is ``f = sum_j coef_j k(z_j, .)`` on centers ``Z`` (:class:`~eigenpro.model.CenterModel`).
One step on a batch ``B`` of ``m`` points (DESIGN.md section 1)::

    g = K(X_B, Z) coef - Y_B                       # residual, one all_reduce over ranks
    c = E^T K(X_S, X_B) g                          # the Nystrom preconditioner's coordinates
    step = -(eta / m) (sum_i g_i k(x_i, .) - sum_s (E D c)_s k(x_s, .))

and a projection (:mod:`eigenpro.projections`) brings ``step`` onto the centers: the identity
when the centers are the training points (EigenPro 2), an exact Cholesky solve, tracking
inner EigenPro steps (EigenPro 3) or a delayed projection every ``T`` batches (EigenPro 4).
:func:`fit` chooses the settings (subsample, ``q``, batch, step, projection) from the data,
the device and the memory budget, and runs the one epoch loop.

Divergence is caught at its first sign (:class:`DivergenceGuard`): a non-finite or exploding
running loss, an epoch whose loss is above the zero model's or has risen over the best
epoch's, or returned coefficients whose loss on a sample of training rows is above the zero
model's. The fit then rolls back to the start of its best epoch and continues with half the
step, with a warning; a fit never returns a diverged iterate. On a problem without an exact
fit (fewer centers than points, repeated points with other targets...), constant-step SGD
stalls at a noise floor; an epoch that no longer lowers the loss halves the step
(:data:`PLATEAU_SIGNIFICANCE`), so the iterate converges to the least-squares fit. With the
exact factor of ``K(Z, Z)`` (delayed projection, one process), conjugate-gradient epochs
(:mod:`eigenpro.conjugate_gradient`) take over after the first SGD epoch and get there in a
few passes.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .conjugate_gradient import ConjugateGradient, plan_sgd_epochs, preconditioner_jitter
from .distributed import Communicator
from .eigensystem import NystromSample
from .kernels import Kernel, PreparedCenters, kernel_matmul, narrow_mm, padded_width
from .model import CenterModel
from .preconditioner import (
    STEP_SAFETY,
    EigenProPreconditioner,
    build_preconditioner,
    default_max_components,
    default_subsample_size,
    preconditioned_top_eigenvalue,
    setup_bytes,
    subsample_suffices,
)
from .projections import (
    INNER_PASSES_PER_EPOCH,
    CholeskyProjection,
    DelayedProjection,
    IdentityProjection,
    InnerEigenPro,
    Step,
    TrackedProjection,
    center_preconditioner,
    check_inner,
    cholesky_factor,
    local_basis,
)
from .stopping import ConvergenceTracker, EpochLoss, ValidationTracker
from .streaming import HostData

__all__ = [
    "DivergenceError",
    "DivergenceGuard",
    "FitResult",
    "MemoryPlan",
    "WarmStart",
    "budget_for_batch",
    "fit",
    "memory_plan",
    "predict",
    "subsample_size_for_budget",
]

#: A Nystrom subsample handed to :func:`fit` (the model selection's 1000 rows) replaces the
#: automatic one on data up to this many times its size: where the automatic rule
#: (:func:`~eigenpro.preconditioner.default_subsample_size`, ``n / 15``) sits at its
#: minimum of 2000 points. Its eigendecomposition is then free: at n = 5000 the 2000-point
#: one took 0.9 s of a 1.7 s fit. Measured on two real tables (CPS1988, diamonds) at
#: n = 5000, 10000 and 20000: 1000 against 2000 points gave q within 2, held-out R^2
#: within 0.0002, and 7-16 epochs against 7-13.
NYSTROM_REUSE_FACTOR = 30
#: An epoch is abandoned at once when its running loss exceeds this multiple of the
#: reference loss: the previous epoch's loss (the zero model's loss in the first epoch).
DIVERGENCE_FACTOR = 2.0
#: ... but growth below this fraction of the zero model's loss is read as noise, not divergence.
NOISE_FLOOR = 1e-3
#: Epoch losses below this fraction of the zero model's are round-off: a converged fit's loss
#: wanders there (float64 KernelRidge-like fits: 1e-27 to 2e-27 of a loss near 1; a float64
#: fit was rolled back for a "rise" from 6.1e-17 to 9.8e-17), which is not divergence. No
#: user reads a training loss a millionth (float64) or a thousandth (float32) of the
#: targets' standard deviation; the residual's round-off, amplified by steps up to
#: ``1 / lambda_{q+1}``, can reach there.
ROUNDOFF_FLOOR = {torch.float32: 1e-7, torch.float64: 1e-12}
#: Two completed epochs in a row whose loss exceeds the best epoch's (or the zero model's) by
#: this factor show a fit that diverges slowly (growth of 1.1-1.9x per epoch escapes the 2x
#: test for several epochs); one epoch over :data:`DIVERGENCE_FACTOR` times it is enough. A
#: single epoch between the two is read as the noise of constant-step SGD.
RISE_FACTOR = 1.25
#: The returned coefficients' loss on the check rows may exceed the zero model's by this
#: factor at most (round-off and sampling; a problem whose best fit is about zero).
FINAL_SLACK = 1.01
#: Roll-backs without a new lowest epoch loss in between, and in all (the step then being
#: a millionth of the initial one), before the fit gives up.
MAX_RETRIES = 4
MAX_ROLL_BACKS = 20
#: Training rows on which the loss of the returned coefficients is measured at the end.
FINAL_CHECK_ROWS = 1000
#: An epoch of fewer batches than this is judged by the loss of its final iterate on the
#: check rows: the mean of a few batch losses (the running loss) is too noisy to compare.
MIN_EPOCH_BATCHES = 8
#: Share of an epoch after which its running loss is compared with the 2x limit.
RUNNING_CHECK_FRACTION = 0.25
#: Batch-size cap on the CPU, where larger batches buy no speed (GEMM is saturated well below).
CPU_MAX_BATCH = 4096
#: On a problem without an exact fit, an epoch whose running loss is not below the best
#: epoch's by this many standard errors (of the running loss, from the spread of its batch
#: losses) halves the step: constant-step SGD has reached its noise floor, whose excess over
#: the least-squares loss is proportional to the step. Deterministic (full-batch) epochs have
#: no noise floor and never halve.
PLATEAU_SIGNIFICANCE = 0.0
#: Smallest Nystrom subsample a small memory budget scales the automatic one down to.
MIN_SUBSAMPLE = 100
#: The delayed projection's inner pass over the centers takes at least this many steps (its
#: batch is at most p / this): with few centers one pass at the critical batch is one or two
#: steps, too few to project the temporary centers accurately (measured: p = 120, two steps
#: per projection diverge, ten converge).
MIN_PROJECTION_STEPS = 10
#: Data points on which the preconditioned operator's top eigenvalue is measured (general
#: centers: the eigensystem comes from the centers, not the data).
CALIBRATION_SAMPLE = 2000
#: The automatic step is multiplied by this with the tracked projection: a lagging ``coef``
#: makes the coupled iteration stable only up to half the usual step.
TRACKING_SAFETY = 0.5


def _save(item):
    return item.clone() if isinstance(item, torch.Tensor) else item.state_dict()


def _load(item, saved) -> None:
    if isinstance(item, torch.Tensor):
        item.copy_(saved)
    else:
        item.load_state_dict(saved)


class DivergenceError(RuntimeError):
    """The iteration diverged even after the step size was reduced."""


class DivergenceGuard:
    """Epoch-level divergence detection and roll-back, of the solver's epoch loop.

    A fit diverges when an epoch's running loss becomes non-finite or passes
    :data:`DIVERGENCE_FACTOR` times the previous epoch's (checked during the epoch), when
    completed epochs' loss passes :data:`RISE_FACTOR` times the best epoch's (or the zero
    model's) twice in a row, or :data:`DIVERGENCE_FACTOR` times it once, or when the
    coefficients about to be returned do worse than the zero model on a sample of training
    rows, or worse than the same rows gave at the start of the last epoch. The guard keeps
    the iterate at the start of the best epoch; :meth:`roll_back` restores it, so a fit never
    continues from (or returns) a diverged iterate.

    Parameters
    ----------
    state : list
        The iterate, updated in place by the solver: tensors, or objects with
        ``state_dict()`` and ``load_state_dict(state)`` (the model and its projection).
    zero_loss : float
        Loss of the zero model, where the fit starts.
    no_exact_fit : str, optional
        Why the problem has no exact fit, when it has none: its loss then has a floor that
        constant-step SGD reaches noisily, and roll-backs are reported as lowering that
        floor (once per fit) rather than as divergence.
    companions : list, optional
        Objects with ``snapshot()`` and ``restore(snapshot)`` (e.g. a
        :class:`ValidationTracker`), saved and restored with the iterate.
    floor : float
        A loss below which rises are round-off, not divergence (:data:`ROUNDOFF_FLOOR`
        times ``zero_loss``).
    """

    def __init__(
        self,
        state: list,
        zero_loss: float,
        no_exact_fit: str | None = None,
        companions: list | None = None,
        floor: float = 0.0,
    ):
        self.state = state
        self.floor = floor
        self.zero_loss = zero_loss
        self.no_exact_fit = no_exact_fit
        self.companions = list(companions or [])
        self.reference = zero_loss  # the previous epoch's loss
        self.best_loss = math.inf  # what a completed epoch is compared with
        self.best_epoch = 0
        self.failures = 0  # roll-backs since the last progress
        self.roll_backs = 0
        self._record = math.inf  # the lowest epoch loss ever accepted
        self._rising = False  # the last accepted epoch was over the ceiling
        self._warned_floor = False
        self._start: tuple | None = None
        self._best: tuple | None = None

    @property
    def loss_limit(self) -> float:
        """Running loss at which an epoch in progress is abandoned."""
        return DIVERGENCE_FACTOR * max(self.reference, NOISE_FLOOR * self.zero_loss)

    def start_epoch(self, epoch: int) -> None:
        """Snapshot the iterate (and the companions) at the start of ``epoch``."""
        self._start = (
            epoch,
            [_save(item) for item in self.state],
            [c.snapshot() for c in self.companions],
            self.reference,
        )

    def _ceilings(self, stderr: float) -> tuple[float, float, str]:
        """(rise ceiling, divergence ceiling, what they are relative to), with room for the
        running loss's own noise (``stderr``, its standard error)."""
        if self.best_loss <= self.zero_loss:
            base, what = self.best_loss, f"{self.best_loss:.3g} (epoch {self.best_epoch})"
        else:
            base, what = self.zero_loss, f"the zero model's {self.zero_loss:.3g}"
        base = max(base, self.floor)
        return RISE_FACTOR * base + 2 * stderr, DIVERGENCE_FACTOR * base + 3 * stderr, what

    def problem(self, loss: float, finished: bool, stderr: float = 0.0) -> str | None:
        """Why the epoch that ended with running loss ``loss`` (standard error ``stderr``)
        diverged (None if it did not)."""
        if not math.isfinite(loss):
            return f"the training loss became {loss}"
        if not finished:
            return (
                f"the running loss reached {loss:.3g}, over {DIVERGENCE_FACTOR:g}x the "
                f"previous epoch's {self.reference:.3g}"
            )
        rise, diverge, what = self._ceilings(stderr)
        if loss > diverge or (self._rising and loss > rise):
            return f"the training loss rose from {what} to {loss:.3g}"
        return None

    @staticmethod
    def final_problem(
        final_loss: float, zero_loss: float, start_loss: float | None = None
    ) -> str | None:
        """Why the coefficients about to be returned are unacceptable: on the check rows, their
        loss ``final_loss`` is above :data:`FINAL_SLACK` times the zero model's ``zero_loss``,
        or above :data:`DIVERGENCE_FACTOR` times ``start_loss``, the loss at the start of the
        last epoch (when they are its result; one SGD iterate is noisier than an epoch's
        mean)."""
        if not math.isfinite(final_loss) or final_loss > FINAL_SLACK * zero_loss:
            return (
                f"the fitted coefficients' training loss {final_loss:.3g} is above the zero "
                f"model's {zero_loss:.3g}"
            )
        if start_loss is not None and final_loss > DIVERGENCE_FACTOR * max(
            start_loss, NOISE_FLOOR * zero_loss
        ):
            return (
                f"the training loss rose during the last epoch (from {start_loss:.3g} to "
                f"{final_loss:.3g})"
            )
        return None

    def accept(self, epoch: int, loss: float, stderr: float = 0.0) -> None:
        """Record a completed epoch that did not diverge."""
        self._rising = loss > self._ceilings(stderr)[0]
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self._best = loss, epoch, self._start
        if loss < self._record:
            self._record, self.failures = loss, 0
        self.reference = loss

    def roll_back(self, problem: str, step_size: float, epoch: int) -> int:
        """Restore the iterate at the start of the best epoch (of the current one when none
        has completed) and return that epoch's number, where the fit resumes with a smaller
        step. Raises :class:`DivergenceError` after :data:`MAX_RETRIES` roll-backs without
        progress in between, or :data:`MAX_ROLL_BACKS` in all."""
        self.failures += 1
        self.roll_backs += 1
        if self.failures > MAX_RETRIES or self.roll_backs > MAX_ROLL_BACKS:
            raise DivergenceError(
                f"EigenPro diverged in epoch {epoch}: {problem}, even after the step size was "
                f"halved {self.roll_backs - 1} times (to {step_size:.3g})."
            )
        resume, tensors, companions, reference = self._best or self._start
        for item, value in zip(self.state, tensors, strict=True):
            _load(item, value)
        for companion, snapshot in zip(self.companions, companions, strict=True):
            companion.restore(snapshot)
        # The rerun epoch is judged against the loss before it, not against its own earlier
        # (larger-step) run.
        self.reference = self.best_loss = reference
        self._rising = False
        return resume

    def warn(self, problem: str, resume: int, step_size: float, loss: float = math.inf) -> None:
        """Report a roll-back (``step_size``: the new, halved step), unless the loss that
        caused it is below :data:`NOISE_FLOOR` times the zero model's: a rise from 3e-5 to
        1e-4 of the targets' variance (R^2 0.99997 to 0.9999) is SGD's noise about an
        almost exact fit, which the roll-back handles without a word."""
        if math.isfinite(loss) and loss < NOISE_FLOOR * self.zero_loss:
            return
        if self.no_exact_fit is None:
            message = (
                f"EigenPro: {problem}; rolling back to the start of epoch {resume} and "
                f"retrying with the step size halved to {step_size:.3g}."
            )
        elif self._warned_floor:
            return
        else:
            self._warned_floor = True
            message = (
                f"EigenPro: {problem}. This problem has no exact fit ({self.no_exact_fit}), "
                "so constant-step SGD stalls at a noisy loss floor: continuing from the start "
                f"of epoch {resume} with the step halved to {step_size:.3g}, which lowers the "
                "floor (further halvings are not reported; see history_'s step_size)."
            )
        warnings.warn(message, RuntimeWarning, stacklevel=4)


@dataclass
class WarmStart:
    """Where a fit ended, to continue it (``warm_start``): on the same data and centers, the
    next fit starts from ``coef`` with this preconditioner, batch and step.

    Attributes
    ----------
    coef : Tensor of shape (p, l)
        Coefficients of the centers in their given order, on the CPU.
    preconditioner : EigenProPreconditioner
        On the CPU; its ``subsample_indices`` are positions among the given centers.
    batch_size : int
    step_size : float
    """

    coef: torch.Tensor
    preconditioner: EigenProPreconditioner
    batch_size: int
    step_size: float


def _to_host(precond: EigenProPreconditioner) -> EigenProPreconditioner:
    """A copy of ``precond`` with its tensors on the CPU."""
    moved = {
        f.name: getattr(precond, f.name).cpu()
        for f in dataclasses.fields(precond)
        if isinstance(getattr(precond, f.name), torch.Tensor)
    }
    return dataclasses.replace(precond, **moved)


def _to_device(precond: EigenProPreconditioner, device, dtype) -> EigenProPreconditioner:
    """``precond`` on ``device``, its vectors in the training ``dtype`` (eigenvalues stay
    float64)."""
    return dataclasses.replace(
        precond,
        subsample_indices=precond.subsample_indices.to(device),
        eigenvectors=precond.eigenvectors.to(device=device, dtype=dtype),
        scales=precond.scales.to(device=device, dtype=dtype),
        eigenvalues=precond.eigenvalues.to(device),
    )


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    coef : Tensor of shape (p, l)
        Coefficients of the centers (the training points when ``centers`` was None), in
        their given order, on the CPU.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss`` (mean squared residual over the epoch's batches,
        measured before each update), ``inner_loss`` (tracked and delayed projections: mean
        squared residual of the inner steps relative to their targets), ``val_score`` (or
        None), ``seconds``, ``step_size``.
    n_epochs : int
        Epochs run (fewer than asked when early stopping or the callback stopped the fit).
    best_epoch : int
        The epoch whose coefficients were returned.
    batch_size : int
    step_size : float
        The final step size (smaller than the initial one after a roll-back or a plateau).
    preconditioner : EigenProPreconditioner
        Its ``subsample_indices`` are positions among the centers in the solver's order.
    subsample_size : int
    inner : dict
        The projection and its settings (``method``: "identity", "cholesky", "eigenpro" or
        "delayed"; for the last two the inner iteration's ``n_components``,
        ``subsample_size``, ``batch_size``, ``step_size``, ``n_steps``).
    world_size : int
        Ranks the centers were sharded over.
    warm : WarmStart
        What a continuation of this fit needs.
    """

    coef: torch.Tensor
    history: list[dict] = field(default_factory=list)
    n_epochs: int = 0
    best_epoch: int = 0
    batch_size: int = 0
    step_size: float = 0.0
    preconditioner: EigenProPreconditioner | None = None
    subsample_size: int = 0
    inner: dict = field(default_factory=dict)
    world_size: int = 1
    plan: MemoryPlan | None = None
    warm: WarmStart | None = None


@dataclass
class MemoryPlan:
    """How the solver uses its memory budget.

    Attributes
    ----------
    max_batch_size : int
        Largest batch whose kernel block against the local centers (and one temporary) fits
        beside the fixed tensors.
    max_block_elements : int
        Largest kernel block materialised at once.
    """

    max_batch_size: int
    max_block_elements: int


def _plan_bytes(
    p: int, d: int, outputs: int, s: int, itemsize: int, *, data_on_device: bool = True,
    inner_subsample_size: int = 0,
) -> tuple[int, int]:  # fmt: skip
    """(fixed bytes, bytes per batch row) of the iteration on ``p`` local centers
    (:func:`memory_plan`)."""
    if data_on_device:  # EigenPro 2: the training points are the centers
        fixed = itemsize * (p * (2 * d + padded_width(d + 2) + 4 * outputs) + s * (s // 4 + 1))
        fixed += 16 * p  # the centers' order and positions (int64)
        return fixed, itemsize * (2 * p + s + d + 2 * outputs)
    q_out = default_max_components(s) + 1
    q_in = default_max_components(inner_subsample_size) + 1 if inner_subsample_size else 0
    fixed = itemsize * (
        p * (2 * d + padded_width(d + 2) + 12 * outputs + q_out)
        + s * (q_out + d)
        + inner_subsample_size * (q_in + d)
    )
    return fixed, itemsize * (2 * p + d + 3 * outputs + q_out + q_in)


def memory_plan(
    n_centers: int,
    n_features: int,
    n_outputs: int,
    subsample_size: int,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
    *,
    data_on_device: bool = True,
    inner_subsample_size: int = 0,
) -> MemoryPlan:
    """Split ``memory_budget`` bytes between the fixed tensors and the kernel blocks.

    With the training points as centers (``data_on_device``, EigenPro 2), fixed: the
    training points, their subsample-first copy while it is prepared, and the prepared
    centers (n x (2d + d + 2), the last rounded up by :func:`~eigenpro.kernels.padded_width`),
    coefficients, targets, an epoch snapshot and the best epoch's coefficients (4 x n x l),
    the centers' order (two int64 per center) and the eigenvectors (at most s x s/4). On
    general centers (data streamed from the host), fixed: the local centers, their prepared
    form and the temporary centers of a delayed projection (p_r x (2d + d + 2)), twelve
    p_r x l tensors (coefficients, values, snapshots, conjugate-gradient vectors, ...),
    ``K(Z_r, X_S) E`` and both preconditioners. Per batch row: a row of the kernel block
    and a temporary (2 p_r), its subsample columns and the batch itself. On the CPU the
    batch is also capped at :data:`CPU_MAX_BATCH`, beyond which GEMM gets no faster.
    Building the preconditioner comes first and is sized separately
    (:func:`subsample_size_for_budget`).
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    fixed, per_row = _plan_bytes(
        n_centers, n_features, n_outputs, subsample_size, itemsize,
        data_on_device=data_on_device, inner_subsample_size=inner_subsample_size,
    )  # fmt: skip
    free = max(memory_budget - fixed, 0)
    batch = max(1, free // per_row)
    if device.type == "cpu":
        batch = min(batch, CPU_MAX_BATCH)
    block = max(2**16, free // (2 * itemsize))
    return MemoryPlan(max_batch_size=int(batch), max_block_elements=int(block))


def budget_for_batch(
    n_centers: int, n_features: int, n_outputs: int, subsample_size: int, dtype: torch.dtype,
    batch_size: int,
) -> int:  # fmt: skip
    """The smallest ``memory_budget`` (bytes) for which :func:`memory_plan` allows batches of
    ``batch_size`` rows (training points as centers)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    fixed, per_row = _plan_bytes(n_centers, n_features, n_outputs, subsample_size, itemsize)
    return fixed + batch_size * per_row


def subsample_size_for_budget(
    n_centers: int, n_features: int, n_outputs: int, device: torch.device, dtype: torch.dtype,
    memory_budget: int,
) -> int:  # fmt: skip
    """The automatic Nystrom subsample size (:func:`default_subsample_size`), made smaller
    (down to :data:`MIN_SUBSAMPLE`) until building the preconditioner
    (:func:`~eigenpro.preconditioner.setup_bytes`) fits in the budget beside the data."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    data = itemsize * n_centers * (n_features + n_outputs)
    s = default_subsample_size(n_centers)
    floor = min(n_centers, MIN_SUBSAMPLE)
    while s > floor and data + setup_bytes(s, n_features, n_centers) > memory_budget:
        s = max(floor, int(s * 0.9))
    return s


def predict(
    kernel: Kernel,
    X: torch.Tensor,
    centers: torch.Tensor | None,
    coef: torch.Tensor,
    *,
    max_block_elements: int = 2**24,
    prepared: PreparedCenters | None = None,
) -> torch.Tensor:
    """``K(X, centers) @ coef``, blockwise (``prepared``: ``kernel.prepare(centers)``).

    Each row's prediction is independent of the other rows of ``X`` (bit for bit on the CPU),
    so serving one row at a time gives what a batch gives. The solver's own evaluations
    (validation, loss checks) call :func:`~eigenpro.kernels.kernel_matmul` directly, without
    the padding this costs.
    """
    return kernel_matmul(
        kernel, X, centers, coef, max_block_elements=max_block_elements, prepared=prepared,
        row_invariant=True,
    )  # fmt: skip


def final_check_rows(n: int) -> np.ndarray:
    """Sorted training rows on which the returned coefficients' loss is checked: all of them
    for small data, else :data:`FINAL_CHECK_ROWS` fixed ones (drawn with their own seed, so
    that the check never changes a fit's batches)."""
    if n <= FINAL_CHECK_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(n).choice(n, size=FINAL_CHECK_ROWS, replace=False))


def check_step_size(step_size: float, batch_size: int, dtype: torch.dtype) -> float:
    """The step as a float, rejecting one whose per-point rate ``eta / m`` the training dtype
    cannot even represent."""
    eta = float(step_size)
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"step_size must be a positive finite number; got {step_size!r}")
    if eta / batch_size >= torch.finfo(dtype).max:
        raise ValueError(
            f"step_size={eta:g} is too large for {str(dtype).removeprefix('torch.')}: the "
            "update's rate step_size / "
            f"batch_size overflows it. Use step_size='auto' (the largest stable step)."
        )
    return eta


def running_loss_ok(
    running: float, loss_limit: float, progress: _Progress, seen_fraction: float = 1.0
) -> bool:
    """Divergence check of an epoch in progress: False when the running loss is non-finite,
    or above the limit once :data:`RUNNING_CHECK_FRACTION` of the epoch is seen (the mean of a
    few batches is too noisy to judge)."""
    over = seen_fraction >= RUNNING_CHECK_FRACTION and running > loss_limit
    if not math.isfinite(running) or over:
        return False
    progress.show(loss=f"{running:.4g}")
    return True


class _Progress:
    """One progress bar per fit (tqdm, imported only when shown): batches of every epoch,
    the epoch and the running loss in its postfix. Silent when ``verbose < 1``."""

    def __init__(self, n_epochs: int, n_batches: int, verbose: int):
        self.n_batches, self.bar, self.fields = n_batches, None, {}
        if verbose >= 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_epochs * n_batches, desc="EigenPro", unit="batch",
                            mininterval=0.5)  # fmt: skip

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        """Go to the start of ``epoch`` (again, after a roll-back)."""
        if self.bar is not None:
            self.bar.n = (epoch - 1) * self.n_batches
            self.show(epoch=f"{epoch}/{n_epochs}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, **fields) -> None:
        if self.bar is not None:
            self.fields.update(fields)
            self.bar.set_postfix(self.fields, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _subsample_first(sub_idx: torch.Tensor, n: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that starts with ``sub_idx`` (the rest in order)."""
    rest = torch.ones(n, dtype=torch.bool, device=sub_idx.device)
    rest[sub_idx] = False
    return torch.cat([sub_idx, torch.nonzero(rest).flatten()])


def _unpermute(coef: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows in the given order, from the solver's subsample-first order."""
    out = torch.empty_like(coef)
    out[order.to(coef.device)] = coef
    return out


class _DeviceRows:
    """Training rows held on the device in the model's order (the EigenPro 2 path)."""

    def __init__(self, X: torch.Tensor, Y: torch.Tensor):
        self.X, self.Y = X, Y

    def take(self, idx: np.ndarray):
        idx_t = torch.as_tensor(idx, device=self.X.device)
        return idx_t, self.X[idx_t], self.Y[idx_t]


class _HostRows:
    """Training rows streamed from the host batch by batch (general centers)."""

    def __init__(self, data: HostData, Y: torch.Tensor, dtype, device):
        self.data, self.Y, self.dtype, self.device = data, Y, dtype, device

    def take(self, idx: np.ndarray):
        Xb = self.data.take(idx, self.dtype, self.device)
        Yb = self.Y[torch.from_numpy(idx)].to(self.device)
        return torch.as_tensor(idx, device=self.device), Xb, Yb


@dataclass
class _Run:
    """Everything the epoch loop needs, resolved by :func:`fit`."""

    model: CenterModel
    projection: object
    basis: object
    rows: object  # _DeviceRows or _HostRows
    n_outputs: int
    batch_size: int
    step_size: float
    rng: np.random.Generator
    order: torch.Tensor  # the given row of each center in the solver's order
    check: tuple  # (positions, X, Y) of the check rows
    ridge_on_rows: float  # the identity projection's ridge, added to the residual
    result: FitResult
    average: _EpochAverage | None = None
    finish: ConjugateGradient | None = None  # conjugate-gradient epochs after SGD's
    sgd_epochs: int | None = None
    ridge: float = 0.0
    output_weights: torch.Tensor | None = None  # per output, for the training MSE

    @property
    def n(self) -> int:
        return self.rows.Y.shape[0]

    def check_loss(self, coef: torch.Tensor | None = None) -> float:
        """Mean squared residual of ``coef`` (default: the model's) on the check rows."""
        coef = self.model.coef if coef is None else coef
        idx, X, Y = self.check
        pred = self.model.products(X, coef)
        if self.ridge_on_rows:
            rows, local = self.model.owned(idx)
            pred[rows] += self.ridge_on_rows * coef[local]
        residual = self.model.reduce([pred])[0].sub_(Y)
        return float(residual.pow(2).sum(dtype=torch.float64)) / max(residual.numel(), 1)


def fit(
    kernel: Kernel,
    data: HostData | torch.Tensor,
    targets: torch.Tensor,
    *,
    centers: torch.Tensor | None = None,
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
    tol: float | None = None,
    output_scale: np.ndarray | None = None,
    callback: Callable[[int, Callable, dict], dict | None] | None = None,
    verbose: int = 0,
    no_exact_fit: str | None = None,
    warm: WarmStart | None = None,
    nystrom: NystromSample | None = None,
) -> FitResult:
    """Fit ``f = sum_j coef_j k(z_j, .)`` by EigenPro, with every setting resolved here.

    Parameters
    ----------
    kernel : Kernel
    data : HostData or Tensor of shape (n, d)
        Training points. A :class:`~eigenpro.streaming.HostData` stays on the host and is
        streamed batch by batch when ``centers`` is given; with ``centers=None`` the points
        are moved to the device once.
    targets : Tensor of shape (n, l)
        In the training dtype (on the host or the device).
    centers : Tensor of shape (p, d), optional
        General centers on the host (EigenPro 3/4: memory O(p), the fixed point is the
        least-squares fit on them). None: the training points (EigenPro 2).
    device, dtype : torch.device, torch.dtype
    n_epochs : int
    memory_budget : int
        Bytes available on the device (per rank).
    batch_size, step_size, n_components, subsample_size : "auto" or number
        ``m``, ``eta``, and the preconditioner's ``q`` and ``s``.
    inner : dict, optional
        Projection settings on general centers (:data:`~eigenpro.projections.INNER_KEYS`).
        ``method``: ``"delayed"`` (EigenPro 4; exact by a Cholesky factor when it fits in a
        quarter of the budget in one process, and then chosen by "auto"; no ridge yet),
        ``"cholesky"`` (exact after every step; "auto" when the factor fits and
        ``ridge > 0``) or ``"eigenpro"`` (tracked; "auto" otherwise). ``sgd_epochs``:
        with the exact delayed projection and fewer centers than points, the SGD epochs
        before conjugate-gradient epochs (:mod:`~eigenpro.conjugate_gradient`) finish the
        fit. Measured on MNIST: README, large models.
    ridge : float
        EigenPro 2: solve ``(K + ridge I) coef = Y``; general centers: minimise
        ``||K(X, Z) coef - Y||^2 + ridge coef^T K(Z, Z) coef``.
    rng : numpy Generator
        Draws subsamples and batches; seeded identically on every rank.
    comm : Communicator, optional
        Shards the centers over its ranks (default: one process).
    validation : (X_val, score) pair, optional
        ``score(predictions) -> float`` (higher is better) after each epoch; the best
        epoch's coefficients are returned.
    n_iter_no_change : int, optional
        With ``validation``: stop after this many epochs without improvement; with ``tol``
        (and no ``validation``), after this many epochs in a row that lower the training
        MSE by less than ``tol`` times the zero model's (:mod:`eigenpro.stopping`).
    tol : float, optional
        Convergence tolerance (None: run ``n_epochs`` epochs).
    output_scale : ndarray of shape (l,), optional
        The targets' scales (:mod:`eigenpro.targets`): ``history``'s ``train_loss`` and
        ``objective`` are reported in the units of the targets before scaling.
    callback : callable, optional
        ``callback(epoch, predict, record)`` after each epoch (outside its clock), with
        ``predict(X) -> f(X)`` and the epoch's history record so far; a returned dict is
        merged into the record, and ``"stop": True`` in it ends the fit.
    verbose : int
        1: a progress bar per epoch.
    no_exact_fit : str, optional
        Why the problem has no exact fit, if known; fewer centers than points is detected
        here. Such a fit halves the step when the loss stalls (:data:`PLATEAU_SIGNIFICANCE`).
    warm : WarmStart, optional
        Continue a fit on the same data and centers (``FitResult.warm``): start from its
        coefficients with its preconditioner, batch size and step size (unless given).
    nystrom : NystromSample, optional
        A subsample of the training points with its eigensystem known (the model
        selection's, single precision): with ``centers=None`` and ``subsample_size`` and
        ``n_components`` both ``"auto"`` it is the Nystrom subsample, and the
        preconditioner needs no eigendecomposition, where the data are at most
        :data:`NYSTROM_REUSE_FACTOR` times its size, the budget allows the automatic size,
        and the training dtype resolves fewer components than its size allows
        (:func:`~eigenpro.preconditioner.subsample_suffices`).

    Returns
    -------
    FitResult

    Raises
    ------
    DivergenceError
        When the loss keeps diverging after the step was halved :data:`MAX_RETRIES` times;
        its ``preconditioner`` and ``batch_size`` attributes say what was used.
    """
    rng = np.random.default_rng() if rng is None else rng
    comm = Communicator() if comm is None else comm
    n = targets.shape[0]
    if isinstance(data, HostData) and data.n_samples != n:
        raise ValueError(f"data has {data.n_samples} rows but targets have {n}")
    settings = dict(
        device=device, dtype=dtype, memory_budget=memory_budget, batch_size=batch_size,
        step_size=step_size, n_components=n_components, subsample_size=subsample_size,
        ridge=ridge, rng=rng, comm=comm, warm=warm,
    )  # fmt: skip
    if centers is None:
        run = _setup_training_points(kernel, data, targets, nystrom=nystrom, **settings)
    else:
        inner = check_inner(inner)
        inner["sgd_epochs"] = plan_sgd_epochs(inner["sgd_epochs"], n_epochs, warm is not None)
        run = _setup_centers(kernel, data, targets, centers, inner=inner, **settings)
        if centers.shape[0] < n:
            no_exact_fit = "; ".join(
                filter(None, [no_exact_fit, "the model has fewer centers than training points"])
            )
    if output_scale is not None:
        scale = torch.as_tensor(np.asarray(output_scale, dtype=np.float64), device=device)
        run.output_weights = scale.pow(2)
    zero_mse = float(targets.double().pow(2).mean()) if targets.numel() else 0.0
    convergence = None
    if tol is not None and validation is None:
        convergence = ConvergenceTracker(float(tol), n_iter_no_change or 1, max(zero_mse, 1e-30))
    monitor = _Monitor(validation, n_iter_no_change, callback, convergence)
    try:
        return _train(run, n_epochs, monitor, no_exact_fit or None, verbose)
    except DivergenceError as exc:
        exc.preconditioner, exc.batch_size = run.result.preconditioner, run.batch_size
        raise


def _resolve_batch_and_step(
    precond, batch_size, step_size, max_batch, n, dtype, safety=1.0, warm=None
):  # fmt: skip
    if warm is not None:  # continue with the batch and step the last fit ended with
        batch_size = warm.batch_size if batch_size == "auto" else batch_size
        step_size = warm.step_size if step_size == "auto" else step_size
    m = precond.auto_batch_size(max_batch, n) if batch_size == "auto" else batch_size
    m = int(min(int(m), n))
    if step_size == "auto":
        return m, precond.step_size(m) * safety
    return m, check_step_size(step_size, m, dtype)


def _setup_training_points(
    kernel, data, targets, *, device, dtype, memory_budget, batch_size, step_size,
    n_components, subsample_size, ridge, rng, comm, warm, nystrom=None,
) -> _Run:  # fmt: skip
    """EigenPro 2: the training points are the centers (identity projection)."""
    X = data if isinstance(data, torch.Tensor) else data.whole(dtype, device)
    X, Y = X.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)
    (n, d), n_out = X.shape, Y.shape[1]
    sized = subsample_size_for_budget(n, d, n_out, device, dtype, memory_budget)
    if warm is not None:
        sized = subsample_size = warm.preconditioner.subsample_indices.numel()
    reuse = (
        nystrom is not None and warm is None and subsample_size == "auto"
        and n_components == "auto"
        and len(nystrom.indices) <= sized and n <= NYSTROM_REUSE_FACTOR * len(nystrom.indices)
    )  # fmt: skip
    if reuse:  # ... unless the dtype resolves more components than its size allows
        sub = torch.as_tensor(nystrom.indices, device=X.device)
        reuse = subsample_suffices(kernel, X[sub], nystrom.eigensystem.eigenvalues, dtype)
    if reuse:
        sized = len(nystrom.indices)
    s = _subsample(subsample_size, n, "subsample_size", sized)
    lo, hi = comm.shard(n)
    plan = memory_plan(hi - lo, d, n_out, s, device, dtype, memory_budget)
    if warm is None:
        precond = build_preconditioner(
            kernel, X, n_components=n_components, subsample_size=s,
            max_batch_size=plan.max_batch_size, ridge=ridge, rng=rng, dtype=dtype,
            nystrom=nystrom if reuse else None,
        )  # fmt: skip
    else:
        precond = _to_device(warm.preconditioner, device, dtype)
    m, eta = _resolve_batch_and_step(
        precond, batch_size, step_size, plan.max_batch_size, n, dtype, warm=warm
    )
    given = _to_host(precond)
    # Centers in subsample-first order: the preconditioner's columns K(X_B, X_S) are then a
    # contiguous slice of each kernel block, copied out tile by tile, and its update a slice
    # of the coefficients. The data take the same order, so a batch's rows are centers.
    order = _subsample_first(precond.subsample_indices, n)
    X, Y = X[order], Y[order]
    precond = dataclasses.replace(precond, subsample_indices=torch.arange(s, device=device))
    model = CenterModel(
        kernel, X[lo:hi], n_out, n_centers=n, lo=lo, comm=comm,
        max_block_elements=plan.max_block_elements, keep_coordinates=False,
    )  # fmt: skip
    basis = local_basis(precond, model)
    rows = _DeviceRows(X, Y)
    result = FitResult(
        coef=torch.empty(0), batch_size=m, preconditioner=precond, subsample_size=s,
        inner={"method": "identity"}, world_size=comm.world_size, plan=plan,
        warm=WarmStart(torch.empty(0), given, m, eta),
    )  # fmt: skip
    _start_from(model, warm, order)
    return _Run(
        model, IdentityProjection(model, basis, ridge), basis, rows, n_out, m, eta, rng,
        order, rows.take(final_check_rows(n)), ridge, result, ridge=ridge,
    )  # fmt: skip


def _choose_method(method, p, itemsize, memory_budget, ridge, comm, finishes: bool) -> str:
    """The projection (``finishes``: a delayed projection would be followed by
    conjugate-gradient epochs, which take the ridge)."""
    if method == "cholesky" and comm.is_distributed:
        raise ValueError("inner method 'cholesky' cannot shard the centers; use 'delayed'")
    exact = _factor_fits(p, itemsize, memory_budget, comm)
    if method == "delayed" and ridge and not (exact and finishes):
        raise ValueError(
            "inner method 'delayed' takes alpha > 0 only when conjugate-gradient epochs "
            "finish the fit (fewer centers than points, n_epochs of at least sgd_epochs + "
            "3, and a Cholesky factor of the centers' kernel within a quarter of memory_gb); "
            "use 'cholesky' or 'eigenpro'"
        )
    if method != "auto":
        return method
    if not exact:
        return "eigenpro"
    # With the exact factor, delaying the projection to every T batches gives the Cholesky
    # projection's iterates at less cost (MNIST, p = 10000: 14 s per epoch against 29 s),
    # and its factor preconditions the conjugate-gradient finish.
    return "cholesky" if ridge and not finishes else "delayed"


def _factor_fits(p: int, itemsize: int, memory_budget: int, comm) -> bool:
    """Whether a Cholesky factor of ``K(Z, Z)`` (one process) fits in a quarter of the budget."""
    return 2 * p * p * itemsize <= memory_budget // 4 and not comm.is_distributed


def _subsample(value, p: int, name: str, sized: int) -> int:
    """The requested subsample size, or ``sized`` (the automatic one fitted to the budget)."""
    s = sized if value == "auto" else int(value)
    if s < 1:
        raise ValueError(f"{name}={s} must be at least 1")
    if s > p:  # e.g. a setting made for the whole data, in a small cross-validation fold
        warnings.warn(
            f"{name}={s} is more than the {p} centers of this fit (training points on the "
            f"EigenPro 2 path); using {p}",
            UserWarning,
            stacklevel=2,
        )
        s = p
    return s


def _setup_centers(
    kernel, data, targets, centers, *, inner, device, dtype, memory_budget, batch_size,
    step_size, n_components, subsample_size, ridge, rng, comm, warm,
) -> _Run:  # fmt: skip
    """EigenPro 3/4: general centers, the data streamed from the host (``inner``: checked,
    ``sgd_epochs`` resolved)."""
    (n, n_out), (p, d) = targets.shape, centers.shape
    if data.n_features != d:
        raise ValueError(f"data has {data.n_features} features but the centers have {d}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    finishes = p < n and inner["sgd_epochs"] is not None  # CG epochs after a delayed one's
    method = _choose_method(inner["method"], p, itemsize, memory_budget, ridge, comm, finishes)
    # A factor of K(Z, Z) serves the Cholesky projection, and the delayed one when it fits.
    exact = method == "cholesky" or (
        method == "delayed" and _factor_fits(p, itemsize, memory_budget, comm)
    )
    budget = memory_budget - (2 * p * p * itemsize if exact else 0)
    sized = subsample_size_for_budget(p, d, n_out, device, dtype, budget)
    if warm is not None:
        sized = subsample_size = warm.preconditioner.subsample_indices.numel()
    s = _subsample(subsample_size, p, "subsample_size", sized)
    s_in = 0
    if not exact:
        s_in = _subsample(inner["subsample_size"], p, "inner subsample_size", sized)
    lo, hi = comm.shard(p)
    plan = memory_plan(
        hi - lo, d, n_out, s, device, dtype, budget, data_on_device=False,
        inner_subsample_size=s_in,
    )  # fmt: skip
    if warm is None:
        precond, sub_coords = center_preconditioner(
            kernel, centers, n_components=n_components, subsample_size=s,
            max_batch_size=plan.max_batch_size, ridge=ridge, n_train=n, rng=rng, device=device,
            dtype=dtype,
        )  # fmt: skip
        precond = _calibrate_on_data(kernel, data, precond, sub_coords, ridge, rng, device)
    else:
        precond = _to_device(warm.preconditioner, device, dtype)
        sub_coords = centers[precond.subsample_indices.cpu()].to(device)
    safety = TRACKING_SAFETY if method == "eigenpro" else 1.0
    m, eta = _resolve_batch_and_step(
        precond, batch_size, step_size, plan.max_batch_size, n, dtype, safety, warm
    )
    given = _to_host(precond)
    order = _subsample_first(precond.subsample_indices.cpu(), p)
    centers = centers[order]
    precond.subsample_indices = torch.arange(s, device=device)
    model = CenterModel(
        kernel, centers[lo:hi].to(device), n_out, n_centers=p, lo=lo, comm=comm,
        max_block_elements=plan.max_block_elements,
    )  # fmt: skip
    basis = local_basis(precond, model)
    lift = None
    if basis is not None:  # K(Z_r, X_S) E maps the preconditioner's q-vector to the centers
        lift = kernel_matmul(
            kernel, model.centers, sub_coords, precond.eigenvectors,
            max_block_elements=plan.max_block_elements,
        )  # fmt: skip
    ridge_rate = ridge * m / n
    with_cg = False  # the conjugate-gradient finish
    if method == "cholesky":
        projection = CholeskyProjection(model, basis, lift, ridge_rate)
    elif exact:  # delayed, with exact projections; its factor preconditions the CG finish
        with_cg = finishes  # the fit leaves residuals
        relative = preconditioner_jitter(p, ridge / n) if with_cg else 0.0
        factor, jitter = cholesky_factor(model, relative)
        projection = DelayedProjection(model, basis, None, 0, m, factor, jitter)
    else:
        inner = {**inner, "method": method, "subsample_size": s_in}
        projection = _inner_projection(
            model, centers, inner, plan, (basis, lift, ridge_rate), (n, m), rng
        )
    rows = _HostRows(data, targets, dtype, device)
    result = FitResult(
        coef=torch.empty(0), batch_size=m, preconditioner=precond, subsample_size=s,
        inner=projection.settings(), world_size=comm.world_size, plan=plan,
        warm=WarmStart(torch.empty(0), given, m, eta),
    )  # fmt: skip
    _start_from(model, warm, order)
    check = rows.take(final_check_rows(n))
    finish = None
    if with_cg:
        finish = ConjugateGradient(model, projection.factor, rows, m, ridge, projection.jitter)
    return _Run(
        model, projection, basis, rows, n_out, m, eta, rng, order, check, 0.0, result,
        finish=finish, sgd_epochs=inner["sgd_epochs"], ridge=ridge,
    )  # fmt: skip


def _start_from(model: CenterModel, warm: WarmStart | None, order: torch.Tensor) -> None:
    """Load a previous fit's coefficients (given order) into the model (solver order)."""
    if warm is not None:
        coef = warm.coef[order.cpu()][model.lo : model.hi]
        model.coef.copy_(coef.to(device=model.device, dtype=model.dtype))


def _inner_projection(model, centers, inner, plan, outer, sizes, rng):
    """The tracked or delayed projection, with its inner EigenPro iteration on the centers
    (``inner``: the settings, ``method`` and ``subsample_size`` resolved)."""
    (basis, lift, ridge_rate), (n, m), p = outer, sizes, model.n_centers
    method, s_in = inner["method"], inner["subsample_size"]
    precond, _ = center_preconditioner(
        kernel=model.kernel, centers_host=centers, n_components=inner["n_components"],
        subsample_size=s_in, max_batch_size=plan.max_batch_size, ridge=0.0, n_train=p,
        rng=rng, device=model.device, dtype=model.dtype,
    )  # fmt: skip
    m_z = inner["batch_size"]
    m_z = precond.auto_batch_size(plan.max_batch_size, p) if m_z == "auto" else int(m_z)
    m_z = min(m_z, p)
    if method == "delayed" and inner["batch_size"] == "auto":
        m_z = min(m_z, math.ceil(p / MIN_PROJECTION_STEPS))  # one pass in enough steps
    eta_z = precond.step_size(m_z) if inner["step_size"] == "auto" else float(inner["step_size"])
    if method == "delayed" and inner["step_size"] == "auto":
        # A single pass must not overshoot: beyond the critical batch the EigenPro 2 step
        # (up to 2 / lambda_{q+1}) relies on later steps to undo its overshoot.
        eta_z = min(eta_z, STEP_SAFETY / precond.tail_eigenvalue)
    solver = InnerEigenPro(model, precond, local_basis(precond, model), m_z, eta_z, rng)
    n_steps = inner["n_steps"]
    if method == "eigenpro":
        if n_steps == "auto":
            n_steps = max(1, math.ceil(INNER_PASSES_PER_EPOCH * m * p / (n * m_z)))
        return TrackedProjection(model, basis, lift, ridge_rate, solver, int(n_steps))
    if n_steps == "auto":  # one pass over the centers per projection
        n_steps = math.ceil(p / m_z)
    return DelayedProjection(model, basis, solver, int(n_steps), m)


def _calibrate_on_data(kernel, data, precond, sub_coords, ridge, rng, device):
    """Measure the preconditioned operator on a fresh sample of the data, which general
    centers' eigensystem has not seen, and raise ``tail_eigenvalue`` and ``beta`` to what it
    shows when larger.

    The eigensystem comes from a subsample of the centers, which can be much smaller than the
    data: deep eigenvalues are then underestimated and the step (about ``1 / lambda_{q+1}``)
    would diverge. On a data sample ``X_P`` of size ``s_p`` the preconditioned operator is
    ``(K_PP - K_PS E D E^T K_SP) / s_p``; its top eigenvalue (plus ``ridge / n``) bounds
    ``lambda_{q+1}``, and its largest diagonal entry (plus ``ridge``), ``beta``: the
    subsample's own points, where the flattening is exact, understate it. Together they set
    the critical batch and the step.
    """
    n = data.n_samples
    size = min(n, CALIBRATION_SAMPLE)
    probe = data.take(np.sort(rng.choice(n, size=size, replace=False)), torch.float64, device)
    vectors, scales = precond.eigenvectors.double(), precond.scales.double()
    tail = preconditioned_top_eigenvalue(kernel, probe, sub_coords.double(), vectors, scales)
    diagonal = kernel.diag(probe)
    if precond.n_components:
        lifted = kernel(probe, sub_coords.double()) @ vectors
        diagonal = diagonal - (lifted.pow(2) * scales).sum(dim=1)
    beta = float(diagonal.max()) + ridge
    return dataclasses.replace(
        precond,
        tail_eigenvalue=max(precond.tail_eigenvalue, tail + ridge / n),
        beta=max(precond.beta, beta),
    )


class _EpochAverage:
    """The mean of the iterates over an epoch (Polyak-Ruppert tail averaging) of a fit
    without an exact fit: constant-step SGD then wanders around the least-squares fit, and
    the mean is closer to it. When the mean does better on the check rows, the next epoch
    starts from it (MNIST 20k, 2000 centers: test error 3.34-3.39% from epoch 3 on, against
    3.43-3.59% for the last iterate; the least-squares fit has 3.31%)."""

    def __init__(self, items: list):
        self.items = items
        self.mean: list | None = None
        self.count = 0

    def add(self) -> None:
        """Fold in the current iterate."""
        states = [item.state_dict() for item in self.items]
        self.count += 1
        if self.count == 1:
            self.mean = states
            return
        for mean, state in zip(self.mean, states, strict=True):
            for key, value in state.items():
                mean[key].add_(value - mean[key], alpha=1.0 / self.count)

    def restart_if_better(self, run: _Run) -> bool:
        """Continue from the mean when it does better on the check rows; True if so."""
        better = self.mean is not None and run.check_loss(self.mean[0]["coef"]) < run.check_loss()
        if better:
            for item, state in zip(self.items, self.mean, strict=True):
                item.load_state_dict(state)
        self.mean, self.count = None, 0
        return better


class _Monitor:
    """Validation (best epoch, early stopping), convergence (``tol``) and the user's callback
    after each epoch."""

    def __init__(self, validation, n_iter_no_change, callback, convergence=None):
        self.validation, self.callback, self.convergence = validation, callback, convergence
        self.tracker = ValidationTracker(n_iter_no_change) if validation is not None else None

    @property
    def companions(self) -> list:
        """What a roll-back restores with the iterate."""
        return [t for t in (self.tracker, self.convergence) if t is not None]

    def after_epoch(self, epoch: int, record: dict, model: CenterModel, mse: float) -> bool:
        """Score the epoch into ``record``; True when the fit should stop (``mse``: its
        training MSE in the solver's units)."""
        stop = False
        if self.tracker is not None:
            X_val, score = self.validation
            record["val_score"] = float(score(model.predict(X_val)))
            stop = self.tracker.update(epoch, record["val_score"], model.coef)
        if self.convergence is not None:
            stop = self.convergence.update(mse)
        if self.callback is not None:
            record.update(self.callback(epoch, model.predict, dict(record)) or {})
            stop = stop or bool(record.get("stop"))
        return stop

    @property
    def best(self) -> tuple[torch.Tensor, int] | None:
        if self.tracker is None or self.tracker.best_coef is None:
            return None
        return self.tracker.best_coef, self.tracker.best_epoch


@dataclass
class _EpochOutcome:
    """What one epoch reports: ``loss`` (the running loss the divergence guard judges),
    whether it ``finished`` without diverging, that loss's standard error, the training MSE
    in the solver's units (``mse``) and in the targets' (``train_loss``), and the objective
    (``train_loss`` plus the ridge penalty; None without a ridge or where not measured)."""

    loss: float
    finished: bool
    stderr: float = 0.0
    mse: float = math.nan
    train_loss: float = math.nan
    objective: float | None = None


def _epoch(run: _Run, epoch: int, eta: float, limit: float, progress: _Progress) -> _EpochOutcome:
    """One epoch: conjugate gradient after the SGD epochs of a fit that finishes with it,
    else SGD (the last SGD epoch collecting what the first CG pass needs)."""
    finish, sgd_epochs = run.finish, run.result.inner.get("sgd_epochs")
    if finish is not None and epoch > sgd_epochs:
        mse, objective = finish.epoch(progress.advance)
        weights = 1.0 if run.output_weights is None else run.output_weights
        user, objective = float((mse * weights).mean()), float((objective * weights).mean())
        loss = float(mse.mean())
        return _EpochOutcome(loss, True, 0.0, loss, user, objective if run.ridge else None)
    collect = finish.begin_sgd_epoch() if finish and epoch == sgd_epochs else None
    return _run_epoch(run, eta, limit, progress, collect)


def _train(run: _Run, n_epochs: int, monitor: _Monitor, no_exact_fit, verbose: int) -> FitResult:
    """The epoch loop: epochs, divergence roll-backs, plateaus, validation, convergence."""
    model, projection, result = run.model, run.projection, run.result
    Y = run.rows.Y
    zero_loss = max(float(Y.double().pow(2).mean()) if Y.numel() else 0.0, 1e-30)
    check_zero = max(float(run.check[2].double().pow(2).mean()), 1e-30)
    by_iterate = math.ceil(run.n / run.batch_size) < MIN_EPOCH_BATCHES  # judge final iterates
    reference = check_zero if by_iterate else zero_loss
    finish = run.finish
    sgd_epochs = result.inner["sgd_epochs"] = None if finish is None else run.sgd_epochs
    guard = DivergenceGuard(
        [model, projection] + ([finish] if finish else []), reference, no_exact_fit,
        monitor.companions, floor=ROUNDOFF_FLOOR[model.dtype] * reference,
    )  # fmt: skip
    eta, epoch = check_step_size(run.step_size, run.batch_size, model.dtype), 1
    if no_exact_fit:
        run.average = _EpochAverage([model, projection])
    best_running = math.inf  # lowest running loss of an accepted epoch
    progress = _Progress(n_epochs, math.ceil(run.n / run.batch_size), verbose)
    try:
        while epoch <= n_epochs:
            guard.start_epoch(epoch)
            start_check = run.check_loss() if epoch == n_epochs else None
            start = time.perf_counter()
            progress.start_epoch(epoch, n_epochs)
            cg = finish is not None and epoch > sgd_epochs
            out = _epoch(run, epoch, eta, math.inf if by_iterate else guard.loss_limit, progress)
            if out.finished and run.average is not None and not cg:
                run.average.restart_if_better(run)
            seconds = time.perf_counter() - start
            judged, stderr = out.loss, out.stderr
            if by_iterate and out.finished:
                judged, stderr = run.check_loss(), 0.0
            problem = guard.problem(judged, out.finished, stderr)
            record = {"epoch": epoch, "train_loss": out.train_loss, "val_score": None,
                      "seconds": seconds, "step_size": None if cg else eta}  # fmt: skip
            if out.objective is not None:
                record["objective"] = out.objective
            inner_loss = projection.take_loss()
            if inner_loss is not None:
                record["inner_loss"] = inner_loss
            stop = problem is None and monitor.after_epoch(epoch, record, model, out.mse)
            if problem is None and (stop or epoch == n_epochs):
                best = monitor.best
                final = judged if by_iterate and best is None else run.check_loss(best and best[0])
                problem = guard.final_problem(final, check_zero, None if best else start_check)
            if problem is not None:
                resume = guard.roll_back(problem, eta, epoch)
                eta /= 2
                projection.halve_step()
                guard.warn(problem, resume, eta, judged)
                del result.history[resume - 1 :]
                epoch = resume
                continue
            margin = PLATEAU_SIGNIFICANCE * out.stderr
            plateau = not cg and no_exact_fit and out.loss > best_running - margin
            best_running = min(best_running, out.loss)
            guard.accept(epoch, judged, stderr)
            result.history.append(record)
            result.n_epochs = epoch
            if stop:
                break
            if plateau:
                eta /= 2
            epoch += 1
    finally:
        progress.close()
    best = monitor.best
    coef, result.best_epoch = best if best else (model.coef, result.n_epochs)
    result.coef = _unpermute(model.gather(coef), run.order.cpu())
    result.step_size = eta
    # a continuation goes on from the last iterate, not from the best epoch's coefficients
    last = result.coef if best is None else _unpermute(model.gather(model.coef), run.order.cpu())
    result.warm = dataclasses.replace(result.warm, coef=last, step_size=eta)
    return result


def _run_epoch(run: _Run, eta: float, loss_limit: float, progress: _Progress, collect=None):
    """One pass over shuffled batches (an :class:`_EpochOutcome`). ``collect(X_B,
    residual, block)`` sees each batch (for the conjugate-gradient finish)."""
    model, projection, basis = run.model, run.projection, run.basis
    n, m = run.n, run.batch_size
    batches = np.array_split(run.rng.permutation(n), range(m, n, m))
    epoch_loss = EpochLoss(model.device, run.n_outputs)
    sync_every = 1 if model.device.type == "cpu" else 32  # a read-back stalls a GPU's queue
    rate = eta / m  # one per-point rate: a short last batch takes a smaller step
    for i, idx in enumerate(batches):
        idx, Xb, Yb = run.rows.take(np.sort(idx))  # sorted: locality for memmaps
        block = model.block(Xb) if projection.needs_gradient else None
        kept = None
        if block is not None:
            pred = narrow_mm(block, model.coef)
            kept = None if basis is None else block[:, basis.keep]
        elif basis is not None:
            pred, kept = model.products(Xb, keep_columns=basis.keep)
        else:
            pred = model.products(Xb)
        parts = [pred] + ([] if basis is None else [basis.part(kept)])
        summed = model.reduce(parts + projection.extra_parts(idx, Xb, pred))
        residual = summed[0].sub_(Yb)
        extras = summed[len(parts) :]
        epoch_loss.add(residual, *projection.prediction_error(residual, extras, Yb))
        coords = None if basis is None else basis.coordinates(summed[1], residual)
        if collect is not None:
            collect(Xb, residual, block)
        projection.update(Step(idx, Xb, block, residual, coords, rate, extras))
        if run.average is not None and projection.settled:
            run.average.add()  # a delayed projection: only right after a projection
        del block, kept
        progress.advance()
        if (i + 1) % sync_every == 0 or i + 1 == len(batches):
            running = epoch_loss.mean(run.n_outputs)
            if not running_loss_ok(running, loss_limit, progress, epoch_loss.points / n):
                return _EpochOutcome(running, False)
    projection.flush()
    return _outcome(run, epoch_loss)


def _outcome(run: _Run, epoch_loss: EpochLoss) -> _EpochOutcome:
    """A finished SGD epoch's losses; the ridge penalty from the projection, where it
    measures it at the epoch's end."""
    if run.ridge:
        penalty = run.projection.epoch_penalty(run.ridge)
        if penalty is not None:
            epoch_loss.add_penalty(penalty * epoch_loss.points / max(run.n, 1))
    weights = epoch_loss.output_weights
    epoch_loss.output_weights = run.output_weights
    user_mse, objective = epoch_loss.mse(), epoch_loss.objective()
    epoch_loss.output_weights = weights
    return _EpochOutcome(
        epoch_loss.mean(run.n_outputs), True, epoch_loss.stderr(), epoch_loss.mse(), user_mse,
        objective if run.ridge else None,
    )  # fmt: skip
