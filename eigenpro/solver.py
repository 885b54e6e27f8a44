"""The EigenPro 2 iteration: preconditioned mini-batch SGD on kernel coefficients.

One step on a batch ``B`` of ``m`` points (DESIGN.md section 1)::

    r        = K(X_B, Z) @ alpha - Y_B  (+ ridge * alpha_B)
    alpha_B -= (eta / m) * r
    alpha_S += (eta / m) * E diag(D) E^T K(X_S, X_B) r

``K(X_B, Z)`` is evaluated block by block (:func:`~eigenpro.kernels.kernel_matmul`) and the
columns ``K(X_B, X_S)`` the preconditioner needs are taken from those same blocks.

Divergence is caught at its first sign (:class:`DivergenceGuard`): a non-finite or exploding
running loss, an epoch whose loss is above the zero model's or has risen over the best
epoch's, or returned coefficients whose loss on a sample of training rows is above the zero
model's. The fit then rolls back to the start of its best epoch and continues with half the
step, with a warning; a fit never returns a diverged iterate.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .kernels import Kernel, PreparedCenters, kernel_matmul, padded_width
from .preconditioner import EigenProPreconditioner, default_subsample_size, setup_bytes

__all__ = [
    "DivergenceError",
    "DivergenceGuard",
    "FitResult",
    "MemoryPlan",
    "budget_for_batch",
    "fit_eigenpro",
    "memory_plan",
    "predict",
    "subsample_size_for_budget",
]

#: An epoch is abandoned at once when its running loss exceeds this multiple of the
#: reference loss: the previous epoch's loss (the zero model's loss in the first epoch).
DIVERGENCE_FACTOR = 2.0
#: ... but growth below this fraction of the zero model's loss is read as noise, not divergence.
NOISE_FLOOR = 1e-3
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


class DivergenceError(RuntimeError):
    """The iteration diverged even after the step size was reduced."""


class DivergenceGuard:
    """Epoch-level divergence detection and roll-back, shared by the EigenPro 2 and 3 loops.

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
    state : list of Tensor
        The iterate, updated in place by the solver.
    zero_loss : float
        Loss of the zero model, where the fit starts.
    no_exact_fit : str, optional
        Why the problem has no exact fit, when it has none: its loss then has a floor that
        constant-step SGD reaches noisily, and roll-backs are reported as lowering that
        floor (once per fit) rather than as divergence.
    companions : list, optional
        Objects with ``snapshot()`` and ``restore(snapshot)`` (e.g. a
        :class:`ValidationTracker`), saved and restored with the iterate.
    """

    def __init__(
        self,
        state: list[torch.Tensor],
        zero_loss: float,
        no_exact_fit: str | None = None,
        companions: list | None = None,
    ):
        self.state = state
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
            [t.clone() for t in self.state],
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
        for tensor, value in zip(self.state, tensors, strict=True):
            tensor.copy_(value)
        for companion, snapshot in zip(self.companions, companions, strict=True):
            companion.restore(snapshot)
        # The rerun epoch is judged against the loss before it, not against its own earlier
        # (larger-step) run.
        self.reference = self.best_loss = reference
        self._rising = False
        return resume

    def warn(self, problem: str, resume: int, step_size: float) -> None:
        """Report a roll-back (``step_size``: the new, halved step)."""
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


class EpochLoss:
    """The running loss of an epoch (mean squared residual over its batches, each measured
    before its update) and the standard error of that mean, from the spread of the batches'
    losses. Accumulated on the device; read back only when asked."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.moments = torch.zeros(2, dtype=torch.float64, device=device)  # sum, sum of squares
        self.points = 0
        self.batches = 0

    def add(self, residual: torch.Tensor) -> None:
        batch = residual.pow(2).sum(dtype=torch.float64)
        self.total += batch
        per_point = batch / max(residual.numel(), 1)
        self.moments += torch.stack([per_point, per_point * per_point])
        self.points += residual.shape[0]
        self.batches += 1

    def mean(self, n_outputs: int) -> float:
        return float(self.total) / max(self.points * n_outputs, 1)

    def stderr(self) -> float:
        if self.batches < 2:
            return 0.0
        first, second = (float(v) / self.batches for v in self.moments)
        return math.sqrt(max(second - first * first, 0.0) / self.batches)


