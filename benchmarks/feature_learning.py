"""Image benchmarks with and without feature learning: MNIST (and CIFAR-10 with --cifar10).

``EigenProClassifier()`` and ``EigenProRFMClassifier()`` with their defaults (the RFM's
plain model: the Laplacian kernel, diagonal metric, 5 rounds), on the first ``--n-train``
training images, scored on the test images (MNIST: 10000; CIFAR-10: the first 1000, all
this copy has). Issue 26's target: with feature learning no worse than without.

    python benchmarks/feature_learning.py [--n-train 20000] [--cifar10]
"""

from __future__ import annotations

import time

import numpy as np
from _common import load_mnist_scaled, machine, parser, plot_path, settings, versions, write_json

from eigenpro import EigenProClassifier, EigenProRFMClassifier
from eigenpro._device import resolve_device


def _cifar10(data_dir, n):
    from eigenpro.datasets import load_cifar10

    X, y, X_test, y_test = load_cifar10(data_dir)
    X = X[:n].reshape(min(n, len(X)), -1).astype(np.float32) / 255
    X_test = X_test.reshape(len(X_test), -1).astype(np.float32) / 255
    mean, std = X.mean(0), X.std(0) + 1e-6
    return (X - mean) / std, y[:n], (X_test - mean) / std, y_test


def _fit(model, X, y, X_test, y_test) -> dict:
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    wrong = int(np.sum(model.predict(X_test) != y_test))
    out = {"fit_seconds": seconds, "test_errors": wrong,
           "test_error_pct": 100 * wrong / len(y_test)}  # fmt: skip
    if hasattr(model, "rounds_"):
        out["rounds"] = model.rounds_
        out["best_round"] = model.best_round_
    return out


def main():
    p = parser(__doc__.splitlines()[0], n_train=20000, epochs=0)
    p.add_argument("--cifar10", action="store_true", help="CIFAR-10 as well")
    args = p.parse_args()
    sets = {"MNIST": load_mnist_scaled(args.data_dir, args.n_train)}
    if args.cifar10:
        sets["CIFAR-10"] = _cifar10(args.data_dir, args.n_train)
    rows = []
    for name, (X, y, X_test, y_test) in sets.items():
        models = {
            "EigenProClassifier()": EigenProClassifier(random_state=args.seed),
            "EigenProRFMClassifier()": EigenProRFMClassifier(random_state=args.seed),
        }
        row = {"data": name, "n_train": len(X), "n_test": len(X_test), "models": {}}
        for label, model in models.items():
            row["models"][label] = result = _fit(model, X, y, X_test, y_test)
            print(f"{name} n={len(X)} | {label:<24} | {result['test_errors']} test errors "
                  f"({result['test_error_pct']:.2f}%) | {result['fit_seconds']:.1f} s",
                  flush=True)  # fmt: skip
        rows.append(row)
    payload = {"study": "feature_learning", "settings": settings(args), "results": rows,
               "machine": machine(resolve_device(args.device)), "versions": versions()}  # fmt: skip
    write_json(args.out / "feature_learning.json", payload)
    plot(rows, plot_path(args.out, "feature_learning"))


def plot(rows, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(rows[0]["models"])
    for i, label in enumerate(labels):
        xs = np.arange(len(rows)) + (i - 0.5) * 0.35
        ax.bar(xs, [r["models"][label]["test_error_pct"] for r in rows], 0.35, label=label)
    ax.set_xticks(np.arange(len(rows)), [f"{r['data']} ({r['n_train']})" for r in rows])
    ax.set(ylabel="test error (%)", title="with and without feature learning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
