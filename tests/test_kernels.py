"""Kernel values against scikit-learn and closed forms; blockwise products against dense ones."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.gaussian_process.kernels import Matern
from sklearn.metrics.pairwise import linear_kernel, polynomial_kernel, rbf_kernel

from eigenpro import _device as device_module
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


def test_squared_distances_clamped_at_zero_and_exact_far_from_zero():
    # Large, nearly identical rows: |x|^2 + |z|^2 - 2 x.z of the raw features would cancel
    # catastrophically in float32; about the mean of Z they do not.
    x = torch.full((1, 500), 1000.0)
    X = torch.cat([x, x + 1 / 64, x])  # 1/64 is exact in float32 at 1000
    sq = squared_distances(X, X)
    assert (sq >= 0).all()
    expected = 500 / 64**2
    torch.testing.assert_close(sq[0, 1], torch.tensor(expected), rtol=1e-5, atol=0)
    assert float(sq[0, 2]) == 0.0
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

    def prepared_block(self, points, centers, out=None):
        self.shapes.append((points.shape[0], len(centers)))
        return super().prepared_block(points, centers, out)


@pytest.mark.parametrize("max_block", [2**16, 3000, 10**9])
def test_kernel_matmul_is_blockwise_and_exact(monkeypatch, max_block):
    monkeypatch.setattr(kernels, "CPU_TILE_ELEMENTS", 2**30)  # blocks cut by max_block alone
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
    """The kept columns ``K(X, Z[J])`` are exact however the CPU tiles cut J: an index set
    is copied out of cache-sized tiles, a slice is one tile of its own, computed in place;
    every other tile stays within the cache budget."""
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
    widths = [c for _, c in kernel.shapes]
    assert sum(widths) == 500 and all(r == 70 for r, _ in kernel.shapes)
    if isinstance(keep, slice):  # 100 + 40 columns around the slice: 48 + 52 (aligned), 40
        assert sorted(widths) == [40, 48, 52, 360]
    else:  # 500 columns in 8 tiles of at most 64, multiples of 16 but for the last
        assert len(widths) == 8 and max(widths) == 64
        assert all(w % 16 == 0 for w in widths[:-1])


@pytest.mark.parametrize("n_out", [1, 2, 10, 15, 16, 17])
def test_float32_products_by_few_columns_are_exact(n_out):
    """2 to 15 coefficient columns are padded to 16 on the CPU in float32 (a faster GEMM);
    the result has the caller's columns and matches a float64 product."""
    rng = np.random.default_rng(4)
    X, Z = rng.normal(size=(300, 6)), rng.normal(size=(700, 6))
    W = rng.normal(size=(700, n_out))
    as32 = [torch.tensor(a, dtype=torch.float32) for a in (X, Z, W)]
    expected = GaussianKernel(2.0)(torch.tensor(X), torch.tensor(Z)) @ torch.tensor(W)
    out, kept = kernel_matmul(GaussianKernel(2.0), *as32, keep_columns=slice(0, 50))
    assert out.shape == (300, n_out) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    A, B = torch.randn(40, 30), torch.randn(30, n_out)
    product = kernels.narrow_mm(A, B)
    assert product.shape == (40, n_out)
    torch.testing.assert_close(product.double(), A.double() @ B.double(), rtol=1e-5, atol=1e-5)
    padded = 2 <= n_out < 16
    assert kernels.gemm_width(n_out, B) == (16 if padded else n_out)
    assert kernels.gemm_width(n_out, B.double()) == n_out  # float64 gains nothing


RADIAL = [GaussianKernel(1.3), LaplacianKernel(2.0), CauchyKernel(0.7), MaternKernel(1.1, nu=2.5)]


