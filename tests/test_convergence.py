"""EigenPro converges to independent references: exact solves and scikit-learn's KernelRidge."""

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import mean_squared_error

from eigenpro import EigenProRegressor
from eigenpro.kernels import get_kernel


def _synthetic(n=2000, n_test=500, d=10, seed=0):
    rng = np.random.default_rng(seed)
    X, X_test = rng.normal(size=(n, d)), rng.normal(size=(n_test, d))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=n)
    return X, y, X_test


def _rel_err(pred, ref):
    return np.linalg.norm(pred - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize(
    "kernel, bandwidth, epochs", [("gaussian", 1.0, 30), ("laplacian", 4.0, 20)]
)
def test_converges_to_the_exact_interpolant(kernel, bandwidth, epochs):
    X, y, X_test = _synthetic()
    k = get_kernel(kernel, bandwidth=bandwidth)
    Xt = torch.tensor(X)
    coef = torch.linalg.solve(k(Xt, Xt), torch.tensor(y))
    reference = (k(torch.tensor(X_test), Xt) @ coef).numpy()

    model = EigenProRegressor(
        kernel=kernel, bandwidth=bandwidth, n_epochs=epochs, dtype="float64", random_state=0,
        alpha=0.0, fit_intercept=False, tol=None,
    )  # fmt: skip
    model.fit(X, y)
    assert model.n_components_ > 0
    assert _rel_err(model.predict(X_test), reference) < 1e-2
    # The training loss decreases (the iteration is stable), down to a near-interpolating fit.
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < 1e-2 * losses[0]


@pytest.mark.parametrize("alpha, epochs", [(0.1, 60), (1.0, 20)])
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_ridge_converges_to_kernel_ridge(alpha, epochs, fit_intercept):
    """Without an intercept, KernelRidge's solution; with one (the default), KernelRidge's
    on the centred targets, plus their mean."""
    X, y, X_test = _synthetic(seed=1)
    y = y + 7.0  # an offset the intercept must take
    bandwidth = 1.5
    offset = y.mean() if fit_intercept else 0.0
    reference = KernelRidge(alpha=alpha, kernel="rbf", gamma=1 / (2 * bandwidth**2))
    reference.fit(X, y - offset)
    model = EigenProRegressor(
        bandwidth=bandwidth, alpha=alpha, n_epochs=epochs, tol=None, dtype="float64",
        random_state=0, fit_intercept=fit_intercept,
    ).fit(X, y)  # fmt: skip
    assert model.intercept_ == pytest.approx(offset, abs=1e-12)
    assert _rel_err(model.predict(X_test), reference.predict(X_test) + offset) < 1e-2
    assert _rel_err(model.dual_coef_, reference.dual_coef_) < 1e-2


def test_multi_output_matches_independent_single_output_fits():
    X, y, X_test = _synthetic(n=800, seed=2)
    Y = np.column_stack([y, np.cos(X[:, 3])])
    params = dict(
        bandwidth=1.0, n_epochs=5, dtype="float64", random_state=0, n_components=50, batch_size=200
    )
    joint = EigenProRegressor(**params).fit(X, Y).predict(X_test)
    for j in range(2):
        single = EigenProRegressor(**params).fit(X, Y[:, j]).predict(X_test)
        np.testing.assert_allclose(joint[:, j], single, rtol=1e-9, atol=1e-9)


def _train_mse(model, X, y):
    return mean_squared_error(y, model.predict(X))


def test_plain_sgd_needs_ten_times_more_epochs():
    """At EigenPro's batch size, plain kernel SGD does not reach EigenPro's training MSE even
    with 10x the epochs. (Against plain SGD at its own tiny batch size the difference is
    wall-clock time, measured in benchmarks/sgd_vs_eigenpro.py, not here.)"""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 10))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]
    common = dict(bandwidth=2.0, random_state=0)
    epochs = 2
    eigenpro = EigenProRegressor(n_epochs=epochs, **common).fit(X, y)
    target = _train_mse(eigenpro, X, y)
    assert eigenpro.n_components_ > 0 and eigenpro.batch_size_ > 100

    same_batch = EigenProRegressor(
        n_epochs=10 * epochs, n_components=0, batch_size=eigenpro.batch_size_, **common
    )
    same_batch.fit(X, y)
    assert _train_mse(same_batch, X, y) > target

    own_batch = EigenProRegressor(n_epochs=1, n_components=0, **common).fit(X, y)
    assert own_batch.batch_size_ == int(own_batch.critical_batch_size_) < 10


def test_rbf_gamma_carries_a_kernel_ridge_setting_over():
    """kernel_params={"gamma": g} means scikit-learn's rbf gamma: the same fixed point as
    KernelRidge(kernel="rbf", gamma=g), and the bandwidth 1 / sqrt(2 g)."""
    X, y, X_test = _synthetic(seed=1)
    gamma, alpha = 0.2, 0.1
    reference = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(X, y)
    model = EigenProRegressor(
        kernel="rbf", kernel_params={"gamma": gamma}, alpha=alpha, n_epochs=60, dtype="float64",
        random_state=0, fit_intercept=False, tol=None,
    ).fit(X, y)  # fmt: skip
    assert model.bandwidth_ == pytest.approx(1 / np.sqrt(2 * gamma))
    assert _rel_err(model.predict(X_test), reference.predict(X_test)) < 1e-2


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (dict(kernel="rbf", bandwidth=2.0, kernel_params={"gamma": 0.1}), "both bandwidth"),
        (dict(kernel="gaussian", kernel_params={"gamma": -1.0}), "gamma must be a positive"),
        (dict(kernel="rbf", kernel_params={"gamma": float("nan")}), "gamma must be a positive"),
    ],
)
def test_rbf_gamma_is_validated(params, match):
    X, y, _ = _synthetic(n=200, seed=3)
    with pytest.raises(ValueError, match=match):
        EigenProRegressor(n_epochs=1, **params).fit(X, y)
