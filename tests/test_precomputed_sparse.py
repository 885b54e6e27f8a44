"""KernelRidge parity: kernel="precomputed" and scipy.sparse X."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics.pairwise import rbf_kernel

from eigenpro import EigenProClassifier, EigenProRegressor, estimators, solver
from eigenpro.streaming import HostData

GAMMA, ALPHA = 0.5, 1e-2


@pytest.fixture(scope="module")
def kernel_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(300, 3))
    y = np.sin(3 * X[:, 0]) + X[:, 1]
    X_test = rng.uniform(-1, 1, size=(60, 3))
    return X, y, X_test, rbf_kernel(X, X, gamma=GAMMA), rbf_kernel(X_test, X, gamma=GAMMA)


def _model(**kw):
    return EigenProRegressor(
        kernel="precomputed", alpha=ALPHA, dtype="float64", random_state=0, **kw
    )


def test_precomputed_converges_to_kernel_ridge_precomputed(kernel_data):
    X, y, X_test, K, K_test = kernel_data
    w = np.random.default_rng(1).exponential(size=len(y))
    for weights in (None, w):
        offset = np.average(y, weights=weights)  # the intercept: the weighted mean
        reference = KernelRidge(kernel="precomputed", alpha=ALPHA)
        reference.fit(K, y - offset, sample_weight=weights)
        model = _model(n_epochs=200, tol=None).fit(K, y, sample_weight=weights)
        assert model.intercept_ == pytest.approx(offset, rel=1e-12)
        expected = reference.predict(K_test) + offset
        np.testing.assert_allclose(model.predict(K_test), expected, atol=1e-9)
    assert model.centers_.dtype == np.int64 and model.kernel_ == "precomputed"


@pytest.mark.parametrize("n_centers", [None, 120])
def test_precomputed_equals_the_kernel_it_was_computed_from(kernel_data, n_centers):
    X, y, X_test, K, K_test = kernel_data
    params = dict(n_epochs=20, n_centers=n_centers, alpha=ALPHA, dtype="float64", random_state=0)
    from_matrix = EigenProRegressor(kernel="precomputed", **params).fit(K, y)
    from_points = EigenProRegressor(kernel="rbf", kernel_params={"gamma": GAMMA}, **params)
    from_points.fit(X, y)
    np.testing.assert_allclose(from_matrix.predict(K_test), from_points.predict(X_test), atol=1e-8)
    if n_centers is not None:  # the centers are training rows, given by index
        np.testing.assert_array_equal(X[from_matrix.centers_], from_points.centers_)


def test_precomputed_classifier_and_bad_matrices(kernel_data):
    X, y, _, K, _ = kernel_data
    labels = (y > 0).astype(int)
    clf = EigenProClassifier(kernel="precomputed", n_epochs=5, random_state=0).fit(K, labels)
    assert clf.score(K, labels) > 0.95
    with pytest.raises(ValueError, match="square"):
        _model().fit(X, y)
    asymmetric = K + 0.1 * np.triu(K, 1)
    with pytest.raises(ValueError, match="not symmetric"):
        _model().fit(asymmetric, y)
    with pytest.raises(ValueError, match="n_centers"):
        _model(n_centers=X[:10]).fit(K, y)
    model = _model(n_epochs=1).fit(K, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(K[:, :100])  # K(X_test, X_train) has one column per training point


@pytest.fixture(scope="module")
def sparse_data():
    X = sp.random(400, 40, density=0.1, random_state=0, format="csr")
    y = np.asarray(X.sum(axis=1)).ravel() + np.sin(X[:, 0].toarray().ravel())
    return X, y


@pytest.mark.parametrize("n_centers", [None, 100])
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_equals_its_dense_copy(sparse_data, n_centers, fmt):
    X, y = sparse_data
    params = dict(bandwidth=2.0, n_epochs=3, n_centers=n_centers, dtype="float64", random_state=0)
    sparse = EigenProRegressor(**params).fit(X.asformat(fmt), y)
    dense = EigenProRegressor(**params).fit(X.toarray(), y)
    np.testing.assert_allclose(sparse.predict(X.asformat(fmt)), dense.predict(X.toarray()))


def test_streamed_sparse_data_are_densified_batch_by_batch(sparse_data, monkeypatch):
    X, y = sparse_data
    largest = []
    original = sp.csr_matrix.toarray

    def spy(self, *args, **kwargs):
        largest.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    # the bounded row samples (bandwidth, warm-start fingerprint, step calibration, final
    # check), all fewer than n here: no densified block may then reach n rows
    for module, name in [
        (estimators, "SELECTION_ROWS"), (estimators, "FINGERPRINT_ROWS"),
        (solver, "CALIBRATION_SAMPLE"), (solver, "FINAL_CHECK_ROWS"),
    ]:  # fmt: skip
        monkeypatch.setattr(module, name, 100)
    EigenProRegressor(bandwidth=2.0, n_centers=50, batch_size=64, n_epochs=1).fit(X, y)
    assert largest and max(largest) < X.shape[0]  # never the whole matrix
    data = HostData(X)
    assert data.nbytes < X.toarray().nbytes


def test_sparse_nan_is_named(sparse_data):
    X, y = sparse_data
    X = X.copy()
    X.data[3] = np.nan
    for n_centers in (None, 50):
        with pytest.raises(ValueError, match="NaN"):
            EigenProRegressor(n_centers=n_centers, n_epochs=1).fit(X, y)


def test_precomputed_warm_start_continues_and_sees_a_changed_matrix(kernel_data):
    X, y, _, K, _ = kernel_data
    model = _model(n_epochs=1, warm_start=True).fit(K, y)
    model.fit(K, y)
    assert model.n_iter_ == 2
    changed = rbf_kernel(X, X, gamma=2 * GAMMA)  # another kernel on the same points
    with pytest.warns(UserWarning, match="starting afresh"):
        model.fit(changed, y)
    assert model.n_iter_ == 1


def test_symmetry_is_checked_in_blocks(kernel_data, monkeypatch):
    X, y, _, K, _ = kernel_data
    monkeypatch.setattr(estimators, "SYMMETRY_BLOCK_ELEMENTS", 7 * K.shape[0])
    asymmetric = K.copy()
    asymmetric[-1, 0] += 0.5  # in the last block of rows only
    with pytest.raises(ValueError, match="not symmetric"):
        _model().fit(asymmetric, y)
    _model(n_epochs=1).fit(K, y)
