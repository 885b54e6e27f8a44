"""`make demo`: train EigenProClassifier on a real data set and print accuracy and time.

Uses MNIST from ``--data-dir``, ``$EIGENPRO_DATA``, ``../shared/datasets`` or
``~/.cache/eigenpro`` (in that order), and falls back to scikit-learn's bundled 8x8 digits
when no copy of MNIST is found. Nothing is downloaded unless ``--download`` is given.

    python examples/demo.py                      # 20000 MNIST training images, 5 epochs
    python examples/demo.py --n-train 60000      # full training set (~1 min/epoch, 2 cores)
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from eigenpro import EigenProClassifier
from eigenpro.datasets import dataset_available, load_mnist


def load_data(args):
    if args.download or dataset_available("mnist", args.data_dir):
        X_train, y_train, X_test, y_test = load_mnist(args.data_dir, download=args.download)
        n = min(args.n_train, len(X_train))
        name = f"MNIST ({n} of {len(X_train)} training images, {len(X_test)} test images)"
        return name, X_train[:n] / 255.0, y_train[:n], X_test / 255.0, y_test, 5.0
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
    name = (
        "scikit-learn digits, 8x8 images (MNIST not found: `python examples/demo.py "
        "--download` fetches it, about 11 MB, or point EIGENPRO_DATA / --data-dir at a copy)"
    )
    return name, X_train, y_train, X_test, y_test, "auto"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST files")
    parser.add_argument("--n-train", type=int, default=20000, help="MNIST training images used")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--download", action="store_true", help="download MNIST if missing")
    args = parser.parse_args()

    name, X_train, y_train, X_test, y_test, bandwidth = load_data(args)
    print(f"data set: {name}")
    clf = EigenProClassifier(
        kernel="gaussian",
        bandwidth=bandwidth,
        n_epochs=args.epochs,
        n_centers=None,  # every training image a center (EigenPro 2), as in the paper
        device=args.device,
        random_state=0,
        verbose=1,
    )
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = clf.score(X_test, y_test)
    predict_seconds = time.perf_counter() - start

    print(
        f"EigenPro chose: device={clf.device_}, q={clf.n_components_}, "
        f"subsample={clf.subsample_size_}, batch={clf.batch_size_}, step={clf.step_size_:.4g}, "
        f"bandwidth={clf.bandwidth_:.3g}"
    )
    print(f"test accuracy: {100 * accuracy:.2f}%  (error {100 * (1 - accuracy):.2f}%)")
    print(f"fit: {fit_seconds:.1f} s for {clf.n_iter_} epochs   predict: {predict_seconds:.1f} s")
    return 0 if np.isfinite(accuracy) else 1


if __name__ == "__main__":
    raise SystemExit(main())
