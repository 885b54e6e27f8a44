"""warm_start=True: a second fit continues the first on the same problem (scikit-learn's
meaning), and starts afresh, with a warning, where it cannot."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone

from eigenpro import EigenProClassifier, EigenProRegressor


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(600, 4))
    y = np.sin(3 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=600)
    return X, y


def _split_fit(model, X, y, first, second, **fit_kw):
    """``first`` epochs, then ``second`` more in a warm-started fit."""
    model.set_params(n_epochs=first, warm_start=True).fit(X, y, **fit_kw)
    return model.set_params(n_epochs=second).fit(X, y, **fit_kw)


@pytest.mark.parametrize("n_centers", [None, 150])
def test_two_then_three_epochs_reach_the_loss_of_five(data, n_centers):
    X, y = data
    params = dict(bandwidth=1.0, dtype="float64", random_state=0, n_centers=n_centers)
    straight = EigenProRegressor(n_epochs=5, **params).fit(X, y)
    warm = _split_fit(EigenProRegressor(**params), X, y, 2, 3)
    assert warm.n_iter_ == 5
    assert [r["epoch"] for r in warm.history_] == [1, 2, 3, 4, 5]
    final, expected = warm.history_[-1]["train_loss"], straight.history_[-1]["train_loss"]
    if n_centers is None:  # identical batches, preconditioner and step: the same iterates
        assert final == pytest.approx(expected, rel=1e-9)
        np.testing.assert_allclose(warm.predict(X), straight.predict(X), atol=1e-9)
    else:  # the centers path's step schedule restarts its plateau test at the second fit
        assert final <= 1.1 * expected
    # a fresh 3-epoch fit is clearly worse than the continued one
    fresh = EigenProRegressor(n_epochs=3, **params).fit(X, y)
    assert final < fresh.history_[-1]["train_loss"]


def test_warm_start_reuses_the_preconditioner(data, monkeypatch):
    X, y = data
    model = EigenProRegressor(bandwidth=1.0, n_epochs=1, warm_start=True, random_state=0)
    model.fit(X, y)
    first = (model.eigenvalues_.copy(), model.batch_size_, model.subsample_size_)
    import eigenpro.solver as solver

    def fail(*args, **kwargs):
        raise AssertionError("the preconditioner was rebuilt")

    monkeypatch.setattr(solver, "build_preconditioner", fail)
    model.fit(X, y)
    np.testing.assert_array_equal(model.eigenvalues_, first[0])
    assert (model.batch_size_, model.subsample_size_) == first[1:]


def test_changed_data_warns_and_starts_afresh(data):
    X, y = data
    params = dict(bandwidth=1.0, n_epochs=2, random_state=0, dtype="float64")
    model = EigenProRegressor(warm_start=True, **params).fit(X, y)
    X2, y2 = X[:500], y[:500]
    with pytest.warns(UserWarning, match="starting afresh"):
        model.fit(X2, y2)
    assert model.n_iter_ == 2 and [r["epoch"] for r in model.history_] == [1, 2]
    cold = EigenProRegressor(**params).fit(X2, y2)
    np.testing.assert_allclose(model.predict(X), cold.predict(X), atol=1e-9)


def test_changed_problem_parameter_starts_afresh(data):
    X, y = data
    model = EigenProRegressor(bandwidth=1.0, n_epochs=1, warm_start=True, random_state=0)
    model.fit(X, y)
    with pytest.warns(UserWarning, match="starting afresh"):
        model.set_params(bandwidth=0.5).fit(X, y)
    assert model.n_iter_ == 1
    # a continuable parameter (n_epochs) does not restart
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_params(n_epochs=2).fit(X, y)
    assert model.n_iter_ == 3


def test_without_warm_start_every_fit_starts_afresh(data):
    X, y = data
    model = EigenProRegressor(bandwidth=1.0, n_epochs=2, random_state=0).fit(X, y)
    first = model.predict(X)
    model.fit(X, y)
    assert model.n_iter_ == 2
    np.testing.assert_array_equal(model.predict(X), first)


def test_warm_classifier_with_early_stopping_keeps_its_split():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(int)
    params = dict(bandwidth=2.0, random_state=0, early_stopping=True, n_iter_no_change=50)
    straight = EigenProClassifier(n_epochs=4, **params).fit(X, y)
    warm = _split_fit(EigenProClassifier(**params), X, y, 1, 3)
    assert warm.best_epoch_ == straight.best_epoch_
    assert [r["val_score"] for r in warm.history_] == pytest.approx(
        [r["val_score"] for r in straight.history_]
    )
    np.testing.assert_array_equal(warm.predict(X), straight.predict(X))


def test_clone_forgets_the_warm_state(data):
    X, y = data
    model = EigenProRegressor(bandwidth=1.0, n_epochs=1, warm_start=True, random_state=0)
    model.fit(X, y)
    copy = clone(model).fit(X, y)
    assert copy.n_iter_ == 1
