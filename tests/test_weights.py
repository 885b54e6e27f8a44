"""Sample and class weights against scikit-learn's weighted references."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import r2_score
from sklearn.utils.class_weight import compute_sample_weight

from eigenpro import EigenProClassifier, EigenProRegressor
from eigenpro.kernels import ScaledKernel, get_kernel, kernel_matmul

BANDWIDTH = 0.8
ALPHA = 1e-2
#: KernelRidge's problem: no intercept, and the epochs asked for.
PLAIN = dict(fit_intercept=False, tol=None)


def _ridge(**kw):
    return KernelRidge(alpha=ALPHA, kernel="rbf", gamma=1 / (2 * BANDWIDTH**2), **kw)


@pytest.fixture
def weighted_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(400, 3))
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=400)
    w = rng.exponential(size=400)
    w[:40] = 0.0  # removed rows
    w[40:50] = 30.0  # heavy rows
    return X, y, w


def test_scaled_kernel_is_the_diagonally_scaled_base_kernel():
    gen = torch.Generator().manual_seed(0)
    X, Z = torch.randn(300, 4, generator=gen), torch.randn(700, 4, generator=gen)
    a, b = torch.rand(300, 1, generator=gen), torch.rand(700, 1, generator=gen)
    base = get_kernel("laplacian", bandwidth=1.5)
    kernel = ScaledKernel(base)
    Xa, Za = torch.cat([X, a], 1), torch.cat([Z, b], 1)
    expected = base(X, Z) * a * b.T
    torch.testing.assert_close(kernel(Xa, Za), expected)
    torch.testing.assert_close(kernel.diag(Xa), base.diag(X) * a[:, 0] ** 2)
    W = torch.randn(700, 2, generator=gen)
    out, kept = kernel_matmul(
        kernel, Xa, Za, W, max_block_elements=50_000, keep_columns=slice(3, 40)
    )
    torch.testing.assert_close(out, expected @ W, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kept, expected[:, 3:40])


def test_weighted_fit_converges_to_weighted_kernel_ridge(weighted_data):
    X, y, w = weighted_data
    reference = _ridge().fit(X, y, sample_weight=w)
    model = EigenProRegressor(
        bandwidth=BANDWIDTH, alpha=ALPHA, n_epochs=300, dtype="float64", random_state=0, **PLAIN
    ).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(model.predict(X), reference.predict(X), atol=1e-8)
    np.testing.assert_allclose(model.dual_coef_, reference.dual_coef_, atol=1e-6)
    assert np.all(model.dual_coef_[:40] == 0)  # zero weight: no coefficient at all


def test_zero_weights_behave_like_removed_rows(weighted_data):
    X, y, w = weighted_data
    kept = w > 0
    model = EigenProRegressor(
        bandwidth=BANDWIDTH, alpha=ALPHA, n_epochs=300, dtype="float64", random_state=0, **PLAIN
    )
    with_zeros = model.fit(X, y, sample_weight=w).predict(X)
    removed = model.fit(X[kept], y[kept], sample_weight=w[kept]).predict(X)
    np.testing.assert_allclose(with_zeros, removed, atol=1e-8)


def test_integer_weights_equal_repeated_rows_at_convergence(weighted_data):
    X, y, _ = weighted_data
    counts = np.random.default_rng(1).integers(0, 4, size=len(X))
    model = EigenProRegressor(
        bandwidth=BANDWIDTH, alpha=ALPHA, n_epochs=300, dtype="float64", random_state=0, **PLAIN
    )
    weighted = model.fit(X, y, sample_weight=counts).predict(X)
    repeated = model.fit(np.repeat(X, counts, axis=0), np.repeat(y, counts)).predict(X)
    np.testing.assert_allclose(weighted, repeated, atol=1e-6)


def test_large_weights_do_not_diverge_in_float32(weighted_data):
    """Weights of 1e4 on a few points: the step rules see the weighted kernel's spectrum and
    diagonal, so the automatic step is stable (no roll-back, no divergence)."""
    X, y, w = weighted_data
    w = w.copy()
    w[50:55] = 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a roll-back warns
        model = EigenProRegressor(
            bandwidth=BANDWIDTH, alpha=ALPHA, n_epochs=30, random_state=0, **PLAIN
        )
        model.fit(X, y, sample_weight=w)
    reference = _ridge().fit(X, y, sample_weight=w).predict(X)
    assert np.isfinite(model.predict(X)).all()
    assert np.abs(model.predict(X) - reference).max() < 0.05


def test_weights_on_general_centers_reach_the_weighted_least_squares_fit():
    """Fewer centers than points (the peer problem of test_solver): the automatic settings
    approach ``argmin sum_i w_i (K(x_i, Z) c - y_i)^2``, closer than the unweighted fit is."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, size=2000)
    X = rng.normal(size=(20, 10))[labels] + rng.normal(size=(2000, 10))
    w = rng.uniform(0.5, 2.0, size=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        clf = EigenProClassifier(
            n_centers=500, n_epochs=40, dtype="float64", random_state=0, alpha=0.0,
            bandwidth="median", **PLAIN,
        )  # fmt: skip
        clf.fit(X, labels, sample_weight=w)
    Y = np.eye(20)[labels]
    kernel = get_kernel("gaussian", bandwidth=clf.bandwidth_)
    kxz = kernel(torch.tensor(X), torch.tensor(clf.centers_)).numpy()
    root = np.sqrt(w)[:, None]
    optimum = np.linalg.lstsq(kxz * root, Y * root, rcond=None)[0]
    unweighted = np.linalg.lstsq(kxz, Y, rcond=None)[0]

    def weighted_mse(coef):
        return np.sum(w[:, None] * (kxz @ coef - Y) ** 2) / w.sum()

    fitted = weighted_mse(clf.dual_coef_)
    assert weighted_mse(optimum) <= fitted <= 1.02 * weighted_mse(optimum)
    assert fitted < weighted_mse(unweighted)  # the weights were used


def test_streamed_and_in_memory_weighted_fits_agree(weighted_data):
    X, y, w = weighted_data
    params = dict(bandwidth=BANDWIDTH, n_centers=100, n_epochs=5, dtype="float64", random_state=0)
    a = EigenProRegressor(**params).fit(X, y, sample_weight=w)
    b = EigenProRegressor(**params).fit(torch.tensor(X), y, sample_weight=w)  # streamed
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-10, atol=1e-12)


