"""EigenPro against the solvers a user would pick instead, on MNIST, in one run.

For each n (default 5000, 10000, 20000, 60000 training images; the 10000 test images):

* EigenPro (Gaussian kernel, bandwidth 5, ``--epochs`` epochs, everything else automatic);
* plain kernel SGD (``n_components=0``) at EigenPro's batch size: its test error after the
  same epochs, and the epochs it needs to reach EigenPro's training loss (capped by
  ``--sgd-max-epochs`` x EigenPro's epochs and ``--sgd-max-seconds``);
* exact ``sklearn.kernel_ridge.KernelRidge`` (same kernel, ``alpha=1e-6``) where its n x n
  float64 matrix fits in memory;
* ``Nystroem(n_components=2000 and 5000) + Ridge`` (same kernel, ``alpha=1e-3``);
* Falkon, when ``import falkon`` works (see the README), at M = 10000 and 20000 centers and 10
  conjugate-gradient iterations, its penalty chosen from ``--falkon-penalties`` by the error on
  a held-out tenth of the training set, then refitted on all of it (the seconds reported are
  the refit's; the tuning's are recorded beside them).

Figures per method: fit seconds, predict seconds, test error and peak resident memory. The
training loss compared is the mean squared residual over each epoch's batches (the solver's
running loss) for both iterative methods. Nothing is tuned on the test set.

    python benchmarks/compare.py
    python benchmarks/compare.py --n-train 5000 10000 --epochs 3
    python benchmarks/compare.py --n-train 60000 --only falkon --merge   # add one peer
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _common import (
    PAPER_SETTINGS,
    falkon_fit,
    iterate_until,
    krr_in_worker,
    load_mnist_scaled,
    machine,
    parser,
    peak_memory,
    plot_path,
    settings,
    versions,
    write_json,
)
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

from eigenpro import EigenProClassifier
from eigenpro._device import (
    available_memory_bytes,
    resolve_device,
    resolve_dtype,
    resolve_memory_budget,
)
from eigenpro.kernels import get_kernel

BANDWIDTH = 5.0
GAMMA = 1 / (2 * BANDWIDTH**2)  # scikit-learn's rbf parameterisation of the same kernel
KRR_ALPHA = 1e-6
NYSTROEM_ALPHA = 1e-3
PEERS = ["eigenpro", "kernel_ridge", "nystroem", "falkon"]


def timed_fit(make, X, y, X_test, y_test, device="cpu", fit_kwargs=None):
    """Fit ``make()`` and score it: fit/predict seconds, test error (%), peak memory."""
    model = make()
    with peak_memory(device) as mem:
        start = time.perf_counter()
        model.fit(X, y, **(fit_kwargs or {}))
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pred = model.predict(X_test)
        predict_seconds = time.perf_counter() - start
    if pred.ndim == 2:  # one-hot regressors
        pred = pred.argmax(axis=1)
    return model, {
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "test_error_pct": 100 * float(np.mean(pred != y_test)),
        "peak_rss_mib": mem["peak_mib"],
    }


def eigenpro_and_sgd(X, y, X_test, y_test, args, device):
    """EigenPro through the estimator; then plain SGD at its batch size through the solver,
    stopped at EigenPro's training loss or the caps."""
    model, eigenpro = timed_fit(
        lambda: EigenProClassifier(
            kernel="gaussian", bandwidth=BANDWIDTH, n_epochs=args.epochs, device=device,
            dtype=args.dtype, random_state=args.seed, verbose=1, **PAPER_SETTINGS,
        ),
        X, y, X_test, y_test, device,
    )  # fmt: skip
    eigenpro.update(
        train_loss=[h["train_loss"] for h in model.history_],
        epoch_seconds=[h["seconds"] for h in model.history_],
        batch_size=model.batch_size_,
        n_components=model.n_components_,
        subsample_size=model.subsample_size_,
        step_size=model.step_size_,
        epochs=args.epochs,
    )
    target = eigenpro["train_loss"][-1]

    kernel = get_kernel("gaussian", bandwidth=BANDWIDTH)
    dtype = resolve_dtype(args.dtype)
    Xt = torch.as_tensor(X, dtype=dtype, device=device)
    Yt = torch.as_tensor(np.eye(10)[y] * 1.0, dtype=dtype, device=device)
    Xt_test = torch.as_tensor(X_test, dtype=dtype, device=device)
    with peak_memory(device) as mem:
        sgd = iterate_until(
            kernel, Xt, Yt, n_components=0, batch_size=model.batch_size_,
            budget=resolve_memory_budget("auto", device), seed=args.seed,
            max_epochs=args.sgd_max_epochs * args.epochs, max_seconds=args.sgd_max_seconds,
            target=target, metric="train_loss", X_test=Xt_test, y_test=y_test,
        )  # fmt: skip
    sgd["peak_rss_mib"] = mem["peak_mib"]
    sgd["fit_seconds"] = sgd["seconds"][-1]
    sgd["seconds_per_epoch"] = float(np.mean(np.diff([sgd["setup_seconds"], *sgd["seconds"]])))
    if sgd["epochs_run"] >= args.epochs:
        sgd["test_error_pct_same_epochs"] = sgd["test_error_pct"][args.epochs - 1]
        sgd["fit_seconds_same_epochs"] = sgd["seconds"][args.epochs - 1]
    del Xt, Yt, Xt_test
    return eigenpro, sgd


