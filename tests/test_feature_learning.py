"""Recursive Feature Machines: the AGOP against autograd, the Mahalanobis kernel against its
definition, and the estimators against the plain ones and scikit-learn's contract."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from eigenpro import EigenProRegressor
from eigenpro.feature_learning import (
    EigenProRFMClassifier,
    EigenProRFMRegressor,
    agop,
    metric_root,
    profile_slope,
)
from eigenpro.kernels import (
    CauchyKernel,
    GaussianKernel,
    LaplacianKernel,
    LinearKernel,
    MahalanobisKernel,
    MaternKernel,
)

KERNELS = [GaussianKernel(1.3), LaplacianKernel(2.0), CauchyKernel(1.1), MaternKernel(1.7, 1.5),
           MaternKernel(1.7, 2.5), MaternKernel(1.7, 0.5)]  # fmt: skip


def _metric(d, seed=0):
    A = np.random.default_rng(seed).normal(size=(d, d))
    return A @ A.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_profile_slope_is_the_derivative_of_the_profile(kernel):
    s = torch.linspace(0.05, 9.0, 50, dtype=torch.float64)
    eps = 1e-6
    c = kernel.distance_scale
    numeric = (kernel.profile_(c * (s + eps)) - kernel.profile_(c * (s - eps))) / (2 * eps)
    np.testing.assert_allclose(profile_slope(kernel, s), numeric, rtol=1e-6, atol=1e-9)


def _profile(kernel, s):
    """The kernels' definitions, written out (out of place, for autograd)."""
    if isinstance(kernel, GaussianKernel):
        return torch.exp(-s / 2)
    if isinstance(kernel, CauchyKernel):
        return 1 / (1 + s)
    nu = getattr(kernel, "nu", 0.5)
    r = torch.sqrt(2 * nu * s)
    if nu == 1.5:
        return (1 + r) * torch.exp(-r)
    if nu == 2.5:
        return (1 + r + r**2 / 3) * torch.exp(-r)
    return torch.exp(-r)  # Laplacian, Matern 0.5


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_agop_equals_the_autograd_gradients(kernel):
    rng = np.random.default_rng(1)
    d, p, n = 4, 30, 25
    T = torch.from_numpy(metric_root(_metric(d)))
    Zx = torch.from_numpy(rng.normal(size=(p, d)))
    X = torch.from_numpy(rng.normal(size=(n, d)))
    coef = torch.from_numpy(rng.normal(size=(p, 2)))
    w = torch.from_numpy(rng.uniform(0.5, 2.0, size=n))
    got = agop(kernel, Zx @ T, coef, X, transform=T, sample_weight=w)
    X_ = X.clone().requires_grad_(True)
    U, Zt = X_ @ T / kernel.bandwidth, Zx @ T / kernel.bandwidth
    s = ((U[:, None, :] - Zt[None, :, :]) ** 2).sum(-1)
    K = _profile(kernel, s)
    f = K @ coef
    grads = torch.stack(
        [torch.autograd.grad(f[:, out].sum(), X_, retain_graph=True)[0] for out in range(2)], 1
    )  # (n, l, d)
    expected = torch.einsum("n,nld,nle->de", w, grads, grads) / w.sum()
    np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), rtol=1e-8, atol=1e-12)


def test_mahalanobis_kernel_is_the_base_kernel_in_the_metric():
    rng = np.random.default_rng(2)
    M = _metric(5)
    X, Z = torch.from_numpy(rng.normal(size=(40, 5))), torch.from_numpy(rng.normal(size=(30, 5)))
    kernel = MahalanobisKernel(GaussianKernel(1.5), M)
    diff = X[:, None, :] - Z[None, :, :]
    sq = torch.einsum("abi,ij,abj->ab", diff, torch.from_numpy(M), diff)
    np.testing.assert_allclose(kernel(X, Z), torch.exp(-sq / (2 * 1.5**2)), rtol=1e-10)
    diagonal = MahalanobisKernel(LaplacianKernel(2.0), np.diag(M))
    full = MahalanobisKernel(LaplacianKernel(2.0), np.diag(np.diag(M)))
    np.testing.assert_allclose(diagonal(X, Z), full(X, Z), rtol=1e-10)
    with pytest.raises(ValueError, match="metric must be"):
        MahalanobisKernel(GaussianKernel(1.0), np.ones((2, 3)))
    with pytest.raises(TypeError, match="radial"):
        MahalanobisKernel(LinearKernel(), M)


