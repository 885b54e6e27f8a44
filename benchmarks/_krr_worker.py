"""Fit scikit-learn's KernelRidge in a process of its own (no torch loaded).

Called by compare.py and small_data.py as ``python _krr_worker.py data.npz out.json``
(one-dimensional ``Y``: a regression, scored by R^2; else one-hot classes): a crash of the exact
solver's LAPACK ends only this process, and its peak memory is its own. scipy's OpenBLAS
segfaulted in its threaded SkylakeX Cholesky on a 20000 x 20000 solve on the 2-core benchmark
machines; compare.py starts the worker with ``OPENBLAS_CORETYPE=Haswell``, which solves it.
"""

import json
import resource
import sys
import time

import numpy as np
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import r2_score


def main(data_path: str, out_path: str) -> None:
    data = np.load(data_path)
    X, Y, X_test, y_test = data["X"], data["Y"], data["X_test"], data["y_test"]
    gamma, alpha = float(data["gamma"]), float(data["alpha"])
    model = KernelRidge(kernel="rbf", gamma=gamma, alpha=alpha)
    start = time.perf_counter()
    model.fit(X, Y)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    outputs = model.predict(X_test)
    predict_seconds = time.perf_counter() - start
    if Y.ndim == 1:
        score = {"test_r2": float(r2_score(y_test, outputs))}
    else:
        score = {"test_error_pct": 100 * float(np.mean(outputs.argmax(axis=1) != y_test))}
    result = {
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        **score,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "process": "separate (peak RSS of the whole worker, data loading included)",
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
