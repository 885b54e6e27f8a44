"""eigenpro.plotting: what the plots draw, and their errors."""

import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from eigenpro import EigenProClassifier, EigenProRegressor
from eigenpro.plotting import plot_history, plot_spectrum

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 3))
    return X, np.sin(3 * X[:, 0]) + X[:, 1] ** 2


@pytest.fixture(scope="module")
def regressor(data):
    X, y = data
    return EigenProRegressor(bandwidth=1.0, n_epochs=3, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def early_stopped(data):
    X, y = data
    model = EigenProClassifier(
        bandwidth=1.0, n_epochs=3, early_stopping=True, n_iter_no_change=10, random_state=0
    )
    return model.fit(X, (y > np.median(y)).astype(int))


def test_history_line_is_the_history(regressor):
    ax = plot_history(regressor)
    (line,) = ax.get_lines()
    history = regressor.history_
    np.testing.assert_array_equal(line.get_xdata(), [r["epoch"] for r in history])
    np.testing.assert_allclose(line.get_ydata(), [r["train_loss"] for r in history])
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch"
    assert len(ax.figure.axes) == 1  # no val_score: no twin axis


def test_history_other_metric_linear_scale(regressor):
    ax = plot_history(regressor, metric="seconds")
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [r["seconds"] for r in regressor.history_])
    assert ax.get_yscale() == "linear"


def test_history_draws_on_given_axes(regressor):
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_history(regressor, ax=right) is right
    assert not left.get_lines() and len(right.get_lines()) == 1


def test_history_val_score_on_twin_axis(early_stopped):
    history = early_stopped.history_
    assert all(r["val_score"] is not None for r in history)
    ax = plot_history(early_stopped)
    twins = [other for other in ax.figure.axes if other is not ax]
    assert len(twins) == 1
    (score_line,) = twins[0].get_lines()
    np.testing.assert_allclose(score_line.get_ydata(), [r["val_score"] for r in history])
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [r["train_loss"] for r in history])
    assert ax.get_legend() is not None

    ax = plot_history(early_stopped, metric="val_score")
    assert ax.get_yscale() == "linear"
    assert len(ax.figure.axes) == 1


def test_spectrum_lines(regressor):
    ax = plot_spectrum(regressor)
    lines = ax.get_lines()
    eig = lines[0]
    np.testing.assert_allclose(eig.get_ydata(), regressor.eigenvalues_)
    np.testing.assert_array_equal(eig.get_xdata(), np.arange(1, len(regressor.eigenvalues_) + 1))
    assert ax.get_yscale() == "log"

    vertical = [ln for ln in lines[1:] if ln.get_xdata()[0] == ln.get_xdata()[1]]
    horizontal = [ln for ln in lines[1:] if ln.get_ydata()[0] == ln.get_ydata()[1]]
    assert len(vertical) == 1 and len(horizontal) == 1
    assert regressor.n_components_ > 0
    assert vertical[0].get_xdata()[0] == regressor.n_components_
    assert str(regressor.n_components_) in vertical[0].get_label()
    assert horizontal[0].get_ydata()[0] == pytest.approx(regressor.tail_eigenvalue_)

    acceleration = regressor.top_eigenvalue_ / regressor.tail_eigenvalue_
    assert "acceleration" in ax.get_title()
    assert f"{acceleration:.3g}" in ax.get_title()


@pytest.mark.parametrize("plot", [plot_history, plot_spectrum])
def test_not_fitted(plot):
    with pytest.raises(NotFittedError):
        plot(EigenProRegressor())


@pytest.mark.parametrize("plot", [plot_history, plot_spectrum])
def test_bad_ax(regressor, plot):
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plot(regressor, ax="left")


def test_bad_metric(regressor):
    with pytest.raises(ValueError, match=r"metric='accuracy'.*available: \['train_loss'"):
        plot_history(regressor, metric="accuracy")
    with pytest.raises(ValueError, match="early_stopping=True"):
        plot_history(regressor, metric="val_score")  # no validation scores recorded
    with pytest.raises(TypeError, match="metric must be a string"):
        plot_history(regressor, metric=1)


@pytest.mark.parametrize("plot", [plot_history, plot_spectrum])
def test_missing_matplotlib(regressor, plot, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot(regressor)
