"""The problems of Falkon's own tests (FalkonML/falkon, falkon/tests/test_falkon.py), solved
with fewer centers than points: the same data, kernel, number of centers and ridge, and
Falkon's bars, in 10 passes over the data as Falkon's conjugate gradient takes; and the
20-class problem with every setting automatic.

Falkon minimises ``(1/n) ||K_nm c - y||^2 + penalty c^T K_mm c``; ours is
``||K_nm c - y||^2 + alpha c^T K_mm c``, so ``alpha = n * penalty``. The least-squares optimum
on the same centers (solved exactly here) is the independent reference.
"""

import numpy as np
import pytest
import torch
from sklearn import datasets

from eigenpro import EigenProClassifier, EigenProRegressor
from eigenpro.kernels import GaussianKernel

PENALTY = 1e-6  # Falkon's tests' ridge, per point


def _exact_on_centers(X, Y, centers, bandwidth, alpha):
    """argmin_c ||K(X, Z) c - Y||^2 + alpha c^T K(Z, Z) c, in float64 (lstsq on the
    stacked system, robust where K(Z, Z) is near singular)."""
    kernel = GaussianKernel(bandwidth)
    X, Z = torch.from_numpy(X), torch.from_numpy(centers)
    knm, kmm = kernel(X, Z).numpy(), kernel(Z, Z).numpy()
    vals, vecs = np.linalg.eigh(kmm)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # K_mm^(1/2)
    system = np.vstack([knm, np.sqrt(alpha) * root])
    target = np.vstack([Y, np.zeros((len(centers), Y.shape[1]))])
    coef = np.linalg.lstsq(system, target, rcond=None)[0]
    return knm @ coef


@pytest.fixture(scope="module")
def multiclass():
    X, y = datasets.make_classification(2000, 30, n_classes=20, n_informative=6, random_state=11)
    return X, y


@pytest.fixture(scope="module")
def regression():
    X, y = datasets.make_regression(1000, 30, random_state=11)
    return X[:800], y[:800], X[800:], y[800:]


def test_binary_classification_in_10_passes():
    X, y = datasets.make_classification(1000, 10, n_classes=2, random_state=11)
    clf = EigenProClassifier(
        bandwidth=2.0, alpha=len(X) * PENALTY, n_centers=500, n_epochs=10, tol=None,
        fit_intercept=False, dtype="float64", random_state=10,
    ).fit(X, y)  # fmt: skip
    assert 100 * (1 - clf.score(X, y)) < 5  # Falkon's bar


def test_twenty_classes_500_centers_in_10_passes(multiclass):
    X, y = multiclass
    alpha = len(X) * PENALTY
    clf = EigenProClassifier(
        bandwidth=10.0, alpha=alpha, n_centers=500, n_epochs=10, tol=None,
        fit_intercept=False, dtype="float64", random_state=10,
    ).fit(X, y)  # fmt: skip
    error = 1 - clf.score(X, y)
    optimum = _exact_on_centers(X, np.eye(20)[y], clf.centers_, 10.0, alpha)
    optimum_error = np.mean(optimum.argmax(axis=1) != y)
    assert error < 0.23, (error, optimum_error)  # Falkon's bar
    assert error <= optimum_error + 0.01


def test_twenty_classes_500_centers_stopping_at_convergence(multiclass):
    """Falkon's problem with the number of epochs left automatic (n_epochs="auto", tol)."""
    X, y = multiclass
    clf = EigenProClassifier(
        bandwidth=10.0, alpha=len(X) * PENALTY, n_centers=500, random_state=10
    ).fit(X, y)
    assert 1 - clf.score(X, y) <= 0.24, clf.n_iter_


def test_regression_400_centers_in_10_passes(regression):
    X, y, X_test, y_test = regression
    alpha = len(X) * PENALTY
    reg = EigenProRegressor(
        bandwidth=20.0, alpha=alpha, n_centers=400, n_epochs=10, tol=None,
        fit_intercept=False, dtype="float64", random_state=10,
    ).fit(X, y)  # fmt: skip
    rmse_test = np.sqrt(np.mean((reg.predict(X_test) - y_test) ** 2))
    rmse_train = np.sqrt(np.mean((reg.predict(X) - y) ** 2))
    train_optimum = _exact_on_centers(X, y[:, None], reg.centers_, 20.0, alpha)[:, 0]
    optimum = np.sqrt(np.mean((train_optimum - y) ** 2))
    assert rmse_train < rmse_test < 2.5  # Falkon's bars
    assert rmse_train <= 1.1 * optimum, (rmse_train, optimum)  # near the fit on the centers
