"""Numerical robustness on features real data have: offsets, extreme scales, degenerate fits."""

import numpy as np
import pytest

from eigenpro import EigenProRegressor

RADIAL = [("gaussian", None), ("laplacian", None), ("cauchy", None), ("matern", {"nu": 1.5})]


@pytest.fixture(scope="module")
def offset_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4))
    y = np.sin(X[:, 0]) + 0.1 * X[:, 1]
    return X, y


def _held_out_r2(X, y, **params):
    model = EigenProRegressor(bandwidth=2.0, n_epochs=5, random_state=0, **params)
    model.fit(X[:400], y[:400])
    return model.score(X[400:], y[400:])


@pytest.mark.parametrize("kernel, kernel_params", RADIAL, ids=[k for k, _ in RADIAL])
@pytest.mark.parametrize(
    "path", [{}, {"n_centers": 100}, {"n_centers": 100, "inner_params": {"method": "eigenpro"}}],
    ids=["eigenpro2", "n_centers-cholesky", "n_centers-eigenpro"],
)  # fmt: skip
def test_features_far_from_zero_fit_as_well_as_centred_ones(
    offset_problem, kernel, kernel_params, path
):
    """float32, offsets 1e3..1e5: the held-out R^2 of centred data within 0.02 (on main before
    the fix: -4.9 at 1e3 for the Gaussian kernel, DivergenceError from 1e4)."""
    X, y = offset_problem
    params = dict(kernel=kernel, kernel_params=kernel_params, **path)
    reference = _held_out_r2(X, y, **params)
    assert reference > 0.9
    for offset in [1e3, 1e4, 1e5]:
        assert _held_out_r2(X + offset, y, **params) == pytest.approx(reference, abs=0.02)


def test_streamed_memmap_far_from_zero(offset_problem, tmp_path):
    """The streaming path (n_centers with a memmap) sees the same offsets."""
    X, y = offset_problem
    reference = _held_out_r2(X, y, n_centers=100)
    path = tmp_path / "X.npy"
    np.save(path, (X[:400] + 1e4).astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    model = EigenProRegressor(bandwidth=2.0, n_epochs=5, random_state=0, n_centers=100)
    model.fit(mapped, y[:400])
    assert model.score(X[400:] + 1e4, y[400:]) == pytest.approx(reference, abs=0.02)


@pytest.mark.parametrize("scale", [1e-20, 1e20])
@pytest.mark.parametrize("path", [{}, {"n_centers": 50}], ids=["eigenpro2", "n_centers"])
def test_extreme_feature_scales_with_the_automatic_bandwidth(offset_problem, scale, path):
    """Features scaled by 1e+-20 (float32) fit like unscaled ones: the kernel works in
    bandwidth units (on main: R^2 0.0 at 1e20, NaN jitter in the Cholesky factor)."""
    X, y = offset_problem
    params = dict(n_epochs=5, random_state=0, **path)
    reference = EigenProRegressor(**params).fit(X[:400], y[:400]).score(X[400:], y[400:])
    model = EigenProRegressor(**params).fit(X[:400] * scale, y[:400])
    assert model.score(X[400:] * scale, y[400:]) == pytest.approx(reference, abs=0.02)
