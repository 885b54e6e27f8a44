"""Kernel values against scikit-learn and closed forms; blockwise products against dense ones."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.gaussian_process.kernels import Matern
from sklearn.metrics.pairwise import linear_kernel, polynomial_kernel, rbf_kernel

from eigenpro import kernels
from eigenpro.kernels import (
    CallableKernel,
    CauchyKernel,
    GaussianKernel,
    Kernel,
    LaplacianKernel,
    MaternKernel,
    get_kernel,
    kernel_matmul,
    squared_distances,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 7)), rng.normal(size=(30, 7))


def _eval(kernel, X, Z, device="cpu"):
    t = lambda a: torch.tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    return kernel(t(X), t(Z)).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gaussian", "rbf"])
def test_gaussian_matches_sklearn_rbf(data, name, device):
    X, Z = data
    h = 1.7
    got = _eval(get_kernel(name, bandwidth=h), X, Z, device)
    np.testing.assert_allclose(got, rbf_kernel(X, Z, gamma=1 / (2 * h**2)), rtol=0, atol=1e-10)


def test_laplacian_is_euclidean_exponential(data):
    X, Z = data
    got = _eval(get_kernel("laplacian", bandwidth=2.5), X, Z)
    np.testing.assert_allclose(got, np.exp(-cdist(X, Z) / 2.5), rtol=0, atol=1e-10)


def test_cauchy_closed_form(data):
    X, Z = data
    got = _eval(get_kernel("cauchy", bandwidth=3.0), X, Z)
    np.testing.assert_allclose(got, 1 / (1 + cdist(X, Z, "sqeuclidean") / 9.0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_matches_sklearn(data, nu):
    X, Z = data
    got = _eval(get_kernel("matern", bandwidth=1.3, nu=nu), X, Z)
    np.testing.assert_allclose(got, Matern(length_scale=1.3, nu=nu)(X, Z), rtol=0, atol=1e-10)


@pytest.mark.parametrize("gamma", [None, 0.3])
def test_polynomial_matches_sklearn(data, gamma):
    X, Z = data
    got = _eval(get_kernel("polynomial", degree=3, gamma=gamma, coef0=0.5), X, Z)
    want = polynomial_kernel(X, Z, degree=3, gamma=gamma, coef0=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)


def test_linear_matches_sklearn(data):
    X, Z = data
    np.testing.assert_allclose(_eval(get_kernel("linear"), X, Z), linear_kernel(X, Z), atol=1e-10)


@pytest.mark.parametrize(
    "kernel",
    [
        get_kernel("gaussian", bandwidth=2.0),
        get_kernel("laplacian", bandwidth=2.0),
        get_kernel("cauchy", bandwidth=2.0),
        get_kernel("matern", bandwidth=2.0, nu=2.5),
        get_kernel("polynomial", degree=2),
        get_kernel("linear"),
        CallableKernel(lambda X, Z: (X @ Z.T + 1.0) ** 2),
    ],
    ids=lambda k: type(k).__name__,
)
def test_diag_matches_full_matrix(data, kernel):
    X = torch.tensor(data[0])
    np.testing.assert_allclose(kernel.diag(X).numpy(), kernel(X, X).diagonal().numpy(), atol=1e-10)


def test_squared_distances_clamped_at_zero():
    # Large, nearly identical rows: |x|^2 + |z|^2 - 2 x.z cancels catastrophically in float32.
    x = torch.full((1, 500), 1000.0)
    X = torch.cat([x, x + 1e-4, x])
    sq = squared_distances(X, X)
    assert (sq >= 0).all()
    lap = LaplacianKernel(1.0)(X, X)
    assert torch.isfinite(lap).all() and (lap <= 1).all()


def test_callable_kernel_receives_tensors_and_may_return_numpy(data):
    X, Z = data
    seen = {}

    def fn(A, B, scale):
        seen["type"] = type(A)
        return rbf_kernel(A.numpy(), B.numpy(), gamma=scale)

    kernel = get_kernel(fn, scale=0.2)
    np.testing.assert_allclose(_eval(kernel, X, Z), rbf_kernel(X, Z, gamma=0.2), atol=1e-12)
    assert seen["type"] is torch.Tensor


def test_callable_kernel_with_wrong_shape_is_rejected(data):
    kernel = get_kernel(lambda A, B: A @ A.T)
    with pytest.raises(ValueError, match="returned shape"):
        _eval(kernel, *data)


@pytest.mark.parametrize(
    "args, match",
    [
        (("nope",), "unknown kernel"),
        (("gaussian", -1.0), "bandwidth"),
        (("gaussian", float("nan")), "bandwidth"),
        (("matern", 1.0), None),
    ],
)
def test_get_kernel_validation(args, match):
    if match is None:
        assert isinstance(get_kernel(*args), Kernel)
        return
    with pytest.raises(ValueError, match=match):
        get_kernel(*args)


def test_bad_kernel_params_raise_value_error():
    with pytest.raises(ValueError, match="kernel_params"):
        get_kernel("gaussian", bandwidth=1.0, degree=3)
    with pytest.raises(ValueError, match="nu"):
        get_kernel("matern", bandwidth=1.0, nu=3.0)
    with pytest.raises(TypeError):
        get_kernel(42)


class RecordingKernel(GaussianKernel):
    """Gaussian kernel that records the shape of every block it evaluates."""

    def __init__(self, bandwidth):
        super().__init__(bandwidth)
        self.shapes = []

    def prepared_block(self, X, x_stats, prepared, out=None):
        self.shapes.append((X.shape[0], prepared.shape[0]))
        return super().prepared_block(X, x_stats, prepared, out)


@pytest.mark.parametrize("max_block", [2**16, 3000, 10**9])
def test_kernel_matmul_is_blockwise_and_exact(max_block):
    rng = np.random.default_rng(1)
    X = torch.tensor(rng.normal(size=(700, 5)))
    Z = torch.tensor(rng.normal(size=(900, 5)))
    W = torch.tensor(rng.normal(size=(900, 3)))
    keep = torch.tensor([0, 5, 17, 450, 899])
    kernel = RecordingKernel(1.5)
    out, kept = kernel_matmul(kernel, X, Z, W, max_block_elements=max_block, keep_columns=keep)
    dense = GaussianKernel(1.5)(X, Z)
    torch.testing.assert_close(out, dense @ W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kept, dense[:, keep], rtol=0, atol=1e-14)
    assert max(r * c for r, c in kernel.shapes) <= max_block
    assert sum(r * c for r, c in kernel.shapes) == 700 * 900  # every entry exactly once
    assert (len(kernel.shapes) > 1) == (max_block < 700 * 900)


@pytest.mark.parametrize(
    "keep", [slice(100, 460), torch.arange(100, 460, 3)], ids=["slice", "index"]
)
def test_kernel_matmul_keeps_columns_cut_by_cpu_tiles(monkeypatch, keep):
    """The kept columns ``K(X, Z[J])`` are copied tile by tile: exact however the CPU tiles
    cut J, and no tile exceeds the cache budget."""
    monkeypatch.setattr(kernels, "CPU_TILE_ELEMENTS", 70 * 64)
    monkeypatch.setattr(kernels, "MIN_TILE_COLUMNS", 16)
    rng = np.random.default_rng(3)
    X = torch.tensor(rng.normal(size=(70, 4)))
    Z = torch.tensor(rng.normal(size=(500, 4)))
    W = torch.tensor(rng.normal(size=(500, 2)))
    dense = GaussianKernel(1.2)(X, Z)
    kernel = RecordingKernel(1.2)
    out, kept = kernel_matmul(kernel, X, Z, W, keep_columns=keep)
    torch.testing.assert_close(out, dense @ W, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kept, dense[:, keep], rtol=0, atol=1e-14)
    assert max(c for _, c in kernel.shapes) == 64  # 500 columns in tiles of 64


@pytest.mark.parametrize(
    "kernel",
    [GaussianKernel(1.3), LaplacianKernel(2.0), CauchyKernel(0.7), MaternKernel(1.1, nu=2.5)],
    ids=lambda k: k.name,
)
def test_fused_block_for_fixed_centers_matches_the_plain_block(data, kernel):
    """The one-GEMM path (augmented centers) gives the same values as distances + profile."""
    X, Z = torch.tensor(data[0]), torch.tensor(data[1])
    fused = kernel.prepared_block(X, None, kernel.prepare(Z))
    torch.testing.assert_close(fused, kernel(X, Z), rtol=1e-10, atol=1e-12)
    # At zero distance the round-off of |x|^2 + |z|^2 - 2 x.z (~1e-15 here) passes through
    # a square root for the Laplacian and Matern kernels: about 1e-7 on the diagonal.
    same = kernel.prepared_block(Z, None, kernel.prepare(Z)).diagonal()
    torch.testing.assert_close(same, kernel.diag(Z), rtol=0, atol=1e-6)
