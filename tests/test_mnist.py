"""Real data: EigenPro on a 10000-point MNIST subset against exact kernel ridge regression."""

import numpy as np
from sklearn.kernel_ridge import KernelRidge

from eigenpro import EigenProClassifier


def test_mnist_10k_matches_kernel_ridge(mnist):
    X_train, y_train, X_test, y_test = mnist
    X, y = X_train[:10000], y_train[:10000]
    # Paper setting: Gaussian kernel, bandwidth 5 (gamma = 1 / (2 * 5^2) = 0.02).
    clf = EigenProClassifier(kernel="gaussian", bandwidth=5.0, n_epochs=5, random_state=0).fit(X, y)
    eigenpro_error = 100 * (1 - clf.score(X_test, y_test))

    ridge = KernelRidge(kernel="rbf", gamma=0.02, alpha=1e-6).fit(X, np.eye(10)[y])
    ridge_error = 100 * np.mean(ridge.predict(X_test).argmax(axis=1) != y_test)

    assert clf.n_iter_ == 5 and clf.n_components_ > 0
    assert abs(eigenpro_error - ridge_error) <= 0.3, (eigenpro_error, ridge_error)
    assert eigenpro_error < 3.5  # sanity: the paper's kernel reaches ~2.7% error at n = 10000
