"""n_centers="auto": every training point while a pass fits the compute budget, a fixed number
of centers beyond (eigenpro.model_size)."""

import math

import numpy as np
import pytest

from eigenpro import EigenProRegressor
from eigenpro.model_size import (
    CENTERS_PER_LIMIT,
    KERNEL_COST,
    MIN_AUTO_CENTERS,
    all_points_limit,
    choose_model_size,
)


@pytest.mark.parametrize("d", [1, 13, 128, 784])
@pytest.mark.parametrize("budget", [0.5, 40.0, 1000.0])
def test_the_limit_is_the_largest_n_whose_pass_fits_the_budget(d, budget):
    limit = all_points_limit(d, budget)
    assert limit**2 * (d + KERNEL_COST) <= budget * 1e9 < (limit + 1) ** 2 * (d + KERNEL_COST)


def test_every_point_up_to_the_limit_then_a_fixed_number_of_centers():
    limit = all_points_limit(128, 40.0)
    assert choose_model_size(limit, 128, 1).n_centers is None
    sizes = {choose_model_size(n, 128, 1).n_centers for n in (limit + 1, 10 * limit, 100 * limit)}
    assert sizes == {max(MIN_AUTO_CENTERS, int(CENTERS_PER_LIMIT * limit))}  # linear in n
    wider = choose_model_size(10 * limit, 784, 1).n_centers
    assert wider < sizes.pop()  # more features, fewer centers for the same budget


def test_the_centers_factor_fits_a_quarter_of_the_memory():
    memory = 4 * 2000**2 * 4  # room for a 2000 x 2000 float32 factor in a quarter
    size = choose_model_size(10**6, 10, 1, memory_bytes=memory, itemsize=4)
    assert size.n_centers == 2000
    # data that do not fit on the device as centers go to the streamed path even when small
    small = choose_model_size(3000, 10, 1, memory_bytes=3000 * 12 * 4 * 3, itemsize=4)
    assert small.n_centers is not None and "memory" in small.reason


@pytest.mark.parametrize("budget", [0.0, -1.0, math.inf, math.nan])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget):
    with pytest.raises(ValueError, match="compute_budget"):
        choose_model_size(100, 3, 1, budget_gflop=budget)


def _problem(n=1500, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, d))
    return X, np.sin(3 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=n)


def test_auto_is_every_point_for_small_data():
    X, y = _problem()
    auto = EigenProRegressor(random_state=0, n_epochs=5, tol=None).fit(X, y)
    every = EigenProRegressor(random_state=0, n_epochs=5, tol=None, n_centers=None).fit(X, y)
    assert auto.model_size_["n_centers"] is None and auto.n_centers_ == len(X)
    assert auto.inner_params_ is None and every.model_size_ is None
    np.testing.assert_array_equal(auto.predict(X[:50]), every.predict(X[:50]))


def test_past_the_budget_auto_fits_the_chosen_number_of_centers(capsys):
    X, y = _problem()
    budget = 0.02  # all points up to 1000 rows at 4 features, then 1000 centers
    auto = EigenProRegressor(random_state=0, compute_budget=budget, verbose=1).fit(X, y)
    p = auto.model_size_["n_centers"]
    assert p == max(MIN_AUTO_CENTERS, int(CENTERS_PER_LIMIT * all_points_limit(4, budget)))
    assert auto.n_centers_ == p and auto.inner_params_ is not None
    assert f"{p} centers drawn at random" in capsys.readouterr().out
    given = EigenProRegressor(random_state=0, n_centers=p).fit(X, y)
    np.testing.assert_allclose(auto.predict(X[:50]), given.predict(X[:50]), rtol=1e-6)
    assert auto.score(X, y) > 0.95


def test_auto_streams_a_memmap_past_the_budget(tmp_path):
    X, y = _problem()
    path = tmp_path / "X.npy"
    np.save(path, X.astype(np.float32))
    X_map = np.load(path, mmap_mode="r")
    model = EigenProRegressor(random_state=0, compute_budget=0.02).fit(X_map, y)
    assert model.n_centers_ < len(X) and model.score(X, y) > 0.95


def test_precomputed_auto_uses_every_point():
    X, y = _problem(n=300)
    K = np.exp(-((X[:, None, :] - X[None, :, :]) ** 2).sum(-1) / 2)
    model = EigenProRegressor(kernel="precomputed", compute_budget=1e-6).fit(K, y)
    assert model.n_centers_ == len(X) and "precomputed" in model.model_size_["reason"]


def test_a_bad_compute_budget_is_a_clear_error():
    X, y = _problem(n=100)
    with pytest.raises(ValueError, match="compute_budget"):
        EigenProRegressor(compute_budget=0).fit(X, y)
