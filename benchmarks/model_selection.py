"""Parallel model selection: GridSearchCV with n_jobs=1 against n_jobs=2 worker processes.

Each worker process starts torch, which by itself would use every core: two workers on two
cores would then run four busy threads (oversubscription). joblib's loky backend (what
GridSearchCV uses) limits the threads of the native pools in its workers to
``cpu_count // n_jobs`` (``OMP_NUM_THREADS`` and threadpoolctl, read by torch at start-up).
This study measures the same grid four ways, in one process, on the same data and seed:

1. ``n_jobs=1``: one fit at a time, torch with all cores;
2. ``n_jobs=2``: scikit-learn's default (loky), threads as joblib limits them;
3. ``n_jobs=2`` oversubscribed on purpose: ``parallel_config(inner_max_num_threads=cores)``
   lets every worker use every core;
4. ``cross_val_score`` at ``n_jobs=2`` on the best candidate, and a ``joblib.dump``/``load``
   round trip of the refitted search (predictions compared).

It records the torch threads each fit saw (a scorer that reads ``torch.get_num_threads()``
inside the worker), the seconds, and the machine.

    python benchmarks/model_selection.py                 # MNIST 6000 (digits when absent)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from _common import machine, parser, versions, write_json
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from eigenpro import EigenProClassifier
from eigenpro.datasets import dataset_available, load_mnist

GRID = {"bandwidth": [2.5, 5.0, 10.0], "alpha": [0.0, 1e-3]}


def torch_threads(estimator, X, y) -> float:
    """A scorer that reports the torch threads of the process that scored the fit."""
    return float(torch.get_num_threads())


def load(args):
    if dataset_available("mnist", args.data_dir):
        X, y, _, _ = load_mnist(args.data_dir)
        return "MNIST", X[: args.n_train] / 255.0, y[: args.n_train], GRID
    X, y = load_digits(return_X_y=True)
    grid = {"bandwidth": [1.0, 2.0, 4.0], "alpha": [0.0, 1e-3]}
    return "digits (MNIST not found)", X / 16.0, y, grid


def search(X, y, grid, n_jobs, epochs, seed, inner_threads=None):
    """One GridSearchCV; returns its figures and the fitted search."""
    model = EigenProClassifier(n_epochs=epochs, tol=None, random_state=seed, device="cpu")
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    gs = GridSearchCV(
        model, grid, cv=cv, n_jobs=n_jobs, refit="accuracy",
        scoring={"accuracy": "accuracy", "threads": torch_threads},
    )  # fmt: skip
    start = time.perf_counter()
    if inner_threads is None:
        gs.fit(X, y)
    else:
        with joblib.parallel_config(backend="loky", inner_max_num_threads=inner_threads):
            gs.fit(X, y)
    seconds = time.perf_counter() - start
    threads = gs.cv_results_["mean_test_threads"]
    return {
        "n_jobs": n_jobs,
        "inner_max_num_threads": inner_threads,
        "seconds": seconds,
        "fits": len(gs.cv_results_["params"]) * cv.get_n_splits() + 1,
        "torch_threads_per_fit": sorted({float(t) for t in threads}),
        "best_params": gs.best_params_,
        "best_cv_accuracy": float(gs.best_score_),
    }, gs


def main():
    p = parser(__doc__.splitlines()[0], n_train=6000, epochs=3)
    args = p.parse_args()
    name, X, y, grid = load(args)
    cores = os.cpu_count()
    runs = []
    for n_jobs, inner in [(1, None), (2, None), (2, cores)]:
        figures, gs = search(X, y, grid, n_jobs, args.epochs, args.seed, inner)
        runs.append(figures)
        print(
            f"n_jobs={n_jobs} inner threads={inner or 'joblib default'}: "
            f"{figures['seconds']:.1f} s, torch threads per fit {figures['torch_threads_per_fit']}"
        )
        if n_jobs == 1:
            best = gs
    start = time.perf_counter()
    scores = cross_val_score(best.best_estimator_, X, y, cv=3, n_jobs=2)
    cv_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "search.joblib"
        joblib.dump(best, path)
        restored = joblib.load(path)
        same = bool(np.array_equal(restored.predict(X[:1000]), best.predict(X[:1000])))
    out = {
        "study": "model_selection",
        "data": name,
        "settings": {
            "n_train": len(X),
            "epochs": args.epochs,
            "seed": args.seed,
            "grid": grid,
            "cv": 3,
        },  # fmt: skip
        "runs": runs,
        "cross_val_score": {"n_jobs": 2, "seconds": cv_seconds, "scores": scores.tolist()},
        "joblib_round_trip_identical_predictions": same,
        "machine": machine("cpu"),
        "versions": versions(),
    }
    print(f"cross_val_score(n_jobs=2): {cv_seconds:.1f} s; joblib round trip identical: {same}")
    write_json(args.out / "model_selection.json", out)


if __name__ == "__main__":
    main()
