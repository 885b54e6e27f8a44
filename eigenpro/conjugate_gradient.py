"""Conjugate-gradient epochs that finish a fit on general centers at the least-squares fit.

With fewer centers than points, the model's best fit ``argmin ||K(X, Z) c - Y||`` leaves
residuals, and mini-batch SGD reaches it only as its step shrinks: the directions beyond the
preconditioner's ``q`` move by about ``n lambda_i / beta`` per epoch. Once SGD has fitted the
top of the spectrum, a few full passes of preconditioned conjugate gradient on the normal
equations (CGNR)::

    K(Z, X) K(X, Z) c = K(Z, X) Y

reach the least-squares fit, with the preconditioner ``(K(Z, Z) + jitter I)^-2`` (up to a
scale): for centers drawn from the data, ``K(Z, X) K(X, Z)`` is about ``(n / p) K(Z, Z)^2``,
as in Falkon (Rudi, Carratino & Rosasco 2017; Meanti et al. 2020), and it costs two
triangular solves with the Cholesky factor that the exact delayed projection already holds.
One iteration is one pass over the data (kernel blocks ``B = K(X_B, Z)``, ``B^T (B d)``),
cheaper than an SGD epoch.

Each pass also evaluates the current iterate on its blocks: the residual ``K(Z, X)(Y - K(X, Z)
c)`` is recomputed exactly every iteration (no drift of a recursive residual in float32), and
the step is the exact minimiser of the training loss over the span of the pass's directions,
whose loss follows from small Gram matrices. CG needs the residual before its first direction;
rather than spend a pass on it alone, the first pass after SGD searches the span of SGD's last
displacement and the preconditioned sum of the gradients SGD's batches met (known before the
pass). MNIST 60k, p = 10000, after one SGD epoch (training MSE 0.00744 after a residual-only
pass): 0.00702 after that first pass, and 0.00548 instead of 0.00552 after five epochs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels import narrow_mm

__all__ = ["ConjugateGradient", "plan_sgd_epochs", "preconditioner_jitter"]

#: SGD epochs before the conjugate-gradient epochs ("auto"). MNIST 60k, p = 10000 (float32,
#: preconditioner jitter 1e-3, before the first pass stepped): training MSE after 5 / 8
#: epochs 0.00565 / 0.00540 with 1 SGD epoch, 0.00562 / 0.00540 with 2, 0.00570 / 0.00541
#: with 3, 0.00750 / 0.00564 with none (least-squares fit: 0.00537). 1 and 2 tie; 1 leaves
#: more of the cheaper CG epochs (7 s against 12 s).
SGD_EPOCHS = 1
#: "auto" finishes with conjugate gradient only when at least this many epochs remain after
#: SGD's (the first computes the residual and does not move the coefficients).
MIN_EPOCHS = 3
#: Jitter of the factor of ``K(Z, Z)`` behind the preconditioner, relative to its largest
#: diagonal, per square root of p. Larger than round-off, it leaves alone the directions whose
#: eigenvalue of the kernel operator (``K(Z, Z) / p``) is below about ``1e-4 / sqrt(p)``, the
#: order of the Nystrom estimate's sampling error, where ``(n / p) K(Z, Z)^2`` misjudges
#: ``K(Z, X) K(X, Z)``. Measured: MNIST 60k, p = 10000, training MSE after 1 SGD + 7 CG
#: epochs 0.00540 / 0.00538 / 0.00539 / 0.00544 at relative jitter 1e-3 / 1e-2 / 3e-2 / 1e-1;
#: 2000 points, 500 centers (float64): excess MSE after 15 iterations 1.2e-4 / 6.7e-5 /
#: 4.6e-6 / 2.1e-5 at 1e-6 / 1e-4 / 1e-3 / 1e-2. Per root center, on Falkon's regression test
#: (800 points, 400 centers, Gaussian bandwidth 20: a very smooth kernel), 10 epochs, test
#: RMSE 2.93 / 2.39 / 2.38 / 2.35 at 1e-4 / 5e-5 / 2e-5 / 1e-5 (optimum on the centers 2.33),
#: and MNIST 60k, p = 10000, 5 epochs: test error 1.67% / 1.68% / - / 1.71% (training MSE
#: 0.00548 / 0.00550 / - / 0.00558). 5e-5 serves both.
JITTER_PER_ROOT_CENTER = 5e-5


def preconditioner_jitter(n_centers: int, ridge_per_point: float = 0.0) -> float:
    """Relative jitter of the factor behind the preconditioner (:data:`JITTER_PER_ROOT_CENTER`),
    or, with a ridge, ``ridge p / (2 n)`` when larger: ``(K(Z, Z) + j I)^2`` then matches
    ``(p / n) (K(Z, X) K(X, Z) + ridge K(Z, Z))`` to first order in ``j`` (kernels of unit
    diagonal; ``ridge_per_point``: ``ridge / n``)."""
    return max(JITTER_PER_ROOT_CENTER * math.sqrt(n_centers), 0.5 * ridge_per_point * n_centers)


def plan_sgd_epochs(requested: int | str, n_epochs: int, warm: bool = False) -> int | None:
    """SGD epochs before conjugate gradient takes over (None: SGD throughout), for
    ``inner_params["sgd_epochs"]`` (``requested``) and ``n_epochs``. A warm start continues
    with conjugate gradient at once ("auto"): an SGD epoch would first take a fitted model
    back up to SGD's noise floor."""
    if requested == "auto":
        sgd_epochs = 0 if warm else SGD_EPOCHS
        return sgd_epochs if n_epochs >= sgd_epochs + MIN_EPOCHS else None
    return int(requested) if int(requested) < n_epochs else None


