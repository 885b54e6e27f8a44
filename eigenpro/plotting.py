"""Plots of a fitted EigenPro estimator: its training history and its kernel spectrum.

matplotlib is optional: it is imported when a function is called (``pip install matplotlib``).
Each function draws on the ``ax`` it is given, or on the axes of a new figure, and returns
the axes.
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from matplotlib.axes import Axes

__all__ = ["plot_history", "plot_spectrum"]

_LABELS = {
    "train_loss": "training loss (mean squared residual)",
    "val_score": "validation score",
    "seconds": "seconds per epoch",
    "step_size": "step size",
}


def _axes(ax: Any) -> Axes:
    """``ax``, or the axes of a new figure when None; ImportError without matplotlib."""
    try:
        import matplotlib  # noqa: F401  (a clear message when matplotlib itself is missing)
        from matplotlib.axes import Axes
    except ImportError as exc:
        raise ImportError(
            "eigenpro.plotting needs matplotlib, which is not installed: "
            "pip install matplotlib (or pip install 'eigenpro[notebook]')"
        ) from exc
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
        return ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}")
    return ax


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _metric_values(history: list[dict], metric: str) -> list[float | None]:
    """The values of ``metric`` per epoch (None where absent or not recorded)."""
    return [record.get(metric) for record in history]


def _available_metrics(history: list[dict]) -> list[str]:
    """Keys whose values are numbers (or None) in every record, and a number in one."""
    keys = [key for key in history[0] if key != "epoch"]
    return [
        key
        for key in keys
        if all(key in r and (r[key] is None or _is_number(r[key])) for r in history)
        and any(_is_number(r[key]) for r in history)
    ]


def plot_history(estimator: Any, ax: Axes | None = None, metric: str = "train_loss") -> Axes:
    """Plot a fitted estimator's per-epoch ``history_`` against the epoch.

    Losses (``metric`` containing ``"loss"``) are drawn on a log scale. When the history
    holds validation scores (``val_score`` not None: fits with ``early_stopping=True``),
    they are drawn too, on a twin y axis on the right.

    Parameters
    ----------
    estimator : EigenProRegressor or EigenProClassifier
        A fitted estimator.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; None: the axes of a new figure.
    metric : str, default="train_loss"
        The entry of the history records to plot: ``"train_loss"``, ``"seconds"``,
        ``"step_size"``, ``"val_score"``, or any other number the fit recorded per epoch
        (for example by a callback).

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes of ``metric``. The validation scores, when drawn, are on a second axes
        sharing its x axis (in ``ax.figure.axes``).

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the estimator is not fitted.
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``ax`` is not a matplotlib Axes or ``metric`` not a string.
    ValueError
        When ``metric`` is not a number recorded in the history.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from eigenpro import EigenProRegressor
    >>> from eigenpro.plotting import plot_history
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(200, 3))
    >>> y = np.sin(3 * X[:, 0])
    >>> model = EigenProRegressor(bandwidth=1.0, n_epochs=3, random_state=0).fit(X, y)
    >>> ax = plot_history(model)
    >>> ax.get_yscale()
    'log'
    >>> [int(e) for e in ax.get_lines()[0].get_xdata()]
    [1, 2, 3]
    """
    check_is_fitted(estimator, "history_")
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string; got {type(metric).__name__}")
    history = list(estimator.history_)
    if not history:
        raise ValueError("the estimator's history_ is empty: no epoch was run")
    available = _available_metrics(history)
    if metric == "val_score" and metric not in available:
        raise ValueError(
            "no validation scores in history_ (val_score is None): fit with early_stopping=True"
        )
    if metric not in available:
        raise ValueError(
            f"metric={metric!r} is not a number recorded in history_; available: {available}"
        )
    ax = _axes(ax)
    from matplotlib.ticker import MaxNLocator

    epochs = [record.get("epoch", i + 1) for i, record in enumerate(history)]
    values = _metric_values(history, metric)
    x = [e for e, v in zip(epochs, values, strict=True) if v is not None]
    y = [float(v) for v in values if v is not None]
    ax.plot(x, y, marker="o", color="C0", label=metric)
    if "loss" in metric:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    scores = _metric_values(history, "val_score")
    if metric != "val_score" and any(s is not None for s in scores):
        twin = ax.twinx()
        xs = [e for e, s in zip(epochs, scores, strict=True) if s is not None]
        ys = [float(s) for s in scores if s is not None]
        twin.plot(xs, ys, marker="s", color="C1", label="val_score")
        twin.set_ylabel(_LABELS["val_score"], color="C1")
        twin.tick_params(axis="y", colors="C1")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_title(f"{type(estimator).__name__}: training history")
    return ax


def plot_spectrum(estimator: Any, ax: Axes | None = None) -> Axes:
    """Plot the Nystrom estimates of the top kernel eigenvalues of a fitted estimator.

    The eigenvalues ``eigenvalues_`` (``lambda_1 >= lambda_2 >= ...``) are drawn on a log
    scale against their index ``i``. EigenPro's preconditioner flattens the top
    ``q = n_components_`` of them down to ``lambda_{q+1}`` (``tail_eigenvalue_``), which
    allows a step size about ``lambda_1 / lambda_{q+1}`` times larger than plain kernel SGD:
    the acceleration stated in the title. A vertical line marks ``q`` and a horizontal line
    ``tail_eigenvalue_``.

    Parameters
    ----------
    estimator : EigenProRegressor or EigenProClassifier
        A fitted estimator.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; None: the axes of a new figure.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The axes drawn on.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When the estimator is not fitted.
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``ax`` is not a matplotlib Axes.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from eigenpro import EigenProRegressor
    >>> from eigenpro.plotting import plot_spectrum
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(200, 3))
    >>> y = np.sin(3 * X[:, 0])
    >>> model = EigenProRegressor(bandwidth=1.0, n_epochs=3, random_state=0).fit(X, y)
    >>> ax = plot_spectrum(model)
    >>> ax.get_yscale()
    'log'
    >>> "acceleration" in ax.get_title()
    True
    """
    check_is_fitted(
        estimator, ["eigenvalues_", "n_components_", "top_eigenvalue_", "tail_eigenvalue_"]
    )
    ax = _axes(ax)
    from matplotlib.ticker import MaxNLocator

    eigenvalues = np.asarray(estimator.eigenvalues_, dtype=np.float64).ravel()
    q = int(estimator.n_components_)
    top, tail = float(estimator.top_eigenvalue_), float(estimator.tail_eigenvalue_)

    index = np.arange(1, eigenvalues.size + 1)
    ax.plot(index, eigenvalues, marker=".", color="C0", label="eigenvalues (Nystrom)")
    ax.set_yscale("log")
    if q > 0:
        ax.axvline(q, color="C2", linestyle="--", label=f"q = n_components_ = {q}")
    ax.axhline(tail, color="C3", linestyle=":", label=f"tail_eigenvalue_ = {tail:.3g}")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"eigenvalue $\lambda_i$")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acceleration = top / tail if tail > 0 else float("inf")
    ax.set_title(rf"Spectrum: acceleration $\lambda_1 / \lambda_{{q+1}}$ = {acceleration:.3g}")
    ax.legend(loc="best")
    return ax
