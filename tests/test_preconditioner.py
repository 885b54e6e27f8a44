"""The preconditioner flattens the spectrum exactly as the equations say (checked densely)."""

import math

import numpy as np
import pytest
import torch

from eigenpro.kernels import GaussianKernel
from eigenpro.preconditioner import (
    STEP_SAFETY,
    build_preconditioner,
    preconditioned_top_eigenvalue,
)


@pytest.fixture
def problem():
    X = torch.tensor(np.random.default_rng(0).normal(size=(400, 6)))
    kernel = GaussianKernel(2.0)
    return kernel, X, kernel(X, X)


def _build(kernel, X, **kw):
    kw.setdefault("max_batch_size", 10**6)
    return build_preconditioner(kernel, X, rng=np.random.default_rng(0), **kw)


def test_full_subsample_flattens_top_eigenvalues(problem):
    kernel, X, K = problem
    n, q = X.shape[0], 25
    pre = _build(kernel, X, n_components=q, subsample_size=n)
    lam = np.linalg.eigvalsh(K.numpy() / n)[::-1]
    # Full-batch EigenPro operator on the residual: (K/n)(I - E D E^T K).
    E, D = pre.eigenvectors.numpy(), pre.scales.numpy()
    op = (K.numpy() / n) @ (np.eye(n) - E @ np.diag(D) @ E.T @ K.numpy())
    got = np.sort(np.linalg.eigvals(op).real)[::-1]
    np.testing.assert_allclose(got[: q + 1], lam[q], rtol=1e-8)
    np.testing.assert_allclose(got[q + 1 : q + 50], lam[q + 1 : q + 50], rtol=1e-6)
    assert pre.tail_eigenvalue == pytest.approx(lam[q], rel=1e-10)
    assert pre.top_eigenvalue == pytest.approx(lam[0], rel=1e-10)
    # The batch update of that operator: E D E^T K(X_S, X_B) r for a batch of 50 points.
    r = np.random.default_rng(1).normal(size=(50, 2))
    got = pre.correction(K[:50], torch.tensor(r)).numpy()
    np.testing.assert_allclose(got, E @ np.diag(D) @ E.T @ K.numpy()[:, :50] @ r, rtol=1e-9)


def test_beta_is_the_largest_preconditioned_diagonal(problem):
    kernel, X, K = problem
    n, q = X.shape[0], 10
    pre = _build(kernel, X, n_components=q, subsample_size=n)
    lam, U = np.linalg.eigh(K.numpy() / n)
    lam, U = lam[::-1], U[:, ::-1]
    # k_P(x_j, x_j) = k(x_j, x_j) - n * sum_{i<=q} (lambda_i - lambda_{q+1}) u_ij^2
    diag_p = 1.0 - n * ((lam[:q] - lam[q]) * U[:, :q] ** 2).sum(axis=1)
    assert pre.beta == pytest.approx(diag_p.max(), rel=1e-8)
    assert pre.critical_batch_size == pytest.approx(diag_p.max() / lam[q], rel=1e-8)


def test_plain_sgd_has_no_correction(problem):
    kernel, X, K = problem
    pre = _build(kernel, X, n_components=0)
    assert pre.n_components == 0 and pre.eigenvectors.shape[1] == 0
    assert pre.beta == pytest.approx(1.0)  # max k(x, x) of the Gaussian kernel
    assert pre.tail_eigenvalue == pre.top_eigenvalue
    # The critical batch of plain SGD is tiny.
    assert pre.critical_batch_size < 10


