"""The model selection's eigensystem serves as the EigenPro 2 preconditioner's (one
eigendecomposition where there were two), and only where it is as good as a fresh one."""

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

from eigenpro import EigenProRegressor
from eigenpro.eigensystem import NystromSample, nystrom_eigensystem
from eigenpro.kernels import GaussianKernel
from eigenpro.model_selection import SELECTION_ROWS
from eigenpro.preconditioner import build_preconditioner


def _data(n, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X @ rng.normal(size=d)) + 0.1 * rng.normal(size=n)
    return X, y


def test_a_known_eigensystem_builds_the_preconditioner_a_fresh_one_would():
    X = torch.tensor(_data(600)[0])
    kernel = GaussianKernel(2.0)
    idx = np.sort(np.random.default_rng(1).choice(600, 200, replace=False))
    K = kernel(X[idx], X[idx])
    vals, vecs = torch.linalg.eigh(K)  # increasing, of K itself (the selection's form)
    known = NystromSample.from_kernel_matrix(idx, vals, vecs)
    fresh = nystrom_eigensystem(kernel, X[idx], 200)
    np.testing.assert_allclose(known.eigensystem.eigenvalues, fresh.eigenvalues, atol=1e-12)
    kw = dict(n_components=20, max_batch_size=10**6, dtype=torch.float64)
    given = build_preconditioner(kernel, X, rng=np.random.default_rng(0), nystrom=known, **kw)
    assert given.subsample_indices.tolist() == idx.tolist()
    own = build_preconditioner(kernel, X, rng=np.random.default_rng(0), subsample_size=200, **kw)
    assert given.eigenvalues[:21] == pytest.approx(
        nystrom_eigensystem(kernel, X[idx], 21).eigenvalues.numpy(), rel=1e-10
    )
    # Same construction on another subsample of the same size: the same spectrum, roughly.
    assert given.top_eigenvalue == pytest.approx(own.top_eigenvalue, rel=0.2)
    # The preconditioner flattens the known eigendirections exactly (E^T K_S E = diag).
    E, D = given.eigenvectors.numpy(), given.scales.numpy()
    top = known.eigensystem.eigenvalues[:20].numpy()
    np.testing.assert_allclose(E.T @ (K.numpy() / 200) @ E * 200, np.diag(top), atol=1e-10)
    assert np.all(D > 0)


def test_a_default_fit_reuses_the_selection_rows_and_matches_kernel_ridge():
    X, y = _data(2500, d=3)  # a spectrum that float32 resolves to ~20 components
    model = EigenProRegressor(random_state=0, tol=1e-7, n_epochs=200).fit(X, y)
    assert model.subsample_size_ == SELECTION_ROWS
    reference = KernelRidge(alpha=model.alpha_, kernel="rbf", gamma=0.5 / model.bandwidth_**2)
    reference.fit(X, y - y.mean())
    X_test = _data(300, d=3, seed=1)[0]
    expected = reference.predict(X_test) + y.mean()
    np.testing.assert_allclose(model.predict(X_test), expected, atol=2e-3 * np.std(y))


@pytest.mark.parametrize(
    "params",
    [{"dtype": "float64"}, {"n_components": 20}, {"subsample_size": 1500}, {}],
    ids=["float64", "given n_components", "given subsample_size", "more components"],
)
def test_fits_that_need_their_own_eigensystem_compute_it(params):
    # d=12: float32 resolves more components (q = 500) than 1000 rows allow (250).
    X, y = _data(2500, d=12)
    model = EigenProRegressor(random_state=0, n_epochs=2, tol=None, **params).fit(X, y)
    assert model.subsample_size_ == params.get("subsample_size", 2000)


def test_weighted_fits_compute_their_own_eigensystem():
    X, y = _data(2500, d=3)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=len(y))
    model = EigenProRegressor(random_state=0, n_epochs=2, tol=None).fit(X, y, sample_weight=w)
    assert model.subsample_size_ == 2000
