"""When a fit stops: the epoch's loss, convergence (``tol``) and validation (early stopping).

:class:`EpochLoss` accumulates an epoch's running losses on the device: the residual the
iteration follows (for the divergence guard) and the prediction error ``f(x) - y`` per output
(the training MSE users read in ``history_``). :class:`ConvergenceTracker` stops a fit when
``n_iter_no_change`` epochs in a row lower the training MSE by less than ``tol`` times the
zero model's, as :class:`sklearn.linear_model.SGDRegressor` does with its ``tol``;
:class:`ValidationTracker` keeps the best epoch by a held-out score and stops when it no
longer improves. Both are saved and restored with the iterate on a roll-back.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ConvergenceTracker", "EpochLoss", "ValidationTracker"]


class EpochLoss:
    """The running losses of an epoch, each batch measured before its update.

    ``mean`` is the mean squared residual the iteration follows (that of ``(K + alpha I) c
    = y`` on the training points with a ridge) and ``stderr`` the standard error of that mean,
    from the spread of the batches' losses; ``mse`` is the mean squared prediction error,
    each output weighted by ``output_weights`` (the squared scales of the targets, so that it
    comes out in the targets' own units). Accumulated on the device; read back only when
    asked.

    Parameters
    ----------
    device : torch.device
    n_outputs : int
    output_weights : Tensor of shape (n_outputs,), optional
    """

    def __init__(self, device: torch.device, n_outputs: int = 1, output_weights=None):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.moments = torch.zeros(2, dtype=torch.float64, device=device)  # sum, sum of squares
        self.errors = torch.zeros(n_outputs, dtype=torch.float64, device=device)
        self.penalty = torch.zeros(n_outputs, dtype=torch.float64, device=device)
        self.output_weights = output_weights
        self.points = 0
        self.batches = 0

    def add(self, residual: torch.Tensor, error: torch.Tensor | None = None, penalty=None):
        """One batch: the iteration's ``residual``, the prediction ``error`` (default: the
        residual) and the batch's share of a ridge penalty per output, if any."""
        batch = residual.pow(2).sum(dtype=torch.float64)
        self.total += batch
        per_point = batch / max(residual.numel(), 1)
        self.moments += torch.stack([per_point, per_point * per_point])
        error = residual if error is None else error
        self.errors += error.pow(2).sum(dim=0, dtype=torch.float64)
        if penalty is not None:
            self.penalty += penalty.to(self.penalty)
        self.points += residual.shape[0]
        self.batches += 1

    def mean(self, n_outputs: int) -> float:
        return float(self.total) / max(self.points * n_outputs, 1)

    def mse(self) -> float:
        """Mean squared prediction error over the epoch's rows and outputs (weighted)."""
        errors = self.errors if self.output_weights is None else self.errors * self.output_weights
        return float(errors.sum()) / max(self.points * self.errors.numel(), 1)

    def add_penalty(self, penalty: torch.Tensor) -> None:
        """A ridge penalty per output (``alpha c^T K c``), measured once for the epoch."""
        self.penalty += penalty.to(self.penalty)

    def objective(self) -> float:
        """The training MSE plus the ridge penalty per row and output (weighted as
        :meth:`mse`): the quantity a ridge fit minimises."""
        penalty = self.penalty
        if self.output_weights is not None:
            penalty = penalty * self.output_weights
        return self.mse() + float(penalty.sum()) / max(self.points * self.errors.numel(), 1)

    def stderr(self) -> float:
        if self.batches < 2:
            return 0.0
        first, second = (float(v) / self.batches for v in self.moments)
        return math.sqrt(max(second - first * first, 0.0) / self.batches)


class ConvergenceTracker:
    """Stop when the training loss has stopped improving: ``n_iter_no_change`` epochs in a
    row whose loss is not below the best so far by ``tol * reference`` (``reference``: the
    zero model's loss, so ``tol`` is a share of the targets' variance).

    Parameters
    ----------
    tol : float
    n_iter_no_change : int
    reference : float
    """

    def __init__(self, tol: float, n_iter_no_change: int, reference: float):
        self.tol, self.n_iter_no_change, self.reference = tol, n_iter_no_change, reference
        self.best, self.stale = math.inf, 0

    def update(self, loss: float) -> bool:
        """Record an accepted epoch's loss; True when the fit has converged."""
        if loss < self.best - self.tol * self.reference:
            self.stale = 0
        else:
            self.stale += 1
        self.best = min(self.best, loss)
        return self.stale >= self.n_iter_no_change

    def snapshot(self) -> tuple:
        return self.best, self.stale

    def restore(self, snapshot: tuple) -> None:
        self.best, self.stale = snapshot


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
