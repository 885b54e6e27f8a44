"""Nystrom eigensystem against numpy's dense symmetric eigensolver."""

import numpy as np
import pytest
import torch

from eigenpro.eigensystem import nystrom_eigensystem, top_eigensystem
from eigenpro.kernels import GaussianKernel, LaplacianKernel

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _kernel_matrix(n, d=5, bandwidth=2.0, seed=0):
    X = torch.tensor(np.random.default_rng(seed).normal(size=(n, d)))
    return X, GaussianKernel(bandwidth)(X, X) / n


@pytest.mark.parametrize("device", DEVICES)
def test_exact_matches_numpy_eigh(device):
    _, A = _kernel_matrix(600)
    q = 40
    want_vals, want_vecs = np.linalg.eigh(A.numpy())
    want_vals, want_vecs = want_vals[::-1][:q], want_vecs[:, ::-1][:, :q]
    eig = top_eigensystem(A.to(device), q, method="exact")
    vals, vecs = eig.eigenvalues.cpu().numpy(), eig.eigenvectors.cpu().numpy()
    assert eig.eigenvalues.dtype == torch.float64
    np.testing.assert_allclose(vals, want_vals, rtol=1e-8)
    assert np.all(np.diff(vals) <= 0), "eigenvalues must come in decreasing order"
    # Eigenvectors up to sign, for the well separated leading ones.
    np.testing.assert_allclose(
        np.abs(np.sum(vecs[:, :5] * want_vecs[:, :5], axis=0)), 1.0, atol=1e-8
    )
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(q), atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_randomized_matches_numpy_on_fast_decaying_spectrum(device):
    _, A = _kernel_matrix(1500, bandwidth=1.5)
    q = 60
    want = np.linalg.eigvalsh(A.numpy())[::-1][:q]
    eig = top_eigensystem(A.to(device), q, method="randomized", seed=3)
    np.testing.assert_allclose(eig.eigenvalues.cpu().numpy(), want, rtol=1e-2)
    # Ritz vectors are eigenvectors: A v = lambda v.
    A_dev = A.to(device)
    residual = A_dev @ eig.eigenvectors - eig.eigenvectors * eig.eigenvalues
    assert residual[:, :10].norm(dim=0).max() < 1e-3 * float(eig.eigenvalues[0])


def test_randomized_is_reproducible_with_seed():
    _, A = _kernel_matrix(800)
    a = top_eigensystem(A, 20, method="randomized", seed=7).eigenvalues
    b = top_eigensystem(A, 20, method="randomized", seed=7).eigenvalues
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nystrom_scales_by_subsample_size_and_uses_float64():
    X = torch.tensor(np.random.default_rng(2).normal(size=(300, 4)), dtype=torch.float32)
    kernel = LaplacianKernel(3.0)
    eig = nystrom_eigensystem(kernel, X, 10)
    X64 = X.double()
    want = np.linalg.eigvalsh((kernel(X64, X64) / 300).numpy())[::-1][:10]
    np.testing.assert_allclose(eig.eigenvalues.numpy(), want, rtol=1e-8)
    assert eig.eigenvalues.dtype == torch.float64


def test_auto_method_agrees_with_exact():
    _, A = _kernel_matrix(500)
    auto = top_eigensystem(A, 15).eigenvalues
    exact = top_eigensystem(A, 15, method="exact").eigenvalues
    torch.testing.assert_close(auto, exact)


@pytest.mark.parametrize(
    "matrix, k, kwargs, match",
    [
        (torch.eye(3)[:2], 1, {}, "square"),
        (torch.eye(3), 0, {}, "n_eigen"),
        (torch.eye(3), 4, {}, "n_eigen"),
        (torch.eye(3), 1, {"method": "lobpcg"}, "method"),
        (torch.full((3, 3), float("nan")), 1, {}, "NaN"),
    ],
)
def test_top_eigensystem_validation(matrix, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_eigensystem(matrix, k, **kwargs)