class ConjugateGradient:
    """Preconditioned CG on the normal equations of the model's centers, one column per output.

    Each pass minimises the training loss exactly over the span of its directions (per
    output): standard CG's step along one conjugate direction, and in the first pass after
    SGD, a step in the span of SGD's last displacement and the preconditioned sum of the
    gradients its batches met, so that the pass which computes the first residual also moves.

    Parameters
    ----------
    model : CenterModel
        One process's centers and coefficients (updated in place).
    factor : Tensor of shape (p, p)
        Cholesky factor of ``K(Z, Z) + jitter I``.
    rows : object
        The training rows: ``rows.take(idx) -> (idx, X_B, Y_B)`` and ``rows.Y``.
    batch_size : int
        Rows per kernel block.
    """

    def __init__(
        self, model, factor: torch.Tensor, rows, batch_size: int, ridge: float = 0.0,
        jitter: float = 0.0,
    ):  # fmt: skip
        self.model, self.factor, self.rows, self.batch_size = model, factor, rows, batch_size
        self.ridge, self.jitter = ridge, jitter
        self.rtol = 100 * torch.finfo(model.dtype).eps  # of the small Gram matrices
        self.restart()

    @property
    def n(self) -> int:
        return self.rows.Y.shape[0]

    def restart(self) -> None:
        """Forget the search directions: the next pass starts from a fresh residual."""
        self.directions = self.start = self.gradient = None

    # The divergence guard's protocol: a roll-back restarts from the restored coefficients.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.restart()

    def begin_sgd_epoch(self):
        """Before SGD's last epoch: remember where it starts; returns ``collect(X, residual,
        block)``, to be called for each of its batches."""
        self.start = self.model.coef.clone()
        self.gradient = torch.zeros_like(self.model.coef)
        return self._collect

    def _collect(self, X: torch.Tensor, residual: torch.Tensor, block) -> None:
        self.gradient += self.model.gradient(X, residual, block)

    def _kzz(self, v: torch.Tensor) -> torch.Tensor:
        """``K(Z, Z) v`` from the factor of ``K(Z, Z) + jitter I`` (``p^2 l`` operations)."""
        return self.factor @ (self.factor.T @ v) - self.jitter * v

    def _precondition(self, residual: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(torch.cholesky_solve(residual, self.factor), self.factor)

    def _pass(self, directions: torch.Tensor | None, advance=None):
        """One pass over the data: ``r = K(Z, X)(Y - K(X, Z) c)`` at the current
        coefficients, ``K(Z, X) K(X, Z) D`` for the directions ``D`` (k, p, l) and the
        squared residual per output (float64)."""
        model, n, (p, n_out) = self.model, self.n, self.model.coef.shape
        k = 0 if directions is None else directions.shape[0]
        stacked = torch.cat([model.coef, *([] if k == 0 else directions.unbind(0))], 1)
        residual = torch.zeros(p, (1 + k) * n_out, dtype=model.dtype, device=model.device)
        squares = torch.zeros(n_out, dtype=torch.float64, device=model.device)
        for start in range(0, n, self.batch_size):
            _, Xb, Yb = self.rows.take(np.arange(start, min(start + self.batch_size, n)))
            block = model.block(Xb)
            out = narrow_mm(block, stacked) if block is not None else model.products(Xb, stacked)
            out[:, :n_out] = Yb - out[:, :n_out]
            squares += out[:, :n_out].double().pow(2).sum(0)
            residual += model.gradient(Xb, out, block)
            if advance is not None:
                advance()
        applied = residual[:, n_out:].reshape(p, k, n_out).permute(1, 0, 2)
        return residual[:, :n_out], applied, squares

    def _solve(self, gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``gram^+ rhs`` per output: (l, k, k) and (l, k) -> (l, k), float64."""
        return (torch.linalg.pinv(gram, rtol=self.rtol, hermitian=True) @ rhs[..., None])[..., 0]

    def epoch(self, advance=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: the exact residual of the current coefficients and, when there are
        directions, the best step in their span. Returns, per output (float64), the mean
        squared training residual of the coefficients after the pass and the objective
        (that plus ``ridge c^T K(Z, Z) c`` per row). ``advance()`` is called after each
        block."""
        model = self.model
        directions = self.directions
        if directions is None and self.start is not None:  # right after SGD
            sgd_step, gradient = model.coef - self.start, self._precondition(self.gradient)
            directions = torch.stack([sgd_step, gradient])
        self.start = self.gradient = None
        residual, applied, squares = self._pass(directions, advance)
        ridge = self.ridge
        kc = self._kzz(model.coef) if ridge else None
        penalty = (model.coef * kc).sum(0, dtype=torch.float64) if ridge else 0.0
        if ridge:
            residual = residual - ridge * kc
        loss = squares
        if directions is not None:
            D, AD_data = directions.double(), applied.double()
            kd = torch.stack([self._kzz(v) for v in directions.unbind(0)]) if ridge else None
            AD = AD_data + ridge * kd.double() if ridge else AD_data
            gram = torch.einsum("ipl,jpl->lij", D, AD)
            gram = (gram + gram.transpose(1, 2)) / 2  # symmetric but for round-off
            along = torch.einsum("ipl,pl->li", D, residual.double())
            a = self._solve(gram, along)
            model.coef += torch.einsum("kpl,lk->pl", directions, a.to(model.dtype))
            applied = AD.to(model.dtype)
            residual = residual - torch.einsum("kpl,lk->pl", applied, a.to(model.dtype))
            gram_data = torch.einsum("ipl,jpl->lij", D, AD_data)
            data_along = along
            if ridge:  # D^T K(Z, X)(Y - K(X, Z) c): the data part of the residual alone
                dk = torch.einsum("ipl,pl->li", D, kc.double())
                dkd = torch.einsum("ipl,jpl->lij", D, kd.double())
                data_along = along + ridge * dk
                penalty = penalty + 2 * (a * dk).sum(1) + _quadratic(a, dkd)
            loss = squares - 2 * (a * data_along).sum(1) + _quadratic(a, gram_data)
        # next direction: the preconditioned residual, A-conjugate to this pass's directions
        z = self._precondition(residual)
        if directions is not None:
            gamma = self._solve(gram, torch.einsum("ipl,pl->li", AD, z.double()))
            z = z - torch.einsum("kpl,lk->pl", directions, gamma.to(z.dtype))
        self.directions = z[None]
        mse = loss.clamp_min(0) / self.n
        return mse, mse + torch.as_tensor(penalty).clamp_min(0) * ridge / self.n


def _quadratic(a: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``a_l^T gram_l a_l`` per output: (l, k) and (l, k, k) -> (l,)."""
    return torch.einsum("li,lij,lj->l", a, gram, a)
