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


def _solver(X, Y, Z, kernel, jitter, batch_size=64, max_block_elements=2**20, ridge=0.0):
    model = CenterModel(
        kernel, Z, Y.shape[1], n_centers=len(Z), lo=0, comm=Communicator(),
        max_block_elements=max_block_elements,
    )  # fmt: skip
    kmat = kernel(Z, Z) + jitter * torch.eye(len(Z), dtype=Z.dtype)
    factor = torch.linalg.cholesky(kmat)
    return model, ConjugateGradient(model, factor, _Rows(X, Y), batch_size, ridge, jitter)


def _loss(cg) -> float:
    """One pass; the mean squared training residual it reports (over the outputs)."""
    return float(cg.epoch()[0].mean())


@pytest.mark.parametrize("jitter", [1e-10, 1e-2])
def test_reaches_the_least_squares_coefficients_in_at_most_p_iterations(jitter):
    """In exact arithmetic CG ends within p iterations whatever the preconditioner: the fit
    is then the least-squares one, per output (its values; the coefficients of this
    ill-conditioned system are determined only to its condition number)."""
    X, Y, Z, kernel = _problem()
    model, cg = _solver(X, Y, Z, kernel, jitter)
    kxz = kernel(X, Z)
    exact = torch.linalg.lstsq(kxz, Y, driver="gelsd").solution
    losses = [_loss(cg) for _ in range(len(Z) + 5)]
    np.testing.assert_allclose((kxz @ model.coef).numpy(), (kxz @ exact).numpy(), atol=1e-6)
    assert losses[0] == pytest.approx(float(Y.pow(2).mean()), rel=1e-12)  # the residual pass
    # each pass reports the exact loss of its coefficients, which never rises
    assert losses[-1] == pytest.approx(float((kxz @ model.coef - Y).pow(2).mean()), rel=1e-9)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:], strict=False))


@pytest.mark.parametrize("ridge", [0.3, 10.0])
def test_with_a_ridge_reaches_the_solution_of_its_normal_equations(ridge):
    """``(K(Z, X) K(X, Z) + ridge K(Z, Z)) c = K(Z, X) Y``: the fit and the objective each
    pass reports (training MSE plus ``ridge c^T K(Z, Z) c`` per row), against a direct solve."""
    X, Y, Z, kernel = _problem(seed=4)
    model, cg = _solver(X, Y, Z, kernel, 1e-3, ridge=ridge)
    kxz, kzz = kernel(X, Z), kernel(Z, Z)
    exact = torch.linalg.solve(kxz.T @ kxz + ridge * kzz, kxz.T @ Y)
    for _ in range(2 * len(Z)):  # p passes in exact arithmetic; round-off takes a few more
        mse, objective = cg.epoch()
    np.testing.assert_allclose((kxz @ model.coef).numpy(), (kxz @ exact).numpy(), atol=1e-7)
    c = model.coef
    true_mse = (kxz @ c - Y).pow(2).mean(0)
    true_objective = true_mse + ridge * (c * (kzz @ c)).sum(0) / len(X)
    np.testing.assert_allclose(mse.numpy(), true_mse.numpy(), rtol=1e-8)
    np.testing.assert_allclose(objective.numpy(), true_objective.numpy(), rtol=1e-8)


def test_a_restart_continues_from_the_current_coefficients():
    """A roll-back restarts the recurrences from the restored coefficients: the next pass
    recomputes the residual and leaves them unchanged."""
    X, Y, Z, kernel = _problem(seed=1)
    model, cg = _solver(X, Y, Z, kernel, 1e-3)
    for _ in range(3):
        _loss(cg)
    saved = model.state_dict()
    _loss(cg)
    model.load_state_dict(saved)
    cg.load_state_dict(cg.state_dict())
    before = model.coef.clone()
    loss = _loss(cg)
    assert torch.equal(model.coef, before)
    assert loss == pytest.approx(float((kernel(X, Z) @ before - Y).pow(2).mean()), rel=1e-12)


