"""Numerical robustness as a careless user meets it: offsets, scales, slow divergence, memory.

Four parts, each recorded in ``robustness.json`` (issue 9's before/after figures):

* ``offsets``: held-out R^2 of ``EigenProRegressor(bandwidth=2, n_epochs=5)`` (float32) on
  400 x 4 normal features shifted by a common offset (0 ... 1e6), ``y = sin(x0) + 0.1 x1``, for
  every radial kernel; plus the Gaussian self-similarity ``k(x, x)`` at each offset.
* ``real_world``: raw latitude/longitude and a calendar-year column, against the same data
  centred (what a careful user would do by hand).
* ``scales``: features multiplied by 1e-20 ... 1e20 (auto bandwidth), with both paths.
* ``slow_divergence``: the small-subsample settings whose loss grew 1.1-1.9x per epoch,
  under the old 2x detector: training R^2 and what the fit reported.
* ``memory``: peak RSS growth and the chosen q / batch for ``memory_gb`` in
  {0.05, 0.1, 0.5, 2} at n = 20000, d = 100 (a fresh process per budget).

    python benchmarks/robustness.py                 # all parts (a few minutes on 2 cores)
    python benchmarks/robustness.py --tag before    # writes robustness_before.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import numpy as np
from _common import machine, parser, peak_memory, settings, versions, write_json

OFFSETS = [0.0, 1e3, 1e4, 1e5, 1e6]
RADIAL = {"gaussian": {}, "laplacian": {}, "cauchy": {}, "matern": {"nu": 1.5}}
SCALES = [1e-20, 1e-8, 1.0, 1e8, 1e20]
SLOW = [(30, 50, 2), (40, 50, 4), (49, 50, 10)]  # (n_components, subsample_size, n_epochs)
BUDGETS = [0.05, 0.1, 0.5, 2.0]


def _fit(make, X, y, X_test=None, y_test=None) -> dict:
    """Fit, catching warnings and errors; R^2 on the test set (or the training set)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            model = make().fit(X, y)
        except Exception as exc:  # noqa: BLE001 - the benchmark records what the user sees
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "warnings": _names(caught)}
        seconds = time.perf_counter() - start
    X_eval, y_eval = (X, y) if X_test is None else (X_test, y_test)
    pred = model.predict(X_eval)
    return {
        "r2": float(model.score(X_eval, y_eval)) if np.isfinite(pred).all() else None,
        "finite": bool(np.isfinite(pred).all()),
        "seconds": seconds,
        "warnings": _names(caught),
    }


def _names(caught) -> list[str]:
    return [f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught]


def offsets(args) -> dict:
    import torch

    from eigenpro import EigenProRegressor
    from eigenpro.kernels import GaussianKernel

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(500, 4))
    y = np.sin(X[:, 0]) + 0.1 * X[:, 1]
    out = {}
    for name, params in RADIAL.items():
        out[name] = {}
        for offset in OFFSETS:
            Xs = X + offset
            run = _fit(
                lambda name=name, params=params: EigenProRegressor(
                    kernel=name, kernel_params=params or None, bandwidth=2.0, n_epochs=5,
                    random_state=args.seed,
                ),
                Xs[:400], y[:400], Xs[400:], y[400:],
            )  # fmt: skip
            out[name][f"{offset:g}"] = run
            print(f"offset {offset:>7g} {name:>9}: {run.get('r2', run.get('error'))}")
    self_sim = {}
    for offset in OFFSETS:
        Xt = torch.tensor(X[:50] + offset, dtype=torch.float32)
        values = GaussianKernel(2.0)(Xt, Xt).diagonal()
        self_sim[f"{offset:g}"] = [float(values.min()), float(values.max())]
    out["gaussian_self_similarity_min_max"] = self_sim
    return out