def kernel_ridge(X, y, X_test, y_test, args):
    n = len(X)
    need = 3 * 8 * n * n  # the float64 kernel matrix, its factor and a temporary
    if need > 0.8 * available_memory_bytes(torch.device("cpu")):
        return {"skipped": f"needs about {need / 2**30:.0f} GiB for its n x n float64 matrices"}
    if n > args.krr_max_n:
        return {"skipped": f"n > --krr-max-n ({args.krr_max_n}): over the time budget"}
    return krr_in_worker(X, np.eye(10)[y], X_test, y_test, gamma=GAMMA, alpha=KRR_ALPHA)


def nystroem_ridge(X, y, X_test, y_test, n_components, args):
    if n_components >= len(X):
        return {"skipped": f"n_components={n_components} >= n"}
    _, out = timed_fit(
        lambda: make_pipeline(
            Nystroem(kernel="rbf", gamma=GAMMA, n_components=n_components,
                     random_state=args.seed),
            Ridge(alpha=NYSTROEM_ALPHA),
        ),
        X, np.eye(10)[y], X_test, y_test,
    )  # fmt: skip
    return out


def falkon_peer(X, y, X_test, y_test, n_centers, args):
    """Falkon at M = ``n_centers``, the penalty tuned on a held-out tenth of the training set."""
    if n_centers >= len(X):
        return {"skipped": f"M={n_centers} >= n"}
    held = np.random.default_rng(args.seed).permutation(len(X))
    cut = len(X) // 10
    val, fit_rows = np.sort(held[:cut]), np.sort(held[cut:])
    Y = np.eye(10, dtype=X.dtype)[y]
    errors, tuning_seconds = {}, 0.0
    for penalty in args.falkon_penalties:
        fitted = falkon_fit(X[fit_rows], Y[fit_rows], n_centers, penalty, args.seed, BANDWIDTH)
        if fitted is None:
            return {"skipped": "falkon is not installed"}
        model, seconds = fitted
        tuning_seconds += seconds
        labels = model.predict(torch.from_numpy(X[val])).argmax(1).numpy()
        errors[penalty] = 100 * float((labels != y[val]).mean())
    penalty = min(errors, key=errors.get)
    with peak_memory("cpu") as mem:
        model, seconds = falkon_fit(X, Y, n_centers, penalty, args.seed, BANDWIDTH)
        start = time.perf_counter()
        labels = model.predict(torch.from_numpy(X_test)).argmax(1).numpy()
        predict_seconds = time.perf_counter() - start
    return {
        "fit_seconds": seconds,
        "predict_seconds": predict_seconds,
        "test_error_pct": 100 * float((labels != y_test).mean()),
        "peak_rss_mib": mem["peak_mib"],
        "penalty": penalty,
        "validation_error_pct": {str(k): v for k, v in errors.items()},
        "tuning_seconds": tuning_seconds,
    }