def _sparse_target(n=800, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=n)


def test_rfm_finds_the_relevant_features_and_beats_the_plain_model():
    X, y = _sparse_target()
    X_test, y_test = _sparse_target(500, seed=1)
    plain = EigenProRegressor(random_state=0).fit(X, y)
    rfm = EigenProRFMRegressor(n_rounds=3, random_state=0).fit(X, y)
    full = EigenProRFMRegressor(n_rounds=3, metric="full", random_state=0).fit(X, y)
    assert rfm.score(X_test, y_test) > plain.score(X_test, y_test) + 0.03
    assert full.score(X_test, y_test) > plain.score(X_test, y_test) + 0.03
    assert np.count_nonzero(full.metric_ - np.diag(np.diag(full.metric_))) > 0
    assert set(np.argsort(rfm.feature_importances_)[-3:]) == {0, 1, 2}
    assert rfm.feature_importances_[3:].sum() < 0.05
    assert np.trace(rfm.metric_) == pytest.approx(X.shape[1])
    assert rfm.best_round_ > 0 and {r["round"] for r in rfm.rounds_} == {0, 1, 2, 3}
    # round 0 tries both default kernels on the held-out rows and keeps the better
    first = [r for r in rfm.rounds_ if r["round"] == 0]
    assert {r["kernel"] for r in first} == {"laplacian", "gaussian"}
    kept = max(first, key=lambda r: r["val_score"])["kernel"]
    assert rfm.estimator_.kernel == kept


def test_zero_rounds_is_the_plain_model():
    X, y = _sparse_target(300)
    rfm = EigenProRFMRegressor(n_rounds=0, random_state=0).fit(X, y)
    plain = EigenProRegressor(kernel="laplacian", random_state=rfm.estimator_.random_state)
    plain.fit(X, y)
    np.testing.assert_allclose(rfm.predict(X), plain.predict(X), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rfm.metric_, np.eye(X.shape[1]))


def test_diagonal_metric_and_a_given_estimator():
    X, y = _sparse_target(500)
    base = EigenProRegressor(kernel="gaussian", n_epochs=20)
    rfm = EigenProRFMRegressor(base, n_rounds=2, random_state=0, exponent=0.5).fit(X, y)
    assert np.count_nonzero(rfm.metric_ - np.diag(np.diag(rfm.metric_))) == 0
    assert rfm.estimator_.kernel == "gaussian" and base.random_state is None


def test_classifier_pipeline_gridsearch_pickle_and_weights():
    X, y = make_classification(n_samples=400, n_features=10, n_informative=3, random_state=0)
    model = make_pipeline(StandardScaler(), EigenProRFMClassifier(n_rounds=2, random_state=0))
    search = GridSearchCV(model, {"eigenprorfmclassifier__metric": ["full", "diagonal"]}, cv=2)
    search.fit(X, y)
    assert search.best_score_ > 0.8
    clf = search.best_estimator_
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    w = np.where(y == 1, 2.0, 1.0)
    weighted = EigenProRFMClassifier(n_rounds=1, random_state=0).fit(X, y, sample_weight=w)
    assert set(weighted.classes_) == {0, 1}
    assert weighted.predict_proba(X).shape == (400, 2)


def test_a_kernel_without_gradients_is_refused():
    X, y = _sparse_target(200)
    with pytest.raises(ValueError, match="radial kernel"):
        EigenProRFMRegressor(EigenProRegressor(kernel="linear"), n_rounds=1).fit(X, y)


@pytest.mark.parametrize(
    "estimator",
    [EigenProRFMRegressor(n_rounds=1, random_state=0),
     EigenProRFMClassifier(n_rounds=1, random_state=0)],
    ids=["regressor", "classifier"],
)  # fmt: skip
def test_sklearn_contract(estimator):
    # As the plain estimators (tests/test_estimators.py): weights equal repeated rows only at
    # convergence, and here the held-out split of the rounds differs too.
    reason = "weights equal repeated rows at convergence only, and the held-out split differs"
    expected = {"check_sample_weight_equivalence_on_dense_data": reason}
    check_estimator(estimator, expected_failed_checks=expected)