def real_world(args) -> dict:
    from eigenpro import EigenProRegressor

    rng = np.random.default_rng(args.seed)
    n = 1200
    lat, lon = rng.uniform(30, 48, n), rng.uniform(-123, -70, n)
    y_geo = np.sin(lat / 3) + np.cos(lon / 5)  # smooth over a few degrees
    year, dose = rng.integers(1950, 2021, n).astype(float), rng.uniform(0, 1, n)
    y_year = np.sin((year - 1950) / 8) + dose
    out = {}
    for name, X, y in [("lat_lon", np.c_[lat, lon], y_geo), ("year", np.c_[year, dose], y_year)]:
        for variant, data in [("raw", X), ("centred", X - X.mean(axis=0))]:
            run = _fit(
                lambda: EigenProRegressor(n_epochs=10, random_state=args.seed),
                data[:1000], y[:1000], data[1000:], y[1000:],
            )  # fmt: skip
            out[f"{name}_{variant}"] = run
            print(f"{name} {variant}: {run.get('r2', run.get('error'))}")
    return out


def scales(args) -> dict:
    from eigenpro import EigenProRegressor

    rng = np.random.default_rng(args.seed)
    X = rng.normal(size=(500, 4))
    y = np.sin(X[:, 0]) + 0.1 * X[:, 1]
    out = {}
    for path, extra in [("eigenpro2", {}), ("n_centers=50", {"n_centers": 50})]:
        out[path] = {}
        for scale in SCALES:
            run = _fit(
                lambda extra=extra: EigenProRegressor(n_epochs=5, random_state=args.seed, **extra),
                X[:400] * scale, y[:400], X[400:] * scale, y[400:],
            )  # fmt: skip
            out[path][f"{scale:g}"] = run
            print(
                f"{path} scale {scale:g}: {run.get('r2', run.get('error'))} {run['warnings'][:1]}"
            )
    return out


def slow_divergence(args) -> dict:
    from eigenpro import EigenProRegressor

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 4))
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
    out = {}
    for q, s, epochs in SLOW:
        run = _fit(
            lambda q=q, s=s, epochs=epochs: EigenProRegressor(
                n_components=q, subsample_size=s, n_epochs=epochs, random_state=0
            ),
            X, y,
        )  # fmt: skip
        out[f"q={q},s={s},epochs={epochs}"] = run
        print(f"q={q} s={s} epochs={epochs}: train R^2 {run.get('r2', run.get('error'))}")
    return out


def _memory_child(budget: float, seed: int) -> dict:
    """One budget in this (fresh) process: peak RSS growth over the data already loaded."""
    from eigenpro import EigenProRegressor

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20000, 100)).astype(np.float32)
    y = np.sin(X[:, 0]) + X[:, 1]
    model = EigenProRegressor(n_epochs=1, memory_gb=budget, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peak_memory() as mem:
            start = time.perf_counter()
            model.fit(X, y)
            seconds = time.perf_counter() - start
    return {
        "memory_gb": budget,
        "peak_growth_mib": mem["peak_mib"] - mem["start_mib"],
        "peak_mib": mem["peak_mib"],
        "start_mib": mem["start_mib"],
        "seconds": seconds,
        "n_components": model.n_components_,
        "subsample_size": model.subsample_size_,
        "batch_size": model.batch_size_,
        "critical_batch_size": model.critical_batch_size_,
        "train_r2": float(model.score(X[:2000], y[:2000])),
        "warnings": _names(caught),
    }


def memory(args) -> list[dict]:
    out = []
    for budget in BUDGETS:
        code = (
            "import json, sys; sys.path.insert(0, 'benchmarks'); import robustness; "
            f"print(json.dumps(robustness._memory_child({budget}, {args.seed})))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        out.append(row)
        print(f"memory_gb={budget}: +{row['peak_growth_mib']:.0f} MiB, q={row['n_components']}, "
              f"batch={row['batch_size']}, {row['seconds']:.1f} s", row["warnings"])  # fmt: skip
    return out


PARTS = {
    "offsets": offsets,
    "real_world": real_world,
    "scales": scales,
    "slow_divergence": slow_divergence,
    "memory": memory,
}


def main():
    p = parser(__doc__.splitlines()[0], n_train=400, epochs=5)
    p.add_argument("--only", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    p.add_argument("--tag", default="", help="suffix of the JSON name, e.g. 'before'")
    args = p.parse_args()
    results = {name: PARTS[name](args) for name in args.only}
    payload = {
        "study": "robustness",
        "settings": settings(args),
        "machine": machine("cpu"),
        "versions": versions(),
        "results": results,
    }
    suffix = f"_{args.tag}" if args.tag else ""
    write_json(args.out / f"robustness{suffix}.json", payload)


if __name__ == "__main__":
    main()