def test_step_size_formula(problem):
    kernel, X, _ = problem
    pre = _build(kernel, X, n_components=20)
    beta, lam, m_crit = pre.beta, pre.tail_eigenvalue, pre.critical_batch_size
    assert pre.step_size(1) == pytest.approx(STEP_SAFETY / beta)
    for m in [2, 10, int(m_crit)]:
        assert pre.step_size(m) == pytest.approx(STEP_SAFETY * m / beta)
    for m in [int(m_crit) + 1, 10 * int(m_crit), 10**9]:
        eta = pre.step_size(m)
        assert eta == pytest.approx(STEP_SAFETY * 2 * m / (beta + (m - 1) * lam))
        assert eta < 2 * m / (beta + (m - 1) * lam)  # inside the mean-square stability limit
    assert pre.step_size(10**9) == pytest.approx(STEP_SAFETY * 2 / lam, rel=1e-3)
    # Continuous at the critical batch size, and never larger than 2 / lambda_{q+1}.
    assert pre.step_size(int(m_crit) + 1) == pytest.approx(pre.step_size(int(m_crit)), rel=0.05)


def test_auto_components_reach_the_batch_budget_with_the_fewest_components(problem):
    """n_components="auto": the fewest q whose critical batch reaches the largest batch the
    budget allows, so batches are that large and take the linear-scaling step m / beta."""
    kernel, X, K = problem
    for max_batch in [20, 60, 200]:
        pre = _build(kernel, X, subsample_size=400, max_batch_size=max_batch)
        q = pre.n_components
        assert pre.critical_batch_size >= max_batch
        assert pre.auto_batch_size(max_batch, 400) == max_batch
        assert pre.step_size(max_batch) == pytest.approx(STEP_SAFETY * max_batch / pre.beta)
        if q:  # one component fewer would not reach it
            fewer = _build(kernel, X, n_components=q - 1, subsample_size=400,
                           max_batch_size=max_batch)  # fmt: skip
            assert fewer.critical_batch_size < max_batch
            assert float(pre.critical_batches[q - 1]) == pytest.approx(fewer.critical_batch_size)
    # A budget beyond every critical batch takes the most components the dtype resolves.
    roomy = _build(kernel, X, subsample_size=400, max_batch_size=10**9)
    assert roomy.n_components == len(roomy.critical_batches) - 1


def test_ridge_shifts_the_spectrum(problem):
    kernel, X, _ = problem
    plain = _build(kernel, X, n_components=5)
    ridged = _build(kernel, X, n_components=5, ridge=2.0)
    shift = 2.0 / X.shape[0]
    assert ridged.tail_eigenvalue == pytest.approx(plain.tail_eigenvalue + shift)
    assert ridged.beta == pytest.approx(plain.beta + 2.0)


def test_parameter_errors(problem):
    kernel, X, _ = problem
    with pytest.raises(ValueError, match="n_components"):
        _build(kernel, X, n_components=50, subsample_size=50)
    with pytest.raises(ValueError, match="subsample_size"):
        _build(kernel, X, subsample_size=401)
    with pytest.raises(ValueError, match="numerically zero"):
        _build(kernel, torch.zeros(50, 3, dtype=torch.float64) + 1.0, n_components=3)


def test_measured_top_eigenvalue_after_preconditioning_is_the_flattened_level():
    """On the subsample itself, K_S - K_S E D E^T K_S has the spectrum of K_S with its top q
    eigenvalues replaced by lambda_{q+1}: the measured top eigenvalue is lambda_{q+1}
    (numpy.linalg.eigh as the reference); with q = 0 it is lambda_1. The measurement solves
    in single precision: to 1e-6."""
    rng = np.random.default_rng(5)
    X = torch.tensor(rng.normal(size=(300, 4)))
    kernel = GaussianKernel(1.5)
    reference = np.linalg.eigh(kernel(X, X).numpy() / 300)
    vals, vecs = reference[0][::-1], reference[1][:, ::-1]
    q = 12
    E = torch.tensor(vecs[:, :q].copy()) / math.sqrt(300)
    top = torch.tensor(vals[:q].copy())
    D = (1 - vals[q] / top) / top
    measured = preconditioned_top_eigenvalue(kernel, X, X, E, D)
    np.testing.assert_allclose(measured, vals[q], rtol=1e-6)
    none = preconditioned_top_eigenvalue(kernel, X, X, E[:, :0], D[:0])
    np.testing.assert_allclose(none, vals[0], rtol=1e-6)