class ValidationTracker:
    """The best epoch by validation score, and when to stop early.

    Parameters
    ----------
    n_iter_no_change : int or None
        Stop after this many epochs without improvement (None: never).
    """

    def __init__(self, n_iter_no_change: int | None):
        self.n_iter_no_change = n_iter_no_change
        self.best_score, self.best_coef, self.best_epoch, self.stale = -math.inf, None, 0, 0

    def update(self, epoch: int, score: float, coef: torch.Tensor) -> bool:
        """Record the epoch's score (``coef`` copied when best); True when the fit should stop."""
        if score > self.best_score:
            self.best_score, self.best_coef, self.best_epoch = score, coef.clone(), epoch
            self.stale = 0
            return False
        self.stale += 1
        return self.n_iter_no_change is not None and self.stale >= self.n_iter_no_change

    def snapshot(self) -> tuple:
        # best_coef is never modified in place: a reference is a snapshot.
        return self.best_score, self.best_coef, self.best_epoch, self.stale

    def restore(self, snapshot: tuple) -> None:
        self.best_score, self.best_coef, self.best_epoch, self.stale = snapshot


@dataclass
class FitResult:
    """What :func:`fit_eigenpro` returns.

    Attributes
    ----------
    coef : Tensor of shape (p, l)
        Coefficients of the centers.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss`` (mean squared residual over the epoch's batches,
        measured before each update), ``val_score`` (or None), ``seconds``, ``step_size``.
    n_epochs : int
        Epochs run (fewer than asked when early stopping triggered).
    batch_size : int
    step_size : float
        The final step size (smaller than the initial one if divergence was recovered).
    best_epoch : int
        The epoch whose coefficients were returned.
    """

    coef: torch.Tensor
    history: list[dict] = field(default_factory=list)
    n_epochs: int = 0
    batch_size: int = 0
    step_size: float = 0.0
    best_epoch: int = 0


@dataclass
class MemoryPlan:
    """How the solver uses its memory budget.

    Attributes
    ----------
    max_batch_size : int
        Largest batch whose ``m x n`` kernel block (and one temporary) fits beside the data.
    max_block_elements : int
        Largest kernel block materialised at once.
    """

    max_batch_size: int
    max_block_elements: int


#: Smallest Nystrom subsample a small memory budget scales the automatic one down to.
MIN_SUBSAMPLE = 100


