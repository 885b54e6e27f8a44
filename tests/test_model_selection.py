"""Automatic ridge and bandwidth, and the intercept, against brute-force references."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV, LeaveOneOut, cross_val_predict, train_test_split
from sklearn.preprocessing import StandardScaler

from eigenpro import EigenProClassifier, EigenProRegressor, model_selection
from eigenpro.kernels import get_kernel
from eigenpro.model_selection import (
    ALPHA_FLOOR,
    RIDGE_EXPONENT,
    leave_one_out_errors,
    median_distance,
    ridge_for_size,
    select_hyperparameters,
)
from eigenpro.targets import TargetScaler


def _problem(n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.3 * rng.normal(size=n)
    return X, y


def _brute_force_loo_r2(X, y, bandwidth, alpha, sample_weight=None):
    """1 - sum_i w_i (y_i - f_{-i}(x_i))^2 / sum_i w_i y_i^2, by n KernelRidge refits."""
    model = KernelRidge(kernel="rbf", gamma=1 / (2 * bandwidth**2), alpha=alpha)
    params = None if sample_weight is None else {"sample_weight": sample_weight}
    pred = cross_val_predict(model, X, y, cv=LeaveOneOut(), params=params)
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    return 1 - np.sum(w * (y - pred) ** 2) / np.sum(w * y**2), pred


@pytest.mark.parametrize("weighted", [False, True])
def test_leave_one_out_scores_equal_refitting_without_each_row(weighted, monkeypatch):
    """The closed form of every (bandwidth, ridge) pair, weighted too (weights as a diagonal
    scaling of the kernel), against n refits of KernelRidge per pair (eigendecompositions in
    float64 here: the closed form itself is checked to round-off)."""
    monkeypatch.setattr(model_selection, "SELECTION_EIGH_DTYPE", np.float64)
    X, y = _problem()
    w = np.random.default_rng(1).uniform(0.2, 3.0, size=len(y)) if weighted else None
    root = None if w is None else torch.tensor(np.sqrt(w / w.mean()))
    bandwidths, alphas = [0.7, 1.5], np.array([0.05, 0.5, 3.0])
    selection = select_hyperparameters(
        lambda h: get_kernel("gaussian", bandwidth=h), torch.tensor(X), torch.tensor(y)[:, None],
        bandwidths=bandwidths, alphas=alphas, root_weights=root,
    )  # fmt: skip
    for i, h in enumerate(bandwidths):
        for j, a in enumerate(alphas):  # weights of mean 1: the ridge means the same
            expected, _ = _brute_force_loo_r2(X, y, h, a, None if w is None else w / w.mean())
            assert selection.scores[i, j] == pytest.approx(expected, rel=1e-9)
    best = np.unravel_index(np.argmax(selection.scores), selection.scores.shape)
    assert (selection.bandwidth, selection.alpha) == (bandwidths[best[0]], alphas[best[1]])
    _, pred = _brute_force_loo_r2(
        X, y, selection.bandwidth, selection.alpha, None if w is None else w / w.mean()
    )
    np.testing.assert_allclose(selection.loo_predictions[:, 0], pred, rtol=1e-8, atol=1e-10)


def test_single_precision_eigensystems_score_like_double(monkeypatch):
    """The default (float32 eigendecompositions) against float64 on a real data set: the
    same bandwidth and ridge, and leave-one-out R^2 close everywhere in the table."""
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    Y = torch.tensor((y - y.mean()) / y.std())[:, None]
    bandwidths = [median_distance(X) * f for f in model_selection.BANDWIDTH_FACTORS]
    kernel = lambda h: get_kernel("gaussian", bandwidth=h)  # noqa: E731

    def search():
        return select_hyperparameters(
            kernel, torch.tensor(X), Y, bandwidths=bandwidths, alphas=None,
            alpha_floor=model_selection.ALPHA_FLOOR,
        )  # fmt: skip

    single = search()
    monkeypatch.setattr(model_selection, "SELECTION_EIGH_DTYPE", np.float64)
    double = search()
    assert (single.bandwidth, single.alpha) == (double.bandwidth, double.alpha)
    assert single.bandwidths == double.bandwidths
    np.testing.assert_allclose(single.scores, double.scores, atol=1e-3)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 7])
def test_bandwidth_walk_finds_the_peak_of_a_one_peaked_curve(count):
    """Wherever the single peak is, the walk scores it, and stops before scoring everything
    when the peak is inside."""
    for peak in range(count):
        scored = []

        def score(i, peak=peak, scored=scored):
            scored.append(i)
            return -abs(i - peak)

        model_selection._walk(count, score)
        assert peak in scored and len(set(scored)) == len(scored)
        best_neighbours = {peak - 1, peak + 1} & set(range(count))
        assert best_neighbours <= set(scored)  # the peak was confirmed on both sides
        if count >= 6 and 0 < peak < count - 1:
            assert len(scored) < count


def test_walked_search_equals_the_full_table():
    """The chosen pair is the best of scoring every bandwidth one by one."""
    X, y = _problem(n=200)
    Y = torch.tensor(y - y.mean())[:, None]
    bandwidths = [median_distance(X) * f for f in model_selection.BANDWIDTH_FACTORS]
    kernel = lambda h: get_kernel("gaussian", bandwidth=h)  # noqa: E731
    walked = select_hyperparameters(kernel, torch.tensor(X), Y, bandwidths=bandwidths, alphas=None)
    each = [
        select_hyperparameters(kernel, torch.tensor(X), Y, bandwidths=[h], alphas=None)
        for h in bandwidths
    ]
    best = max(each, key=lambda s: s.best_score)
    assert (walked.bandwidth, walked.alpha) == (best.bandwidth, best.alpha)
    assert len(walked.bandwidths) < len(bandwidths)


def test_an_interpolant_with_a_leverage_of_one_scores_minus_infinity():
    K = torch.eye(5, dtype=torch.float64)  # each row its own function: nothing to predict with
    errors = leave_one_out_errors(K, torch.ones(5, 1, dtype=torch.float64), [1e-300, 1.0])
    assert errors[0] == np.inf and np.isfinite(errors[1])


def test_the_ridge_grows_like_the_square_root_of_n_above_a_floor():
    assert RIDGE_EXPONENT == 0.5
    assert ridge_for_size(0.2, 1000, 16000) == pytest.approx(0.8)
    X, y = _problem(n=300, seed=2)
    for n_rows in (300, 3000):  # the same rows, said to come from a 10x larger fit
        selection = select_hyperparameters(
            lambda h: get_kernel("gaussian", bandwidth=h), torch.tensor(X),
            torch.tensor(y)[:, None], bandwidths=[1.0], alphas=None,
            alpha_floor=ALPHA_FLOOR * (300 / n_rows) ** RIDGE_EXPONENT,
        )  # fmt: skip
        assert ridge_for_size(selection.alpha, 300, n_rows) >= ALPHA_FLOOR * (1 - 1e-12)


def test_given_values_are_used_as_given():
    X, y = _problem(n=200)
    model = EigenProRegressor(bandwidth=1.3, alpha=0.07, random_state=0).fit(X, y)
    assert model.bandwidth_ == 1.3 and model.alpha_ == 0.07 and model.selection_ is None
    only_alpha = EigenProRegressor(bandwidth=1.3, random_state=0).fit(X, y)
    assert only_alpha.bandwidth_ == 1.3 and only_alpha.selection_["bandwidths"] == [None]
    only_bandwidth = EigenProRegressor(alpha=0.07, random_state=0).fit(X, y)
    assert only_bandwidth.alpha_ == 0.07 and len(only_bandwidth.selection_["bandwidths"]) > 1
    median = EigenProRegressor(bandwidth="median", alpha=0.07, random_state=0).fit(X, y)
    assert median.selection_ is None and median.bandwidth_ > 0


def test_defaults_match_a_grid_searched_kernel_ridge_on_real_data():
    """scikit-learn's diabetes data (442 patients, standardised): with its defaults the
    regressor is within 0.02 R^2 of KernelRidge tuned by a 5-fold grid of 99 candidates on
    centred targets, where alpha=0 (the old default) scored -0.08."""
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    ours = EigenProRegressor(random_state=0).fit(X_train, y_train).score(X_test, y_test)
    mean = y_train.mean()
    grid = {"alpha": np.logspace(-3, 2, 11), "gamma": np.logspace(-4, 0, 9)}
    search = GridSearchCV(KernelRidge(kernel="rbf"), grid).fit(X_train, y_train - mean)
    assert ours >= search.score(X_test, y_test - mean) - 0.02


def test_a_model_no_better_than_the_mean_says_so():
    """Random labels: a narrow kernel with almost no ridge predicts held-out rows worse than
    the class frequencies; the fit says so (never an R^2 below 0 in silence)."""
    rng = np.random.default_rng(3)
    X, labels = rng.normal(size=(300, 4)), rng.integers(0, 2, size=300)
    with pytest.warns(UserWarning, match="worse than the targets' mean"):
        clf = EigenProClassifier(bandwidth=1.0, alpha=1e-6, random_state=0).fit(X, labels)
    assert clf.selection_["best_score"] < 0


# ------------------------------------------------------------------ the intercept
def test_target_scaler_is_the_weighted_mean_and_deviation():
    rng = np.random.default_rng(0)
    Y, w = rng.normal(5.0, 3.0, size=(50, 2)), rng.uniform(0, 2, size=50)
    scaler = TargetScaler.fit(Y, w)
    mean = np.average(Y, axis=0, weights=w)
    np.testing.assert_allclose(scaler.offset, mean)
    np.testing.assert_allclose(scaler.scale, np.sqrt(np.average((Y - mean) ** 2, 0, w)))
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(Y)), Y)
    constant = TargetScaler.fit(np.full((4, 1), 2.0))
    assert constant.scale[0] == 1.0 and constant.offset[0] == 2.0


@pytest.mark.parametrize("n_centers", [None, 40])
def test_the_intercept_takes_an_offset_whatever_its_size(n_centers):
    """Targets near 1e4 (or 0): the fit on the centred targets, the same model."""
    X, y = _problem(n=300, seed=4)
    params = dict(bandwidth=1.0, alpha=0.1, n_centers=n_centers, dtype="float64")
    near_zero = EigenProRegressor(random_state=0, **params).fit(X, y)
    far = EigenProRegressor(random_state=0, **params).fit(X, y + 1e4)
    np.testing.assert_allclose(far.predict(X), near_zero.predict(X) + 1e4, rtol=1e-10)
    assert far.intercept_ == pytest.approx(y.mean() + 1e4)
    no_intercept = EigenProRegressor(random_state=0, fit_intercept=False, **params)
    assert no_intercept.fit(X, y + 1e4).intercept_ == 0.0
    assert far.score(X, y + 1e4) > no_intercept.score(X, y + 1e4)


def test_the_classifier_centres_its_indicators_by_the_class_frequencies():
    X, y = _problem(n=300, seed=5)
    labels = np.where(y > np.quantile(y, 0.8), "high", "low")
    clf = EigenProClassifier(random_state=0).fit(X, labels)
    assert clf.intercept_.shape == (1,)  # +1 for "low" (classes_[1]), -1 for "high"
    assert clf.intercept_[0] == pytest.approx(np.mean(np.where(labels == "low", 1.0, -1.0)))
    three = np.digitize(y, np.quantile(y, [0.3, 0.7]))
    clf3 = EigenProClassifier(random_state=0).fit(X, three)
    np.testing.assert_allclose(clf3.intercept_, np.bincount(three) / len(three))
    far = np.full((1, 3), 1e3)  # far from every training point: the most frequent class
    assert clf.predict(far)[0] == "low"