@pytest.mark.parametrize("kernel", RADIAL, ids=lambda k: k.name)
def test_prepared_centers_and_their_slices_give_the_direct_block(data, kernel):
    """Blocks against prepared centers (and row slices of them, as tiles use) are the block."""
    X, Z = torch.tensor(data[0]), torch.tensor(data[1])
    centers = kernel.prepare(Z)
    points = kernel.prepare_points(X, centers)
    direct = kernel(X, Z)
    torch.testing.assert_close(kernel.prepared_block(points, centers), direct, rtol=0, atol=0)
    tile = kernel.prepared_block(points, centers.rows(5, 17))
    torch.testing.assert_close(tile, direct[:, 5:17], rtol=1e-12, atol=1e-14)
    # At zero distance the round-off of |u|^2 + |v|^2 - 2 u.v (~1e-15 here) passes through
    # a square root for the Laplacian and Matern kernels: about 1e-7 on the diagonal.
    torch.testing.assert_close(kernel(Z, Z).diagonal(), kernel.diag(Z), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel", RADIAL, ids=lambda k: k.name)
@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5])
def test_radial_blocks_are_translation_invariant_in_float32(kernel, offset):
    """Features far from zero: float32 blocks of shifted data equal the float64 reference of
    the unshifted data (|x|^2 + |z|^2 - 2 x.z of the raw features would cancel to noise)."""
    rng = np.random.default_rng(4)
    X, Z = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    reference = kernel(torch.tensor(X), torch.tensor(Z))
    shifted = kernel(torch.tensor(X + offset, dtype=torch.float32),
                     torch.tensor(Z + offset, dtype=torch.float32))  # fmt: skip
    # The float32 inputs themselves are rounded: offset * 2^-24 per coordinate.
    tol = 1e-5 + 4 * offset * 2.0**-24 / kernel.bandwidth
    torch.testing.assert_close(shifted.double(), reference, rtol=0, atol=tol)


@pytest.mark.parametrize("kernel", RADIAL, ids=lambda k: k.name)
@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_radial_blocks_work_in_bandwidth_units_at_any_scale(kernel, scale):
    """Features and bandwidth scaled together give the same block in float32: nothing over-
    or underflows (squared norms of 1e20-sized features would overflow float32)."""
    rng = np.random.default_rng(5)
    X, Z = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    reference = kernel(torch.tensor(X), torch.tensor(Z))
    scaled = type(kernel)(**{**vars(kernel), "bandwidth": kernel.bandwidth * scale})
    got = scaled(torch.tensor(X * scale, dtype=torch.float32),
                 torch.tensor(Z * scale, dtype=torch.float32))  # fmt: skip
    torch.testing.assert_close(got.double(), reference, rtol=0, atol=1e-5)


def test_gaussian_self_similarity_is_one_far_from_zero():
    """k(x, x) = 1 to float32 precision at offsets where the raw GEMM gave 1.28 or 0."""
    rng = np.random.default_rng(6)
    for offset in [0.0, 1e3, 1e5]:
        X = torch.tensor(rng.normal(size=(200, 8)) + offset, dtype=torch.float32)
        values = GaussianKernel(2.0)(X, X).diagonal()
        assert float(values.max()) <= 1.0
        assert float(values.min()) >= 1.0 - 1e-5


