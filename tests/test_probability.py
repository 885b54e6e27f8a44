"""predict_proba: a softmax of the outputs with a temperature fitted on held-out rows."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.preprocessing import LabelEncoder

from eigenpro import EigenProClassifier
from eigenpro.calibration import fit_temperature, log_probabilities


@pytest.mark.parametrize("true_temperature", [0.05, 0.3, 2.0])
def test_fit_temperature_recovers_the_sampling_temperature(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 4))
    gumbel = rng.gumbel(size=logits.shape)  # argmax(l / T + G) ~ softmax(l / T)
    labels = (logits / true_temperature + gumbel).argmax(axis=1)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_log_probabilities_of_one_column_are_a_two_class_softmax():
    f = np.array([-1.0, 0.0, 0.5])
    expected = softmax(np.stack([-f, f], axis=1) / 0.5, axis=1)
    np.testing.assert_allclose(np.exp(log_probabilities(f, 0.5)), expected)
    with pytest.raises(ValueError, match="temperature must be positive"):
        log_probabilities(f, 0.0)


def test_an_error_free_held_out_set_gives_a_finite_temperature():
    labels = np.array([0, 1] * 50)
    outputs = np.where(labels == 1, 1.0, -1.0)  # every held-out point right, by a margin
    temperature = fit_temperature(outputs, labels)
    top = np.exp(log_probabilities(outputs, temperature)).max(axis=1)
    assert temperature > 0.05 and np.all(top < 1 - 1e-3)  # Platt: about 101 / 102


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:1200] / 16, y[:1200], X[1200:] / 16, y[1200:]


@pytest.mark.parametrize("setting", [{"probability": True}, {"early_stopping": True}])
def test_predict_proba_is_consistent_with_predict(digits, setting):
    X, y, X_test, y_test = digits
    labels = np.array([f"digit {k}" for k in range(10)])[y]
    clf = EigenProClassifier(n_epochs=3, random_state=0, **setting).fit(X, labels)
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10) and clf.temperature_ > 0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X_test))
    np.testing.assert_allclose(np.log(proba), clf.predict_log_proba(X_test), atol=1e-12)
    # calibrated: the held-out log-loss beats the temperature-1 softmax of the same outputs
    index = LabelEncoder().fit(clf.classes_).transform([f"digit {k}" for k in y_test])
    ours = -np.log(proba[np.arange(len(index)), index]).mean()
    raw = -np.log(softmax(clf.decision_function(X_test), axis=1)[np.arange(len(index)), index])
    assert ours < 0.5 * raw.mean()


def test_binary_probabilities_follow_the_decision_function():
    X, y = make_classification(n_samples=400, n_features=6, random_state=0)
    clf = EigenProClassifier(n_epochs=3, probability=True, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (400, 2)
    order = np.argsort(clf.decision_function(X))
    assert np.all(np.diff(proba[order, 1]) >= 0)  # monotone in the output
    np.testing.assert_array_equal(proba[:, 1] > 0.5, clf.predict(X) == clf.classes_[1])


def test_a_default_classifier_calibrates_on_leave_one_out_outputs(digits):
    """Without held-out rows, the temperature is fitted on the model selection's closed-form
    leave-one-out outputs (no second fit): its test log-loss is near that of a temperature
    fitted on a second fit's held-out rows (probability=True), far below the raw softmax."""
    X, y, X_test, y_test = digits
    clf = EigenProClassifier(random_state=0).fit(X, y)
    second = EigenProClassifier(probability=True, random_state=0).fit(X, y)
    ours, theirs = (log_loss(y_test, m.predict_proba(X_test)) for m in (clf, second))
    raw = log_loss(y_test, softmax(clf.decision_function(X_test), axis=1))
    assert ours < 1.25 * theirs and ours < 0.5 * raw
    # with nothing searched, the given bandwidth and ridge are scored for their outputs
    given = EigenProClassifier(bandwidth=2.0, alpha=0.1, random_state=0).fit(X, y)
    assert given.selection_["bandwidths"] == [None] and given.temperature_ > 0


def test_log_loss_and_roc_auc_scoring_work_out_of_the_box(digits):
    X, y, _, _ = digits
    scores = cross_val_score(EigenProClassifier(random_state=0), X, y, scoring="neg_log_loss")
    assert np.all(np.isfinite(scores)) and np.all(-0.5 < scores) and np.all(scores < 0)
    auc = cross_val_score(EigenProClassifier(random_state=0), X, y > 4, scoring="roc_auc")
    assert np.all(auc > 0.95)


def test_too_few_rows_to_calibrate_say_what_to_do():
    X = np.arange(12.0).reshape(6, 2)
    clf = EigenProClassifier(n_epochs=1, random_state=0).fit(X, [0, 1] * 3)
    with pytest.raises(NotFittedError, match="probability=True"):
        clf.predict_proba(X)


def test_grid_search_scores_log_loss(digits):
    X, y, _, _ = digits
    search = GridSearchCV(
        EigenProClassifier(n_epochs=2, probability=True, random_state=0),
        {"bandwidth": [2.0, 4.0]},
        scoring="neg_log_loss",
        cv=3,
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all(scores < 0) and np.all(scores > -1.0)
