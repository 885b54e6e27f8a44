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
One iteration is one pass over the data (kernel blocks ``B = K(X_B, Z)``, ``B^T (B d)``), like
an SGD epoch; the first needs one more pass for the residual of SGD's last iterate.

Each pass also evaluates the current iterate on its blocks: the residual ``K(Z, X)(Y - K(X, Z)
c)`` is recomputed exactly every iteration (no drift of a recursive residual in float32), and
the training loss after the step follows exactly from three sums per output.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ConjugateGradient", "plan_sgd_epochs", "preconditioner_jitter"]

#: SGD epochs before the conjugate-gradient epochs ("auto"). MNIST 60k, p = 10000 (float32,
#: 8 epochs): after 1, 2 or 3 SGD epochs, training MSE 0.00538, 0.00540, 0.00541 and test
#: error 1.68, 1.70, 1.69% (least-squares fit: 0.00537, 1.68%); none, 0.00564 and 1.65%.
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
#: 4.6e-6 / 2.1e-5 at 1e-6 / 1e-4 / 1e-3 / 1e-2.
JITTER_PER_ROOT_CENTER = 1e-4


def preconditioner_jitter(n_centers: int) -> float:
    """Relative jitter of the factor behind the preconditioner (:data:`JITTER_PER_ROOT_CENTER`)."""
    return JITTER_PER_ROOT_CENTER * math.sqrt(n_centers)


def plan_sgd_epochs(requested: int | str, n_epochs: int) -> int | None:
    """SGD epochs before conjugate gradient takes over (None: SGD throughout), for
    ``inner_params["sgd_epochs"]`` (``requested``) and ``n_epochs``."""
    if requested == "auto":
        return SGD_EPOCHS if n_epochs >= SGD_EPOCHS + MIN_EPOCHS else None
    return int(requested) if int(requested) < n_epochs else None


class ConjugateGradient:
    """Preconditioned CG on the normal equations of the model's centers, one column per output.

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

    def __init__(self, model, factor: torch.Tensor, rows, batch_size: int):
        self.model, self.factor, self.rows, self.batch_size = model, factor, rows, batch_size
        self.restart()

    @property
    def n(self) -> int:
        return self.rows.Y.shape[0]

    def restart(self) -> None:
        """Forget the search direction: the next epoch starts from a fresh residual."""
        self.residual = self.direction = self.rz = None

    # The divergence guard's protocol: a roll-back restarts from the restored coefficients.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.restart()

    def _precondition(self, residual: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(torch.cholesky_solve(residual, self.factor), self.factor)

    def _pass(self, direction: torch.Tensor | None):
        """One pass over the data: the residual ``K(Z, X)(Y - K(X, Z) c)`` of the current
        coefficients, and with ``direction``, ``K(Z, X) K(X, Z) d`` and the sums that give
        the loss after a step along ``d`` (float64: ``s.s``, ``s.v``, ``v.v`` per output,
        with ``s = Y - K c`` and ``v = K d``)."""
        model, n = self.model, self.n
        residual = torch.zeros_like(model.coef)
        applied = torch.zeros_like(model.coef) if direction is not None else None
        sums = torch.zeros(3, model.coef.shape[1], dtype=torch.float64, device=model.device)
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, n))
            _, Xb, Yb = self.rows.take(idx)
            block = model.block(Xb)
            coef = model.coef if direction is None else torch.cat([model.coef, direction], 1)
            out = block @ coef if block is not None else model.products(Xb, coef)
            s = Yb - out[:, : Yb.shape[1]]
            sums[0] += s.double().pow(2).sum(0)
            if direction is not None:
                v = out[:, Yb.shape[1] :]
                sums[1] += (s.double() * v.double()).sum(0)
                sums[2] += v.double().pow(2).sum(0)
                s = torch.cat([s, v], 1)
            back = model.gradient(Xb, s, block)
            residual += back[:, : Yb.shape[1]]
            if direction is not None:
                applied += back[:, Yb.shape[1] :]
        return residual, applied, sums

    def epoch(self) -> float:
        """One pass: the first computes the residual of the current coefficients; each later
        one takes a CG step. Returns the mean squared training residual (per output) of the
        coefficients after the pass."""
        n_out = self.model.coef.shape[1]
        if self.residual is None:
            self.residual, _, sums = self._pass(None)
            z = self._precondition(self.residual)
            self.direction = z
            self.rz = (self.residual.double() * z.double()).sum(0)
            return float(sums[0].sum()) / (self.n * n_out)
        residual, applied, sums = self._pass(self.direction)
        curvature = (self.direction.double() * applied.double()).sum(0)
        alpha = torch.where(curvature > 0, self.rz / curvature, torch.zeros_like(curvature))
        alpha = torch.nan_to_num(alpha, nan=0.0, posinf=0.0, neginf=0.0)
        self.model.coef.add_(self.direction * alpha.to(self.direction.dtype))
        loss = sums[0] - 2 * alpha * sums[1] + alpha.pow(2) * sums[2]
        # the exact residual at the new coefficients, from this pass's two products
        self.residual = residual - applied * alpha.to(applied.dtype)
        z = self._precondition(self.residual)
        rz = (self.residual.double() * z.double()).sum(0)
        beta = torch.where(self.rz > 0, rz / self.rz, torch.zeros_like(rz))
        self.direction = z + self.direction * beta.to(z.dtype)
        self.rz = rz
        return float(loss.clamp_min(0).sum()) / (self.n * n_out)