def test_score_takes_sample_weight(weighted_data):
    X, y, w = weighted_data
    model = EigenProRegressor(bandwidth=BANDWIDTH, n_epochs=3, random_state=0).fit(X, y)
    assert model.score(X, y, sample_weight=w) == pytest.approx(
        r2_score(y, model.predict(X), sample_weight=w)
    )


@pytest.mark.parametrize(
    "weights, message",
    [
        (-np.ones(400), "Negative values .*sample_weight"),
        (np.full(400, np.nan), "NaN"),
        (np.ones(399), "shape"),
        (np.zeros(400), "at least one non-zero"),
    ],
)
def test_bad_sample_weight_is_named(weighted_data, weights, message):
    X, y, _ = weighted_data
    with pytest.raises(ValueError, match=message):
        EigenProRegressor(n_epochs=1).fit(X, y, sample_weight=weights)


# ----------------------------------------------------------------------- class weights
@pytest.fixture
def imbalanced():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 2))
    y = np.where(X[:, 0] + 0.5 * rng.normal(size=600) > 1.3, "rare", "common")
    return X, y


def test_balanced_class_weight_is_kernel_ridge_with_balanced_weights(imbalanced):
    X, y = imbalanced
    weights = compute_sample_weight("balanced", y)
    clf = EigenProClassifier(
        bandwidth=BANDWIDTH, alpha=ALPHA, n_epochs=300, dtype="float64", random_state=0,
        class_weight="balanced", **PLAIN,
    ).fit(X, y)  # fmt: skip
    targets = np.where(y == clf.classes_[1], 1.0, -1.0)
    reference = _ridge().fit(X, targets, sample_weight=weights)
    np.testing.assert_allclose(clf.decision_function(X), reference.predict(X), atol=1e-7)


def test_class_weight_dict_multiplies_sample_weight(imbalanced):
    X, y = imbalanced
    sample_weight = np.random.default_rng(3).uniform(0.5, 2, size=len(y))
    params = dict(bandwidth=BANDWIDTH, n_epochs=3, dtype="float64", random_state=0)
    by_dict = EigenProClassifier(class_weight={"rare": 5.0, "common": 1.0}, **params)
    by_dict.fit(X, y, sample_weight=sample_weight)
    combined = sample_weight * np.where(y == "rare", 5.0, 1.0)
    by_hand = EigenProClassifier(**params).fit(X, y, sample_weight=combined)
    np.testing.assert_array_equal(by_dict.decision_function(X), by_hand.decision_function(X))


def test_balanced_class_weight_raises_minority_recall(imbalanced):
    X, y = imbalanced
    params = dict(bandwidth=2.0, alpha=1.0, n_epochs=20, random_state=0)
    plain = EigenProClassifier(**params).fit(X, y)
    balanced = EigenProClassifier(class_weight="balanced", **params).fit(X, y)
    rare = y == "rare"
    assert np.mean(balanced.predict(X[rare]) == "rare") > np.mean(plain.predict(X[rare]) == "rare")


def test_bad_class_weight_is_named(imbalanced):
    X, y = imbalanced
    with pytest.raises(ValueError, match="class_weight"):
        EigenProClassifier(class_weight="sometimes").fit(X, y)


def test_all_zero_weights_after_the_held_out_split_are_named():
    from eigenpro.estimators import _Weighting

    # fit() rejects all-zero weights; a split can still leave only zero weights to train on
    with pytest.raises(ValueError, match="zero on every training row"):
        _Weighting(np.zeros(5), alpha=0.1)
    assert _Weighting(np.array([0.0, 2.0]), alpha=0.1).ridge == pytest.approx(0.1)