def test_tiny_bandwidth_gives_zeros_off_the_diagonal_never_nan():
    """Points a million bandwidths apart: no NaN or inf from round-off reaching exp."""
    X = torch.tensor(np.random.default_rng(7).normal(size=(40, 3)), dtype=torch.float32)
    for kernel in [GaussianKernel(1e-6), LaplacianKernel(1e-6), CauchyKernel(1e-6)]:
        block = kernel(X, X)
        assert torch.isfinite(block).all() and (block >= 0).all() and (block <= 1).all()
        off = block - torch.diag(block.diagonal())
        assert float(off.abs().max()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_out", [1, 3, 10, 17])
@pytest.mark.parametrize(
    "kernel", [GaussianKernel(1.5), LaplacianKernel(2.0), get_kernel("poly", degree=2),
               get_kernel("linear")], ids=lambda k: k.name,
)  # fmt: skip
@pytest.mark.parametrize("d", [5, 6])
def test_row_invariant_products_do_not_depend_on_the_other_rows(dtype, n_out, kernel, d):
    """``row_invariant=True``: each row of K(X, Z) W is bit-identical whether computed alone,
    in any batch, or in a random subset (the predictions' contract)."""
    rng = np.random.default_rng(8)
    X = torch.tensor(rng.normal(size=(90, d)), dtype=dtype)
    Z = torch.tensor(rng.normal(size=(700, d)), dtype=dtype)
    W = torch.tensor(rng.normal(size=(700, n_out)), dtype=dtype)
    centers = kernel.prepare(Z)

    def product(rows):
        return kernel_matmul(kernel, rows, None, W, prepared=centers, row_invariant=True,
                             max_block_elements=40 * 700)  # fmt: skip

    full = product(X)
    alone = torch.cat([product(X[i : i + 1]) for i in range(len(X))])
    assert torch.equal(alone, full)
    for m in [2, 5, 17, 33, 61]:
        assert torch.equal(product(X[:m]), full[:m])
    subset = torch.as_tensor(rng.permutation(len(X))[:29])
    assert torch.equal(product(X[subset]), full[subset])
    dense = kernel(X, Z) @ W
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-4)


def _fake_cpu0(root, caches, siblings="0"):
    """A sysfs tree for CPU 0 with ``caches``: (level, type, size, shared_cpu_list) rows."""
    (root / "cpu0/topology").mkdir(parents=True)
    (root / "cpu0/topology/thread_siblings_list").write_text(siblings + "\n")
    for i, (level, kind, size, shared) in enumerate(caches):
        index = root / f"cpu0/cache/index{i}"
        index.mkdir(parents=True)
        for name, value in [("level", level), ("type", kind), ("size", size),
                            ("shared_cpu_list", shared)]:  # fmt: skip
            (index / name).write_text(f"{value}\n")


@pytest.mark.parametrize(
    ("caches", "siblings", "expected"),
    [
        # the benchmark machine: private 1 MiB L2 per core, a 32 MiB L3 shared by both
        ([(1, "Data", "32K", "0"), (1, "Instruction", "32K", "0"), (2, "Unified", "1024K", "0"),
          (3, "Unified", "32768K", "0-1")], "0", 2**20),
        # two hardware threads per core share its L2: still private to the core
        ([(1, "Data", "48K", "0,64"), (2, "Unified", "2M", "0,64"), (3, "Unified", "96M", "0-127")],
         "0,64", 2 * 2**20),
        # nothing private reported: the default
        ([(3, "Unified", "32768K", "0-7")], "0", device_module.DEFAULT_PRIVATE_CACHE_BYTES),
    ],
    ids=["epyc-vm", "smt", "shared-only"],
)  # fmt: skip
def test_private_cache_is_read_from_sysfs(tmp_path, monkeypatch, caches, siblings, expected):
    _fake_cpu0(tmp_path, caches, siblings)
    monkeypatch.setattr(device_module, "_SYS_CPU", tmp_path)
    device_module.private_cache_bytes.cache_clear()
    try:
        assert device_module.private_cache_bytes() == expected
    finally:
        device_module.private_cache_bytes.cache_clear()


def test_cpu_tiles_follow_the_private_cache_and_the_threads(monkeypatch):
    monkeypatch.setattr(kernels, "private_cache_bytes", lambda: 2**20)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert kernels.cpu_tile_elements(4) == 2**20  # 4 threads x 1 MiB of float32
    assert kernels.cpu_tile_elements(8) == 2**19
    monkeypatch.setattr(kernels, "CPU_TILE_ELEMENTS", 1234)
    assert kernels.cpu_tile_elements(4) == 1234
    _, cols = kernels._tile_shape(500, 100_000, 2**24, torch.device("cpu"), 500, 4)
    assert cols == kernels.MIN_TILE_COLUMNS  # never narrower than that
