"""Real data: EigenPro on MNIST subsets against exact kernel ridge regression and
scikit-learn's calibration."""

import numpy as np
from scipy.special import softmax
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import log_loss

from eigenpro import EigenProClassifier


def test_mnist_10k_matches_kernel_ridge(mnist):
    X_train, y_train, X_test, y_test = mnist
    X, y = X_train[:10000], y_train[:10000]
    # Paper setting: Gaussian kernel, bandwidth 5 (gamma = 1 / (2 * 5^2) = 0.02).
    clf = EigenProClassifier(
        kernel="gaussian", bandwidth=5.0, n_epochs=5, random_state=0,
        n_centers=None, alpha=0.0, tol=None, fit_intercept=False,  # KernelRidge's problem
    ).fit(X, y)  # fmt: skip
    eigenpro_error = 100 * (1 - clf.score(X_test, y_test))

    ridge = KernelRidge(kernel="rbf", gamma=0.02, alpha=1e-6).fit(X, np.eye(10)[y])
    ridge_error = 100 * np.mean(ridge.predict(X_test).argmax(axis=1) != y_test)

    assert clf.n_iter_ == 5 and clf.n_components_ > 0
    assert abs(eigenpro_error - ridge_error) <= 0.3, (eigenpro_error, ridge_error)
    assert eigenpro_error < 3.5  # sanity: the paper's kernel reaches ~2.7% error at n = 10000


def test_mnist_probabilities_no_worse_than_calibrated_classifier_cv(mnist):
    """predict_proba (temperature fitted on held-out training rows) against scikit-learn's
    CalibratedClassifierCV (sigmoid, 3 folds) around the same model, on the test set."""
    X_train, y_train, X_test, y_test = mnist
    X, y = X_train[:5000], y_train[:5000]
    params = dict(bandwidth=5.0, n_epochs=3, random_state=0)
    clf = EigenProClassifier(probability=True, **params).fit(X, y)
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X_test))
    calibrated = CalibratedClassifierCV(EigenProClassifier(**params), cv=3).fit(X, y)
    ours = log_loss(y_test, proba)
    theirs = log_loss(y_test, calibrated.predict_proba(X_test))
    raw = log_loss(y_test, softmax(clf.decision_function(X_test), axis=1))  # temperature 1
    assert ours <= theirs, (ours, theirs)
    assert ours < 0.5 * raw, (ours, raw)
