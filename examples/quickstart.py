"""Quickstart: regression and classification with EigenPro in a few lines.

python examples/quickstart.py
"""

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import train_test_split

from eigenpro import EigenProClassifier, EigenProRegressor

# --- Regression: a smooth function of 5 variables, 4000 noisy training samples.
rng = np.random.default_rng(0)
X = rng.uniform(-1, 1, size=(5000, 5))
y = np.sin(3 * X[:, 0]) * X[:, 1] + np.cos(2 * X[:, 2]) + 0.05 * rng.normal(size=len(X))
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=1000, random_state=0)

start = time.perf_counter()
reg = EigenProRegressor(kernel="gaussian", bandwidth=1.0, n_epochs=10, random_state=0)
reg.fit(X_train, y_train)
seconds = time.perf_counter() - start
print(f"EigenProRegressor  R^2 = {reg.score(X_test, y_test):.4f}  ({seconds:.1f} s)")
print(f"  chose q={reg.n_components_}, batch={reg.batch_size_}, step={reg.step_size_:.3g}")
losses = ", ".join(f"{h['train_loss']:.2g}" for h in reg.history_)
print(f"  training loss per epoch: {losses}")

# The exact O(n^3) solver with the same kernel (gamma = 1 / (2 bandwidth^2)), for comparison.
start = time.perf_counter()
exact = KernelRidge(kernel="rbf", gamma=0.5, alpha=1e-3).fit(X_train, y_train)
seconds = time.perf_counter() - start
print(f"KernelRidge        R^2 = {exact.score(X_test, y_test):.4f}  ({seconds:.1f} s)")

# --- Classification: 8x8 digits, labels of any type.
X, y = load_digits(return_X_y=True)
names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
X_train, X_test, y_train, y_test = train_test_split(X / 16, names[y], random_state=0)
clf = EigenProClassifier(n_epochs=5, random_state=0).fit(X_train, y_train)
print(f"EigenProClassifier accuracy = {clf.score(X_test, y_test):.4f}")
print(f"  predictions: {clf.predict(X_test[:5])}")
