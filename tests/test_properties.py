"""Property tests (hypothesis) over random shapes, scales, offsets, dtypes and parameters.

Derandomized (the same examples on every run, so CI is reproducible) and kept small: the
whole file runs in well under a minute on 2 cores.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eigenpro import DivergenceError, EigenProRegressor

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
RADIAL = ["gaussian", "laplacian", "cauchy", "matern"]


@st.composite
def problems(draw, min_n=2, max_n=60):
    """A random regression problem: X (n x d) at some scale and offset, y smooth in X."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    scale = 10.0 ** draw(st.integers(-8, 8))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3, 1e5])) * scale
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    y = np.sin(base[:, 0]) + 0.1 * base[:, -1] + 0.01 * rng.normal(size=n)
    return base * scale + offset, y, seed


def _fit_quietly(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y)


@PROPERTY_SETTINGS
@given(
    problem=problems(),
    kernel=st.sampled_from([*RADIAL, "linear", "polynomial"]),
    dtype=st.sampled_from(["float32", "float64"]),
    n_epochs=st.integers(1, 3),
    alpha=st.sampled_from([0.0, 1e-3, 1.0]),
    n_centers=st.sampled_from([None, None, 3]),
    batch=st.sampled_from(["auto", 1, 7]),
)
def test_a_fit_never_returns_non_finite_predictions(
    problem, kernel, dtype, n_epochs, alpha, n_centers, batch
):
    X, y, seed = problem
    if n_centers is not None:
        n_centers = min(n_centers, len(X))
    model = EigenProRegressor(
        kernel=kernel, dtype=dtype, n_epochs=n_epochs, alpha=alpha, n_centers=n_centers,
        batch_size=batch, random_state=seed,
    )  # fmt: skip
    try:
        _fit_quietly(model, X, y)
    except DivergenceError:
        return  # reported, not returned
    except ValueError as exc:  # only for scales no dtype can represent
        assert "overflow" in str(exc)
        return
    assert np.isfinite(model.predict(X)).all()
    assert np.isfinite(model.dual_coef_).all()


@PROPERTY_SETTINGS
@given(
    problem=problems(min_n=6, max_n=40),
    kernel=st.sampled_from(RADIAL),
    q_fraction=st.floats(0.0, 0.25),
    perm_seed=st.integers(0, 2**16),
)
def test_permuting_the_rows_gives_the_same_model(problem, kernel, q_fraction, perm_seed):
    """Where the method allows it (the whole data as subsample and as batch, float64), the
    fitted function does not depend on the order of the rows."""
    X, y, seed = problem
    n = len(X)
    params = dict(
        kernel=kernel, bandwidth=float(np.std(X) + 1e-300) * 2, n_components=int(q_fraction * n),
        subsample_size=n, batch_size=n, n_epochs=3, dtype="float64", random_state=seed,
    )  # fmt: skip
    perm = np.random.default_rng(perm_seed).permutation(n)
    a = _fit_quietly(EigenProRegressor(**params), X, y)
    b = _fit_quietly(EigenProRegressor(**params), X[perm], y[perm])
    X_test = X[: min(n, 10)] * 1.01
    np.testing.assert_allclose(b.predict(X_test), a.predict(X_test), rtol=1e-7, atol=1e-9)


@PROPERTY_SETTINGS
@given(
    problem=problems(min_n=5, max_n=50),
    kernel=st.sampled_from(RADIAL),
    shift_seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1.0, 1e3, 1e5]),
    n_centers=st.sampled_from([None, 4]),
)
def test_radial_predictions_are_translation_invariant(
    problem, kernel, shift_seed, magnitude, n_centers
):
    """Shifting training and test points by one vector leaves radial-kernel predictions as
    they are (float64: to round-off; the kernel layer works about the centers' mean)."""
    X, y, seed = problem
    spread = float(np.std(X, axis=0).max()) or 1.0
    shift = np.random.default_rng(shift_seed).normal(size=X.shape[1]) * magnitude * spread
    params = dict(
        kernel=kernel, bandwidth=2 * spread, n_epochs=2, dtype="float64", random_state=seed,
        n_centers=n_centers,
    )  # fmt: skip
    a = _fit_quietly(EigenProRegressor(**params), X, y)
    b = _fit_quietly(EigenProRegressor(**params), X + shift, y)
    X_test = X + 0.3 * spread
    scale = float(np.abs(a.predict(X_test)).max()) + 1.0
    np.testing.assert_allclose(b.predict(X_test + shift), a.predict(X_test), rtol=0,
                               atol=1e-6 * scale)  # fmt: skip


FAILURES = {
    "more components than the data allow": (dict(n_components=10_000), lambda X, y: (X, y)),
    "NaN in X": ({}, lambda X, y: (np.where(X == X.max(), np.nan, X), y)),
    "wrong number of targets": ({}, lambda X, y: (X, y[:-1])),
    "step overflowing float32": (dict(step_size=1e300), lambda X, y: (X, y)),
    "non-symmetric kernel": (
        dict(kernel=lambda A, B: torch.exp(-torch.cdist(A, B)) + 0.5 * (A[:, :1] < B[:, 0])),
        lambda X, y: (X, y),
    ),
    "empty data": ({}, lambda X, y: (X[:0], y[:0])),
    "a kernel callable returning None": (dict(kernel=lambda A, B: None), lambda X, y: (X, y)),
}


@PROPERTY_SETTINGS
@given(
    problem=problems(min_n=8, max_n=40),
    failure=st.sampled_from(sorted(FAILURES)),
    path=st.sampled_from([None, 5]),
)
def test_a_refit_after_any_failure_leaves_a_usable_model(problem, failure, path):
    X, y, seed = problem
    model = _fit_quietly(EigenProRegressor(n_epochs=2, n_centers=path, random_state=seed), X, y)
    expected = model.predict(X)
    params, corrupt = FAILURES[failure]
    good_params = model.get_params()
    model.set_params(**params)
    with pytest.raises((ValueError, TypeError, DivergenceError)):
        _fit_quietly(model, *corrupt(X, y))
    np.testing.assert_array_equal(model.predict(X), expected)
    model.set_params(**good_params)
    _fit_quietly(model, X[::-1], y[::-1])
    assert np.isfinite(model.predict(X)).all()
