"""General centers (``n_centers``): exact references on small problems, streamed inputs, errors."""

import numpy as np
import pytest
import torch

from eigenpro import EigenProClassifier, EigenProRegressor
from eigenpro.kernels import get_kernel

BANDWIDTH = 1.0


def _data(n=1000, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=n)
    return X, y


def _rel_err(pred, ref):
    return np.linalg.norm(pred - ref) / np.linalg.norm(ref)


def _least_squares(X, y, Z, alpha=0.0):
    """``argmin_c ||K(X, Z) c - y||^2 + alpha c^T K(Z, Z) c`` in float64 (independent solve)."""
    k = get_kernel("gaussian", bandwidth=BANDWIDTH)
    Xt, Zt, yt = torch.tensor(X), torch.tensor(Z, dtype=torch.float64), torch.tensor(y)[:, None]
    kxz = k(Xt, Zt)
    if alpha == 0:
        coef = torch.linalg.lstsq(kxz, yt, driver="gelsd").solution
    else:
        coef = torch.linalg.solve(kxz.T @ kxz + alpha * k(Zt, Zt), kxz.T @ yt)
    return lambda X_new: (k(torch.tensor(X_new), Zt) @ coef).numpy().ravel()


def _model(**params):
    # the intercept-free, ridge-free problem the references solve, for the epochs asked
    defaults = dict(
        bandwidth=BANDWIDTH, dtype="float64", random_state=0, alpha=0.0, fit_intercept=False,
        tol=None,
    )  # fmt: skip
    return EigenProRegressor(**{**defaults, **params})


def test_all_points_as_centers_agrees_with_eigenpro2():
    X, y = _data(n=500)
    X_test, _ = _data(n=200, seed=1)
    ep2 = _model(n_epochs=40).fit(X, y)
    ep3 = _model(n_centers=len(X), n_epochs=40).fit(X, y)
    assert ep3.n_centers_ == len(X) and ep3.inner_params_["method"] == "delayed"
    np.testing.assert_allclose(np.sort(ep3.centers_, axis=0), np.sort(X, axis=0))
    assert _rel_err(ep3.predict(X_test), ep2.predict(X_test)) < 1e-2


def test_fewer_centers_converge_to_the_least_squares_solution():
    X, y = _data()
    X_test, _ = _data(n=300, seed=1)
    # A full batch removes SGD noise: the iteration is deterministic and converges.
    model = _model(n_centers=100, batch_size=len(X), n_epochs=200).fit(X, y)
    assert model.centers_.shape == (100, 3) and model.dual_coef_.shape == (100,)
    reference = _least_squares(X, y, model.centers_)
    assert _rel_err(model.predict(X_test), reference(X_test)) < 1e-2
    losses = [h["train_loss"] for h in model.history_]
    assert losses[-1] < losses[0]


def test_ridge_on_centers_converges_to_its_normal_equations():
    X, y = _data(seed=3)
    model = _model(n_centers=80, alpha=1.0, batch_size=len(X), n_epochs=150).fit(X, y)
    reference = _least_squares(X, y, model.centers_, alpha=1.0)
    assert _rel_err(model.predict(X), reference(X)) < 1e-2


def test_inner_eigenpro_projection_converges():
    X, y = _data()
    inner = {"method": "eigenpro", "n_steps": 5}
    model = _model(n_centers=100, batch_size=len(X), n_epochs=150, inner_params=inner).fit(X, y)
    used = model.inner_params_
    assert used["method"] == "eigenpro" and used["n_steps"] == 5
    assert used["batch_size"] >= 1 and used["step_size"] > 0 and used["n_components"] >= 0
    reference = _least_squares(X, y, model.centers_)
    errors = [_rel_err(model.predict(X), reference(X))]
    assert errors[0] < 0.1
    # Mini-batches: still converging toward the least-squares fit (within SGD noise).
    sgd = _model(n_centers=100, n_epochs=30, inner_params={"method": "eigenpro"}).fit(X, y)
    assert _rel_err(sgd.predict(X), reference(X)) < 0.2
    assert sgd.history_[-1]["inner_loss"] < 1e-2


def test_array_of_centers_and_classifier():
    X, y = _data()
    rng = np.random.default_rng(5)
    centers = rng.uniform(-2, 2, size=(60, 3))
    model = _model(n_centers=centers, batch_size=len(X), n_epochs=200).fit(X, y)
    np.testing.assert_array_equal(model.centers_, centers)
    reference = _least_squares(X, y, centers)
    assert _rel_err(model.predict(X), reference(X)) < 1e-2

    labels = np.where(X[:, 0] + X[:, 1] > 0, "pos", "neg")
    clf = EigenProClassifier(n_centers=100, n_epochs=5, random_state=0).fit(X, labels)
    assert clf.dual_coef_.shape == (100, 1) and clf.score(X, labels) > 0.95


def test_streamed_inputs_give_the_same_fit(tmp_path):
    X, y = _data(n=600)
    path = tmp_path / "X.npy"
    np.save(path, X)
    memmap = np.load(path, mmap_mode="r")
    assert isinstance(memmap, np.memmap)
    reference = _model(n_centers=50, n_epochs=3, bandwidth="auto").fit(X, y)
    for data in (memmap, torch.tensor(X)):
        model = _model(n_centers=50, n_epochs=3, bandwidth="auto").fit(data, y)
        np.testing.assert_array_equal(model.centers_, reference.centers_)
        np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=1e-12)
    # float32 storage trained in float64: converted batch by batch.
    model = _model(n_centers=50, n_epochs=3).fit(X.astype(np.float32), y)
    assert model.dual_coef_.dtype == np.float64


def test_eval_set_and_early_stopping_on_centers():
    X, y = _data(n=600)
    model = _model(n_centers=60, n_epochs=4, early_stopping=True).fit(
        X, y, eval_set=[(X[:100], y[:100])]
    )
    assert 1 <= model.best_epoch_ <= model.n_iter_
    assert all(len(h["eval_scores"]) == 1 and h["val_score"] is not None for h in model.history_)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_streamed_data_raise_a_named_error(tmp_path, value):
    X, y = _data(n=300)
    X[123, 1] = value
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="NaN" if np.isnan(value) else "infinity"):
        _model(n_centers=30, n_epochs=1).fit(memmap, y)


@pytest.mark.parametrize(
    "n_centers, match",
    [
        (0, "n_centers"),
        (-3, "n_centers"),
        (2.5, "n_centers"),
        ("all", "n_centers"),
        (301, "larger"),
    ],
)
def test_bad_n_centers_raise(n_centers, match):
    X, y = _data(n=300)
    with pytest.raises((ValueError, TypeError), match=match):
        _model(n_centers=n_centers, n_epochs=1).fit(X, y)


def test_centers_with_the_wrong_number_of_features_raise():
    X, y = _data(n=300)
    with pytest.raises(ValueError, match="features"):
        _model(n_centers=np.zeros((10, 4)), n_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="NaN|infinity"):
        _model(n_centers=np.full((10, 3), np.nan), n_epochs=1).fit(X, y)


def test_bad_inner_params_raise():
    X, y = _data(n=300)
    with pytest.raises(ValueError, match="inner"):
        _model(n_centers=30, inner_params={"epochs": 3}).fit(X, y)
    with pytest.raises(ValueError, match="inner"):
        _model(n_centers=30, inner_params={"method": "lu"}).fit(X, y)