def test_sgd_epochs_plan():
    assert plan_sgd_epochs("auto", 10) == 1 and plan_sgd_epochs("auto", 4) == 1
    assert plan_sgd_epochs("auto", 3) is None  # too few epochs left for it to pay
    assert plan_sgd_epochs(0, 5) == 0 and plan_sgd_epochs(5, 5) is None
    assert plan_sgd_epochs("auto", 3, warm=True) == 0  # a warm start continues with CG


@pytest.mark.parametrize("value", [-1, 1.5, "yes"])
def test_bad_sgd_epochs_raise(value):
    X, Y, _, _ = _problem(n=100)
    model = EigenProRegressor(n_centers=20, inner_params={"sgd_epochs": value})
    with pytest.raises(ValueError, match="sgd_epochs"):
        model.fit(X.numpy(), Y.numpy()[:, 0])


def test_a_warm_start_continues_with_conjugate_gradient():
    """A continuation starts with conjugate gradient, so it never loses ground: an SGD epoch
    would take the fitted model back up to SGD's noise floor."""
    X, Y, _, _ = _problem(n=400)
    X, y = X.numpy(), Y.numpy()[:, 0]
    model = EigenProRegressor(
        n_centers=40, n_epochs=5, dtype="float64", random_state=0, warm_start=True
    ).fit(X, y)
    assert model.inner_params_["sgd_epochs"] == 1
    first = model.history_[-1]["train_loss"]
    model.set_params(n_epochs=3).fit(X, y)
    assert model.inner_params_["sgd_epochs"] == 0
    losses = [h["train_loss"] for h in model.history_[5:]]
    assert losses[0] == pytest.approx(first, rel=1e-9)  # the residual pass: unchanged
    assert losses[-1] <= first


def test_the_first_pass_after_sgd_steps_in_the_best_point_of_its_span():
    """The pass that computes the first residual also steps: to the least-squares point of
    the span of SGD's displacement and the preconditioned gradient its batches met."""
    X, Y, Z, kernel = _problem(seed=2)
    model, cg = _solver(X, Y, Z, kernel, 1e-3)
    kxz = kernel(X, Z)
    collect = cg.begin_sgd_epoch()
    gradient = torch.zeros_like(model.coef)
    for idx in np.array_split(np.random.default_rng(0).permutation(len(X)), 6):
        residual = kxz[idx] @ model.coef - Y[idx]
        collect(X[idx], residual, None)
        gradient += kxz[idx].T @ residual
        model.coef -= kxz[idx].T @ residual / (len(idx) * len(Z))
    sgd_end = model.coef.clone()
    before = float((kxz @ sgd_end - Y).pow(2).mean())
    loss = _loss(cg)
    after = float((kxz @ model.coef - Y).pow(2).mean())
    assert loss == pytest.approx(after, rel=1e-9) and after < 0.9 * before
    preconditioned = torch.cholesky_solve(torch.cholesky_solve(gradient, cg.factor), cg.factor)
    for j in range(Y.shape[1]):  # independent: least squares over the two directions
        basis = kxz @ torch.stack([sgd_end[:, j], preconditioned[:, j]], 1)
        a = torch.linalg.lstsq(basis, Y[:, j] - kxz @ sgd_end[:, j]).solution
        best = sgd_end[:, j] + torch.stack([sgd_end[:, j], preconditioned[:, j]], 1) @ a
        np.testing.assert_allclose(model.coef[:, j].numpy(), best.numpy(), atol=1e-8)


def test_kernel_blocks_too_large_to_hold_give_the_same_passes():
    """When a batch's kernel block exceeds the budget, the products are computed blockwise
    (twice per pass) instead of from one held block: the same iterates."""
    X, Y, Z, kernel = _problem(seed=3)
    runs = []
    for max_block in (2**20, 1000):  # 64 x 25 = 1600 entries per batch: held, then not
        model, cg = _solver(X, Y, Z, kernel, 1e-3, max_block_elements=max_block)
        assert (model.block(X[:64]) is None) == (max_block == 1000)
        runs.append(([_loss(cg) for _ in range(6)], model.coef.clone()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-10)
    np.testing.assert_allclose(runs[0][1].numpy(), runs[1][1].numpy(), rtol=1e-8, atol=1e-10)
