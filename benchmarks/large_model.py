"""Large models on MNIST: p general centers, each projection against the exact fit on them.

60000 training / 10000 test images, Gaussian bandwidth 5 (the paper's), ``n_centers = p``
drawn from the training set with the seed; everything else automatic except the projection
(``inner_params``: ``delayed`` is the automatic choice, one SGD epoch and then
conjugate-gradient epochs; ``delayed-sgd`` the same projection with SGD throughout, as before
the conjugate-gradient finish). Per projection and epoch: test error, training loss and
seconds. The reference is the least-squares fit on the same centers, solved directly in
float64 (``(K_ZX K_XZ + lambda n K_ZZ) c = K_ZX Y`` with ``lambda = 1e-8``, Falkon's
penalty, for a well-posed system; Falkon itself when ``import falkon`` works, M = p and 10
conjugate-gradient iterations). The test set is only monitored, never used to choose.

    python benchmarks/large_model.py                          # p = 10000 and 20000
    python benchmarks/large_model.py --centers 2000 --n-train 20000 --no-reference
    python benchmarks/large_model.py --centers 20000 --merge  # add p to the JSON
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import torch
from _common import (
    FIXED_SETTINGS,
    falkon_fit,
    load_mnist_scaled,
    machine,
    parser,
    plot_path,
    settings,
    versions,
    write_json,
)

from eigenpro import EigenProClassifier
from eigenpro._device import resolve_device
from eigenpro.kernels import get_kernel

BANDWIDTH = 5.0
PENALTY = 1e-8
#: The runs compared: name -> ``inner_params``.
METHODS = {
    "delayed": {"method": "delayed"},
    "delayed-sgd": {"method": "delayed", "sgd_epochs": 10**6},
    "cholesky": {"method": "cholesky"},
    "eigenpro": {"method": "eigenpro"},
}
#: Rows of K(X, Z) accumulated at once by the direct solve.
REFERENCE_ROWS = 2000


def main():
    p = parser(__doc__.splitlines()[0], n_train=60000, epochs=5)
    p.add_argument("--centers", type=int, nargs="+", default=[10000, 20000])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--no-reference", action="store_true", help="skip the direct solve")
    p.add_argument("--no-direct", action="store_true", help="skip the direct solve only")
    p.add_argument("--merge", action="store_true", help="keep the JSON's other runs")
    args = p.parse_args()
    device = resolve_device(args.device)
    X_train, y_train, X_test, y_test = load_mnist_scaled(args.data_dir, args.n_train)
    print(f"MNIST: {len(X_train)} training, {len(X_test)} test images; device {device}")
    results = {}
    for n_centers in args.centers:
        runs = {}
        for method in args.methods:
            runs[method] = run_method(method, n_centers, args, device, X_train, y_train,
                                      X_test, y_test)  # fmt: skip
        centers = runs[args.methods[0]].pop("centers")
        for run in runs.values():
            run.pop("centers", None)
        if not args.no_reference:
            if not args.no_direct:
                runs["direct (float64)"] = reference(X_train, y_train, X_test, y_test, centers)
            falkon = run_falkon(X_train, y_train, X_test, y_test, n_centers, args.seed)
            if falkon is not None:
                runs["falkon"] = falkon
        results[str(n_centers)] = runs
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    path = args.out / f"large_model{suffix}.json"
    run_settings = settings(args, kernel="gaussian", bandwidth=BANDWIDTH, penalty=PENALTY)
    payload = {"study": "large_model", "settings": run_settings, "machine": machine(device),
               "versions": versions(), "results": {}, "settings_by_run": {}}  # fmt: skip
    if args.merge and path.exists():  # earlier runs of this study, e.g. other p
        payload = {**payload, **{k: v for k, v in json.loads(path.read_text()).items()
                                 if k in ("results", "settings_by_run")}}  # fmt: skip
    for p_key, runs in results.items():
        payload["results"].setdefault(p_key, {}).update(runs)
        for name in runs:
            payload["settings_by_run"][f"{p_key} {name}"] = run_settings
    write_json(path, payload)
    plot(results, plot_path(args.out, f"large_model{suffix}"))


def run_method(method, n_centers, args, device, X_train, y_train, X_test, y_test) -> dict:
    """Fit with one projection; test error after every epoch (untimed, from ``eval_set``)."""
    print(f"--- p = {n_centers}, projection {method}")
    clf = EigenProClassifier(
        kernel="gaussian", bandwidth=BANDWIDTH, n_epochs=args.epochs, n_centers=n_centers,
        inner_params=METHODS[method], device=device, dtype=args.dtype,
        random_state=args.seed, verbose=1, memory_gb=16, **FIXED_SETTINGS,
    )  # fmt: skip
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X_train, y_train, eval_set=[(X_test, y_test)])
    wall = time.perf_counter() - start
    history = clf.history_
    errors = [100 * (1 - h["eval_scores"][0]) for h in history]
    eval_seconds = sum(h.get("eval_seconds", 0.0) for h in history)
    epoch_seconds = [h["seconds"] for h in history]
    run = {
        "test_error_pct": errors,
        "train_loss": [h["train_loss"] for h in history],
        "inner_loss": [h.get("inner_loss") for h in history],
        "epoch_seconds": epoch_seconds,
        "setup_seconds": wall - eval_seconds - sum(epoch_seconds),
        "fit_seconds": wall - eval_seconds,
        "step_size": [h["step_size"] for h in history],
        "chosen": {
            "batch_size": clf.batch_size_,
            "n_components": clf.n_components_,
            "subsample_size": clf.subsample_size_,
            "inner_params": clf.inner_params_,
        },
        "warnings": sorted({str(w.message)[:200] for w in caught}),
        "centers": clf.centers_,
    }
    print(f"{method}: test error by epoch {', '.join(f'{e:.2f}' for e in errors)} %; "
          f"fit {run['fit_seconds']:.0f} s (set-up {run['setup_seconds']:.0f} s)")  # fmt: skip
    return run


def reference(X_train, y_train, X_test, y_test, centers) -> dict:
    """The least-squares fit on ``centers`` by a direct float64 solve."""
    print(f"--- direct float64 solve on {len(centers)} centers")
    start = time.perf_counter()
    kernel = get_kernel("gaussian", bandwidth=BANDWIDTH)
    Z = torch.from_numpy(np.asarray(centers, dtype=np.float64))
    Y = torch.nn.functional.one_hot(torch.from_numpy(y_train.astype(np.int64)), 10).double()
    gram = torch.zeros(len(Z), len(Z), dtype=torch.float64)
    rhs = torch.zeros(len(Z), 10, dtype=torch.float64)
    for lo in range(0, len(X_train), REFERENCE_ROWS):
        block = kernel(torch.from_numpy(X_train[lo : lo + REFERENCE_ROWS]).double(), Z)
        gram.addmm_(block.T, block)
        rhs.addmm_(block.T, Y[lo : lo + REFERENCE_ROWS])
    gram.add_(kernel(Z, Z), alpha=PENALTY * len(X_train))
    coef = torch.linalg.solve(gram, rhs)
    seconds = time.perf_counter() - start
    scores = kernel(torch.from_numpy(X_test).double(), Z) @ coef
    error = 100 * float((scores.argmax(1).numpy() != y_test).mean())
    train_scores = torch.cat([
        kernel(torch.from_numpy(X_train[lo : lo + REFERENCE_ROWS]).double(), Z) @ coef
        for lo in range(0, len(X_train), REFERENCE_ROWS)
    ])  # fmt: skip
    train_mse = float((train_scores - Y).pow(2).mean())
    print(f"direct: test error {error:.2f} %, training MSE {train_mse:.5f}, {seconds:.0f} s")
    return {"test_error_pct": [error], "train_mse": train_mse, "fit_seconds": seconds}


def run_falkon(X_train, y_train, X_test, y_test, n_centers, seed) -> dict | None:
    """Falkon at M = p, penalty 1e-8 and 10 iterations, when it is installed (None otherwise)."""
    Y = np.eye(10, dtype=X_train.dtype)[y_train]
    fitted = falkon_fit(X_train, Y, n_centers, PENALTY, seed, BANDWIDTH)
    if fitted is None:
        print("falkon is not installed: skipped (see the README to install it)")
        return None
    model, seconds = fitted
    labels = model.predict(torch.from_numpy(X_test)).argmax(1).numpy()
    error = 100 * float((labels != y_test).mean())
    print(f"falkon: test error {error:.2f} %, {seconds:.0f} s")
    return {"test_error_pct": [error], "fit_seconds": seconds}


def plot(results, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (p, runs) in zip(axes[0], results.items(), strict=True):
        for name, run in runs.items():
            if "epoch_seconds" in run:
                times = np.cumsum(run["epoch_seconds"]) + run["setup_seconds"]
                ax.plot(times, run["test_error_pct"], "o-", label=name)
            else:
                ax.axhline(run["test_error_pct"][0], ls="--", color="gray",
                           label=f"{name} ({run['fit_seconds']:.0f} s)")  # fmt: skip
        ax.set(xlabel="seconds", ylabel="test error (%)", title=f"MNIST, p = {p} centers")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
