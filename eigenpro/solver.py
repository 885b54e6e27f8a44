"""The EigenPro 2 iteration: preconditioned mini-batch SGD on kernel coefficients.

One step on a batch ``B`` of ``m`` points (DESIGN.md section 1)::

    r        = K(X_B, Z) @ alpha - Y_B  (+ ridge * alpha_B)
    alpha_B -= (eta / m) * r
    alpha_S += (eta / m) * E diag(D) E^T K(X_S, X_B) r

``K(X_B, Z)`` is evaluated block by block (:func:`~eigenpro.kernels.kernel_matmul`) and the
columns ``K(X_B, X_S)`` the preconditioner needs are taken from those same blocks. Each
epoch is checked for divergence: on a non-finite or exploding loss the epoch is undone, the
step halved and the epoch retried.
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

from .kernels import Kernel, PreparedCenters, kernel_matmul
from .preconditioner import EigenProPreconditioner

__all__ = ["DivergenceError", "FitResult", "MemoryPlan", "fit_eigenpro", "memory_plan", "predict"]

#: An epoch diverged when its running loss exceeds this multiple of the reference loss: the
#: previous epoch's loss (the zero model's loss in the first epoch).
DIVERGENCE_FACTOR = 2.0
#: ... but growth below this fraction of the zero model's loss is read as noise, not divergence.
NOISE_FLOOR = 1e-3
#: How many times a diverged epoch is retried with a halved step before giving up.
MAX_RETRIES = 4
#: Batch-size cap on the CPU, where larger batches buy no speed (GEMM is saturated well below).
CPU_MAX_BATCH = 4096


class DivergenceError(RuntimeError):
    """The iteration diverged even after the step size was reduced."""


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

    Fixed: centers and their fused form for the distance product (2 x n x d), coefficients,
    targets and an epoch snapshot (3 x n x l), row
    statistics (n) and the eigenvectors (at most s x s/4). Per batch row: a full row of the
    kernel block plus a temporary (2n), its subsample columns (s) and the batch itself. On
    the CPU the batch is also capped at :data:`CPU_MAX_BATCH`, beyond which GEMM gets no
    faster.
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    fixed = itemsize * (
        n_centers * (2 * n_features + 3 * n_outputs + 3)
        + subsample_size * (subsample_size // 4 + 1)
    )
    free = max(memory_budget - fixed, 0)
    per_row = itemsize * (2 * n_centers + subsample_size + n_features + 2 * n_outputs)
    batch = max(1, free // per_row)
    if device.type == "cpu":
        batch = min(batch, CPU_MAX_BATCH)
    block = max(2**16, free // (2 * itemsize))
    return MemoryPlan(max_batch_size=int(batch), max_block_elements=int(block))


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
    so serving one row at a time gives what a batch gives.
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

    Returns
    -------
    FitResult
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
    reference = zero_loss
    sync_every = _sync_every(device)

    result = FitResult(coef=coef, batch_size=batch_size, step_size=step_size)
    best_score, best_coef, stale = -math.inf, None, 0
    eta = float(step_size)

    # Divergence recovery: `good` holds the coefficients at the start of the latest epoch whose
    # running loss improved on its predecessor's; a diverged epoch rolls back to it.
    good, good_reference = coef.clone(), reference
    for epoch in range(1, n_epochs + 1):
        for attempt in range(MAX_RETRIES + 1):
            start = time.perf_counter()
            loss_limit = DIVERGENCE_FACTOR * max(reference, NOISE_FLOOR * zero_loss)
            snapshot = coef.clone()
            loss, ok = _run_epoch(
                kernel, X, Y, order, coef, prepared, preconditioner, n_sub, use_correction,
                batch_size, eta, ridge, rng, max_block_elements, loss_limit, sync_every,
                epoch, n_epochs, verbose,
            )  # fmt: skip
            if ok:
                break
            if attempt == MAX_RETRIES:
                raise DivergenceError(
                    f"EigenPro diverged in epoch {epoch} even with the step size reduced "
                    f"{MAX_RETRIES} times (to {eta:.3g}). The kernel may not be positive "
                    "definite, or the data may need scaling; try a smaller step_size or "
                    "batch_size, or a larger subsample_size."
                )
            warnings.warn(
                f"EigenPro diverged in epoch {epoch} (loss {loss:.3g}); rolling back to the last "
                f"improving epoch and retrying with the step size halved to {eta / 2:.3g}.",
                RuntimeWarning,
                stacklevel=2,
            )
            coef.copy_(good)
            reference = good_reference
            eta /= 2
        if loss <= reference:
            good, good_reference = snapshot, reference
        reference = loss
        seconds = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "train_loss": loss,
            "val_score": None,
            "seconds": seconds,
            "step_size": eta,
        }
        stop = False
        if validation is not None:
            X_val, score_fn = validation
            pred = predict(
                kernel, X_val, None, coef, max_block_elements=max_block_elements, prepared=prepared
            )
            score = float(score_fn(pred))
            record["val_score"] = score
            if score > best_score:
                best_score, best_coef, stale = score, coef.clone(), 0
                result.best_epoch = epoch
            else:
                stale += 1
                if n_iter_no_change is not None and stale >= n_iter_no_change:
                    stop = True
        else:
            result.best_epoch = epoch
        if callback is not None:
            record.update(callback(epoch, _training_order(coef, order), dict(record)) or {})
            stop = stop or bool(record.get("stop"))
        result.history.append(record)
        result.n_epochs = epoch
        if stop:
            break

    if best_coef is not None:
        coef = best_coef
    result.coef = _training_order(coef, order)
    result.step_size = eta
    return result


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


def running_loss_ok(running: float, loss_limit: float, bar, verbose: int) -> bool:
    """Divergence check of an epoch in progress, shared by the EigenPro 2 and 3 loops: False
    (and the progress bar closed) when the running loss is non-finite or above the limit."""
    if not math.isfinite(running) or running > loss_limit:
        bar.close()
        return False
    if verbose:
        bar.set_postfix(loss=f"{running:.4g}", refresh=False)
    return True


def _run_epoch(
    kernel, X, Y, order, coef, prepared, preconditioner, n_sub, use_correction, batch_size, eta,
    ridge, rng, max_block_elements, loss_limit, sync_every, epoch, n_epochs, verbose,
):  # fmt: skip
    """One pass over shuffled batches. Returns (mean batch loss, finished without diverging).

    Batches are positions in the subsample-first order of ``coef`` and ``prepared``;
    ``order`` maps them to rows of ``X`` and ``Y``.
    """
    n, n_out = Y.shape
    device = X.device
    positions = torch.as_tensor(rng.permutation(n), device=device)
    batches = torch.split(positions, batch_size)
    total = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
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
        total += residual.pow(2).sum(dtype=torch.float64)
        seen += pos.numel()
        if use_correction:
            correction = preconditioner.correction(kmat_subsample, residual)
        coef.index_add_(0, pos, residual, alpha=-rate)
        if use_correction:
            coef[:n_sub].add_(correction, alpha=rate)
        if (i + 1) % sync_every == 0 or i + 1 == len(batches):
            running = float(total) / (seen * n_out)
            if not running_loss_ok(running, loss_limit, bar, verbose):
                return running, False
    bar.close()
    return float(total) / (n * n_out), True