def main():
    p = parser(__doc__.splitlines()[0], n_train=[5000, 10000, 20000, 60000], epochs=5, multi_n=True)
    p.add_argument("--sgd-max-epochs", type=int, default=10, help="x EigenPro's epochs")
    p.add_argument("--sgd-max-seconds", type=float, default=600.0)
    p.add_argument("--krr-max-n", type=int, default=30000)
    p.add_argument("--nystroem", type=int, nargs="+", default=[2000, 5000])
    p.add_argument("--falkon-centers", type=int, nargs="*", default=[10000, 20000])
    p.add_argument("--falkon-penalties", type=float, nargs="+", default=[1e-8, 1e-6])
    p.add_argument(
        "--only",
        nargs="+",
        choices=PEERS,
        default=PEERS,
        help="the methods to run (others are kept from <out>/compare.json with --merge)",
    )
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of other n (and, with --only, the other methods of the "
                        "same n) already in <out>/compare.json")  # fmt: skip
    args = p.parse_args()
    device = resolve_device(args.device)
    X_all, y_all, X_test, y_test = load_mnist_scaled(args.data_dir, max(args.n_train))
    rows = []
    previous = args.out / "compare.json"
    if args.merge and previous.exists():
        rows = json.loads(previous.read_text())["results"]
    for n in args.n_train:
        X, y = np.ascontiguousarray(X_all[:n]), y_all[:n]
        print(f"=== n = {n}")
        row = next((r for r in rows if r["n"] == n), {"n": n})
        rows = [r for r in rows if r["n"] != n] + [row]
        row.update(run_peers(X, y, X_test, y_test, args, device))
        rows.sort(key=lambda r: r["n"])
        payload = {
            "study": "compare",
            "settings": settings(
                args,
                kernel="gaussian",
                bandwidth=BANDWIDTH,
                gamma=GAMMA,
                krr_alpha=KRR_ALPHA,
                nystroem_ridge_alpha=NYSTROEM_ALPHA,
                n_test=len(X_test),
            ),  # fmt: skip
            "machine": machine(device),
            "versions": versions(),
            "results": rows,
        }
        write_json(args.out / "compare.json", payload)  # after every n: partial runs survive
    plot(rows, plot_path(args.out, "compare"))


def run_peers(X, y, X_test, y_test, args, device) -> dict:
    """The methods of ``--only`` on one training set, keyed as in the JSON rows."""
    out = {}
    if "eigenpro" in args.only:
        eigenpro, sgd = eigenpro_and_sgd(X, y, X_test, y_test, args, device)
        out.update(eigenpro=eigenpro, plain_sgd=sgd)
        print(f"EigenPro: {_fmt(eigenpro)}; plain SGD after {args.epochs} epochs: "
              f"{sgd.get('test_error_pct_same_epochs')}% ; epochs to EigenPro's loss: "
              f"{sgd['epochs_to_target']} (ran {sgd['epochs_run']})")  # fmt: skip
    if "kernel_ridge" in args.only:
        out["kernel_ridge"] = kernel_ridge(X, y, X_test, y_test, args)
        print(f"KernelRidge: {_fmt(out['kernel_ridge'])}")
    for c in args.nystroem if "nystroem" in args.only else []:
        out[f"nystroem_{c}"] = nystroem_ridge(X, y, X_test, y_test, c, args)
        print(f"Nystroem {c} + Ridge: {_fmt(out[f'nystroem_{c}'])}")
    for c in args.falkon_centers if "falkon" in args.only else []:
        out[f"falkon_{c}"] = falkon_peer(X, y, X_test, y_test, c, args)
        print(f"Falkon M = {c}: {_fmt(out[f'falkon_{c}'])}")
    return out


def _fmt(run):
    if "skipped" in run:
        return f"skipped ({run['skipped']})"
    return (
        f"error {run['test_error_pct']:.2f}%, fit {run['fit_seconds']:.1f} s, "
        f"predict {run['predict_seconds']:.1f} s, peak {run['peak_rss_mib']:.0f} MiB"
    )


def plot(rows, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    methods = list(dict.fromkeys(k for r in rows for k in r if k != "n"))
    for method in methods:
        pts = [
            (r[method]["fit_seconds"] if method != "plain_sgd" else r[method].get(
                "fit_seconds_same_epochs"),
             r[method]["test_error_pct"] if method != "plain_sgd" else r[method].get(
                "test_error_pct_same_epochs"), r["n"])
            for r in rows if method in r and "skipped" not in r[method]
        ]  # fmt: skip
        pts = [p for p in pts if p[0] is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method.replace("_", " "))
        for x, e, n in pts:
            ax.annotate(f"{n // 1000}k", (x, e), fontsize=7, textcoords="offset points",
                        xytext=(3, 3))  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="fit seconds (log)", ylabel="test error (%)",
           title="MNIST: test error against fit time (labels: n)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