def _plan_bytes(n: int, d: int, outputs: int, s: int, itemsize: int) -> tuple[int, int]:
    """(fixed bytes, bytes per batch row) of the EigenPro 2 iteration (:func:`memory_plan`)."""
    fixed = itemsize * (n * (2 * d + padded_width(d + 2) + 4 * outputs) + s * (s // 4 + 1))
    fixed += 16 * n  # the centers' order and positions (int64)
    per_row = itemsize * (2 * n + s + d + 2 * outputs)
    return fixed, per_row


def memory_plan(
    n_centers: int,
    n_features: int,
    n_outputs: int,
    subsample_size: int,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
) -> MemoryPlan:
    """Split ``memory_budget`` bytes between the fixed tensors and the kernel blocks.

    Fixed: the training points, their subsample-first copy while it is prepared, and the
    prepared centers (n x (2d + d + 2), the last rounded up by
    :func:`~eigenpro.kernels.padded_width`), coefficients, targets, an epoch snapshot and
    the best epoch's coefficients (4 x n x l), the centers' order (two int64 per center) and
    the eigenvectors (at most s x s/4). Per batch row: a
    full row of the kernel block plus a temporary (2n), its subsample columns (s) and the
    batch itself. On the CPU the batch is also capped at :data:`CPU_MAX_BATCH`, beyond which
    GEMM gets no faster. Building the preconditioner comes first and is sized separately
    (:func:`subsample_size_for_budget`).
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    fixed, per_row = _plan_bytes(n_centers, n_features, n_outputs, subsample_size, itemsize)
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
    ``batch_size`` rows."""
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
    so serving one row at a time gives what a batch gives. The solvers' own evaluations
    (validation, loss checks) call :func:`~eigenpro.kernels.kernel_matmul` directly, without
    the padding this costs.
    """
    return kernel_matmul(
        kernel, X, centers, coef, max_block_elements=max_block_elements, prepared=prepared,
        row_invariant=True,
    )  # fmt: skip


def _sync_every(device: torch.device) -> int:
    # Reading a loss back stalls an accelerator's queue; on the CPU it is free.
    return 1 if device.type == "cpu" else 32


def fit_eigenpro(
    kernel: Kernel,
    X: torch.Tensor,
    Y: torch.Tensor,
    preconditioner: EigenProPreconditioner,
    *,
    batch_size: int,
    step_size: float,
    n_epochs: int,
    ridge: float = 0.0,
    rng: np.random.Generator | None = None,
    max_block_elements: int = 2**24,
    validation: tuple[torch.Tensor, Callable[[torch.Tensor], float]] | None = None,
    n_iter_no_change: int | None = None,
    callback: Callable[[int, torch.Tensor, dict], dict | None] | None = None,
    verbose: int = 0,
    no_exact_fit: str | None = None,
) -> FitResult:
    """Run the EigenPro 2 iteration with the training points as centers.

    Parameters
    ----------
    kernel : Kernel
    X : Tensor of shape (n, d)
        Training points, which are also the centers.
    Y : Tensor of shape (n, l)
        Targets.
    preconditioner : EigenProPreconditioner
        Its subsample indices refer to rows of ``X``.
    batch_size, step_size : int, float
        ``m`` and ``eta`` of the update ``alpha_B -= (eta / m) r``.
    n_epochs : int
    ridge : float
        Solve ``(K + ridge I) alpha = Y``.
    rng : numpy Generator
        Shuffles the batches.
    max_block_elements : int
        Largest kernel block held at once.
    validation : (X_val, score) pair, optional
        ``score(predictions) -> float`` (higher is better), evaluated after each epoch; the
        coefficients of the best epoch are returned.
    n_iter_no_change : int, optional
        With ``validation``, stop after this many epochs without improvement.
    callback : callable, optional
        ``callback(epoch, coef, record)`` after each epoch (outside the timed part), with the
        epoch's history record so far (``train_loss``, ``seconds``...); a returned dict is
        merged into the record, and ``"stop": True`` in it ends the fit.
    verbose : int
        0: silent; 1: a progress bar per epoch with the running loss.
    no_exact_fit : str, optional
        Why the problem has no exact fit, if known (see :class:`DivergenceGuard`).

    Returns
    -------
    FitResult

    Raises
    ------
    DivergenceError
        When the loss keeps diverging after the step was halved :data:`MAX_RETRIES` times
        (each time the fit rolls back to the start of its best epoch, with a warning).
    """
    rng = np.random.default_rng() if rng is None else rng
    n, n_out = Y.shape
    device = X.device
    # The solver orders the centers with the subsample first: the preconditioner's columns
    # K(X_B, X_S) are then a contiguous slice of each kernel block, copied out tile by tile,
    # and its update is a slice of the coefficients (no gathers).
    # `coef` lives in that order; `order[j]` is the training row of center j.
    sub_idx = preconditioner.subsample_indices
    order = _subsample_first(sub_idx, n)
    centers = X[order]
    prepared = kernel.prepare(centers)  # once: the fused form of the centers
    del centers  # radial kernels keep only the fused form
    n_sub = sub_idx.numel()
    use_correction = preconditioner.n_components > 0
    coef = torch.zeros(n, n_out, dtype=X.dtype, device=device)
    zero_loss = max(float(Y.pow(2).sum()) / (n * n_out), 1e-30)  # loss of the zero model
    sync_every = _sync_every(device)
    eta = check_step_size(step_size, batch_size, X.dtype)

    def training_loss(coef_now: torch.Tensor, rows: torch.Tensor) -> float:
        """Mean squared residual of ``coef_now`` on training ``rows``."""
        residual = kernel_matmul(
            kernel, X[rows], None, coef_now, max_block_elements=max_block_elements,
            prepared=prepared,
        ).sub_(Y[rows])  # fmt: skip
        if ridge:
            residual.add_(coef_now[positions[rows]], alpha=ridge)
        return float(residual.pow(2).sum(dtype=torch.float64)) / residual.numel()

    positions = torch.empty_like(order)
    positions[order] = torch.arange(n, device=device)  # position of each training row in coef
    check_rows = torch.as_tensor(final_check_rows(n), device=device)
    check_zero_loss = max(float(Y[check_rows].double().pow(2).mean()), 1e-30)

    result = FitResult(coef=coef, batch_size=batch_size, step_size=eta)
    tracker = ValidationTracker(n_iter_no_change) if validation is not None else None
    # Few batches per epoch: judge each epoch by its final iterate on the check rows.
    by_iterate = math.ceil(n / batch_size) < MIN_EPOCH_BATCHES
    guard = DivergenceGuard(
        [coef], check_zero_loss if by_iterate else zero_loss, no_exact_fit,
        [tracker] if tracker else [],
    )  # fmt: skip
    epoch = 1
    while epoch <= n_epochs:
        guard.start_epoch(epoch)
        start_check = training_loss(coef, check_rows) if epoch == n_epochs else None
        start = time.perf_counter()
        loss, finished, stderr = _run_epoch(
            kernel, X, Y, order, coef, prepared, preconditioner, n_sub, use_correction,
            batch_size, eta, ridge, rng, max_block_elements,
            math.inf if by_iterate else guard.loss_limit, sync_every, epoch, n_epochs, verbose,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if by_iterate and finished:
            judged, stderr = training_loss(coef, check_rows), 0.0
        else:
            judged = loss
        problem = guard.problem(judged, finished, stderr)
        record = {
            "epoch": epoch,
            "train_loss": loss,
            "val_score": None,
            "seconds": seconds,
            "step_size": eta,
        }
        stop = False
        if problem is None and tracker is not None:
            X_val, score_fn = validation
            pred = kernel_matmul(
                kernel, X_val, None, coef, max_block_elements=max_block_elements,
                prepared=prepared,
            )  # fmt: skip
            record["val_score"] = float(score_fn(pred))
            stop = tracker.update(epoch, record["val_score"], coef)
        if problem is None and callback is not None:
            record.update(callback(epoch, _training_order(coef, order), dict(record)) or {})
            stop = stop or bool(record.get("stop"))
        if problem is None and (stop or epoch == n_epochs):
            returned = coef if tracker is None or tracker.best_coef is None else tracker.best_coef
            current = returned is coef
            final_loss = judged if by_iterate and current else training_loss(returned, check_rows)
            problem = guard.final_problem(
                final_loss, check_zero_loss, start_check if current else None
            )
        if problem is not None:
            resume = guard.roll_back(problem, eta, epoch)
            eta /= 2
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
        coef, result.best_epoch = tracker.best_coef, tracker.best_epoch
    result.coef = _training_order(coef, order)
    result.step_size = eta
    return result


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


def _subsample_first(sub_idx: torch.Tensor, n: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that starts with ``sub_idx`` (the rest in order)."""
    rest = torch.ones(n, dtype=torch.bool, device=sub_idx.device)
    rest[sub_idx] = False
    return torch.cat([sub_idx, torch.nonzero(rest).flatten()])


def _training_order(coef: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Coefficients indexed by training row, from the solver's subsample-first order."""
    out = torch.empty_like(coef)
    out[order] = coef
    return out


def running_loss_ok(
    running: float, loss_limit: float, bar, verbose: int, seen_fraction: float = 1.0
) -> bool:
    """Divergence check of an epoch in progress, shared by the EigenPro 2 and 3 loops: False
    (and the progress bar closed) when the running loss is non-finite, or above the limit
    once :data:`RUNNING_CHECK_FRACTION` of the epoch is seen (the mean of a few batches is
    too noisy to judge)."""
    over = seen_fraction >= RUNNING_CHECK_FRACTION and running > loss_limit
    if not math.isfinite(running) or over:
        bar.close()
        return False
    if verbose:
        bar.set_postfix(loss=f"{running:.4g}", refresh=False)
    return True


def _run_epoch(
    kernel, X, Y, order, coef, prepared, preconditioner, n_sub, use_correction, batch_size, eta,
    ridge, rng, max_block_elements, loss_limit, sync_every, epoch, n_epochs, verbose,
):  # fmt: skip
    """One pass over shuffled batches. Returns (mean batch loss, finished without diverging,
    standard error of that mean).

    Batches are positions in the subsample-first order of ``coef`` and ``prepared``;
    ``order`` maps them to rows of ``X`` and ``Y``.
    """
    n, n_out = Y.shape
    device = X.device
    positions = torch.as_tensor(rng.permutation(n), device=device)
    batches = torch.split(positions, batch_size)
    epoch_loss = EpochLoss(device)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch}/{n_epochs}",
        unit="batch",
        leave=True,
        disable=verbose < 1,
        mininterval=0.5,
    )
    # One per-point rate for every batch: a short last batch then takes a proportionally
    # smaller (still stable) step instead of a larger one.
    rate = eta / batch_size
    workspace = torch.empty(min(batch_size * n, max_block_elements), dtype=X.dtype, device=device)
    keep = slice(0, n_sub)
    # kernel_matmul reads the centers from `prepared` (subsample-first order).
    for i, pos in enumerate(bar):
        rows = order[pos]
        Xb = X[rows]
        if use_correction:
            pred, kmat_subsample = kernel_matmul(
                kernel,
                Xb,
                None,
                coef,
                prepared=prepared,
                max_block_elements=max_block_elements,
                keep_columns=keep,
                workspace=workspace,
            )
        else:
            pred = kernel_matmul(
                kernel, Xb, None, coef, prepared=prepared, max_block_elements=max_block_elements,
                workspace=workspace,
            )  # fmt: skip
        residual = pred.sub_(Y[rows])
        if ridge:
            residual.add_(coef[pos], alpha=ridge)
        epoch_loss.add(residual)
        if use_correction:
            correction = preconditioner.correction(kmat_subsample, residual)
        coef.index_add_(0, pos, residual, alpha=-rate)
        if use_correction:
            coef[:n_sub].add_(correction, alpha=rate)
        if (i + 1) % sync_every == 0 or i + 1 == len(batches):
            running = epoch_loss.mean(n_out)
            if not running_loss_ok(running, loss_limit, bar, verbose, epoch_loss.points / n):
                return running, False, 0.0
    bar.close()
    return epoch_loss.mean(n_out), True, epoch_loss.stderr()
