"""The conjugate-gradient finish against closed forms (float64)."""

import numpy as np
import pytest
import torch

from eigenpro import EigenProRegressor
from eigenpro.conjugate_gradient import ConjugateGradient, plan_sgd_epochs
from eigenpro.distributed import Communicator
from eigenpro.kernels import get_kernel
from eigenpro.model import CenterModel


class _Rows:
    def __init__(self, X, Y):
        self.X, self.Y = X, Y

    def take(self, idx):
        idx = torch.as_tensor(idx)
        return idx, self.X[idx], self.Y[idx]


def _problem(n=300, p=25, seed=0):
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(n, 3)))
    x = X.numpy()
    Y = torch.tensor(np.c_[np.sin(x[:, 0]), x[:, 1] * x[:, 2]] + 0.1 * rng.normal(size=(n, 2)))
    Z = X[torch.as_tensor(rng.choice(n, size=p, replace=False))]
    return X, Y, Z, get_kernel("gaussian", bandwidth=1.0)


def _solver(X, Y, Z, kernel, jitter, batch_size=64):
    model = CenterModel(
        kernel, Z, Y.shape[1], n_centers=len(Z), lo=0, comm=Communicator(),
        max_block_elements=2**20,
    )  # fmt: skip
    kmat = kernel(Z, Z) + jitter * torch.eye(len(Z), dtype=Z.dtype)
    return model, ConjugateGradient(model, torch.linalg.cholesky(kmat), _Rows(X, Y), batch_size)


@pytest.mark.parametrize("jitter", [1e-10, 1e-2])
def test_reaches_the_least_squares_coefficients_in_at_most_p_iterations(jitter):
    """In exact arithmetic CG ends within p iterations whatever the preconditioner: the fit
    is then the least-squares one, per output (its values; the coefficients of this
    ill-conditioned system are determined only to its condition number)."""
    X, Y, Z, kernel = _problem()
    model, cg = _solver(X, Y, Z, kernel, jitter)
    kxz = kernel(X, Z)
    exact = torch.linalg.lstsq(kxz, Y, driver="gelsd").solution
    losses = [cg.epoch() for _ in range(len(Z) + 5)]
    np.testing.assert_allclose((kxz @ model.coef).numpy(), (kxz @ exact).numpy(), atol=1e-6)
    assert losses[0] == pytest.approx(float(Y.pow(2).mean()), rel=1e-12)  # the residual pass
    # each pass reports the exact loss of its coefficients, which never rises
    assert losses[-1] == pytest.approx(float((kxz @ model.coef - Y).pow(2).mean()), rel=1e-9)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:], strict=False))


def test_a_restart_continues_from_the_current_coefficients():
    """A roll-back restarts the recurrences from the restored coefficients: the next pass
    recomputes the residual and leaves them unchanged."""
    X, Y, Z, kernel = _problem(seed=1)
    model, cg = _solver(X, Y, Z, kernel, 1e-3)
    for _ in range(3):
        cg.epoch()
    saved = model.state_dict()
    cg.epoch()
    model.load_state_dict(saved)
    cg.load_state_dict(cg.state_dict())
    before = model.coef.clone()
    loss = cg.epoch()
    assert torch.equal(model.coef, before)
    assert loss == pytest.approx(float((kernel(X, Z) @ before - Y).pow(2).mean()), rel=1e-12)


def test_sgd_epochs_plan():
    assert plan_sgd_epochs("auto", 10) == 1 and plan_sgd_epochs("auto", 4) == 1
    assert plan_sgd_epochs("auto", 3) is None  # too few epochs left for it to pay
    assert plan_sgd_epochs(0, 5) == 0 and plan_sgd_epochs(5, 5) is None


@pytest.mark.parametrize("value", [-1, 1.5, "yes"])
def test_bad_sgd_epochs_raise(value):
    X, Y, _, _ = _problem(n=100)
    model = EigenProRegressor(n_centers=20, inner_params={"sgd_epochs": value})
    with pytest.raises(ValueError, match="sgd_epochs"):
        model.fit(X.numpy(), Y.numpy()[:, 0])
