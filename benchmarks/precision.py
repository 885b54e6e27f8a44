"""Default fits in IEEE float32 against the default precision (MNIST, Gaussian bandwidth 5).

For each n, in one process and interleaved (``--repeats`` rounds of ieee, auto, bf16), a
``EigenProClassifier(bandwidth=5, n_epochs=--epochs)`` with every other setting at its
default, its products in IEEE float32 (``precision="ieee"``), as ``"auto"`` chooses
(:mod:`eigenpro.precision`), and in bf16 operands: fit seconds, test errors (images of the
10000 test images) and what ``"auto"`` measured. Issue 25's target: at 60000 the default fit
at most 0.6x the IEEE fit, test error within 2 images of it.

    python benchmarks/precision.py [--n-train 20000 60000] [--epochs 5]
"""

from __future__ import annotations

import time

import numpy as np
from _common import load_mnist_scaled, machine, parser, plot_path, settings, versions, write_json

from eigenpro import EigenProClassifier
from eigenpro._device import resolve_device

PRECISIONS = ("ieee", "auto", "bf16")


def _fit(X, y, X_test, y_test, precision: str, args) -> dict:
    clf = EigenProClassifier(bandwidth=5.0, n_epochs=args.epochs, precision=precision,
                             device=args.device, random_state=args.seed)  # fmt: skip
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    wrong = int(np.sum(clf.predict(X_test) != y_test))
    return {
        "asked": precision, "precision": clf.precision_, "fit_seconds": seconds,
        "test_errors": wrong, "test_error_pct": 100 * wrong / len(y_test),
        "n_epochs": int(clf.n_iter_), "n_centers": int(clf.n_centers_),
        "epoch_seconds": float(sum(r["seconds"] for r in clf.history_)),
        "precision_check": clf.precision_check_,
    }  # fmt: skip


def main():
    p = parser(__doc__.splitlines()[0], n_train=[20000, 60000], epochs=5, multi_n=True)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    X_all, y_all, X_test, y_test = load_mnist_scaled(args.data_dir, max(args.n_train))
    rows = []
    for n in args.n_train:
        X, y = np.ascontiguousarray(X_all[:n]), y_all[:n]
        fits = {name: [] for name in PRECISIONS}
        for _ in range(args.repeats):
            for name in PRECISIONS:
                fits[name].append(_fit(X, y, X_test, y_test, name, args))
                f = fits[name][-1]
                print(f"n={n} {name:>4} -> {f['precision']}: fit {f['fit_seconds']:.1f} s, "
                      f"{f['test_errors']} test errors ({f['n_epochs']} epochs, "
                      f"{f['n_centers']} centers)", flush=True)  # fmt: skip
        best = {k: min(v, key=lambda f: f["fit_seconds"]) for k, v in fits.items()}
        rows.append({
            "n": n, "fits": fits, "best": best,
            "auto_over_ieee": best["auto"]["fit_seconds"] / best["ieee"]["fit_seconds"],
            "bf16_over_ieee": best["bf16"]["fit_seconds"] / best["ieee"]["fit_seconds"],
            "auto_minus_ieee_errors": best["auto"]["test_errors"] - best["ieee"]["test_errors"],
        })  # fmt: skip
        print(f"n={n}: auto / ieee {rows[-1]['auto_over_ieee']:.2f}, bf16 / ieee "
              f"{rows[-1]['bf16_over_ieee']:.2f}", flush=True)  # fmt: skip
    payload = {"study": "precision", "settings": settings(args, precisions=PRECISIONS),
               "machine": machine(resolve_device(args.device)), "versions": versions(),
               "results": rows}  # fmt: skip
    write_json(args.out / "precision.json", payload)
    plot(rows, plot_path(args.out, "precision"))


def plot(rows, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.25
    for i, name in enumerate(PRECISIONS):
        xs = np.arange(len(rows)) + (i - 1) * width
        seconds = [r["best"][name]["fit_seconds"] for r in rows]
        ax.bar(xs, seconds, width, label=name)
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(f"{r['best'][name]['test_errors']}", (x, r["best"][name]["fit_seconds"]),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(np.arange(len(rows)), [str(r["n"]) for r in rows])
    ax.set(xlabel="training images", ylabel="fit seconds",
           title="MNIST default fits by precision (labels: test errors)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
