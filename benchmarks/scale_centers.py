"""Large models at scale: seconds per epoch, memory and training loss as the centers grow.

Synthetic regression (d = 32, as ``scale.py``) streamed from a ``numpy.memmap``, n = 1M by
default, p = 16k, 64k, 128k general centers; for each p, the automatic projection (the exact
Cholesky factor does not fit beyond a few ten thousand centers, so "auto" tracks the
projection with inner EigenPro steps) and the delayed projection (EigenPro 4), each for
``--epochs`` epochs with ``memory_gb`` 1.5. Recorded: seconds per epoch (linear in p is the
claim: p = 128k within 10x of p = 16k), peak resident memory against the data + 2 GiB, the
training loss by epoch and R^2 on 20000 training rows, and the memory a dense M x M matrix
(Falkon's preconditioner) would need at each p.

    python benchmarks/scale_centers.py                               # about an hour on 2 cores
    python benchmarks/scale_centers.py --n-train 100000 --n-centers 4000 8000 --out /tmp/sc
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    FIXED_SETTINGS,
    machine,
    parser,
    peak_memory,
    plot_path,
    settings,
    versions,
    write_json,
)
from scale import MEMORY_HEADROOM, make_memmap

from eigenpro import EigenProRegressor
from eigenpro._device import resolve_device

METHODS = {"auto": None, "delayed": {"method": "delayed"}}
MEMORY_GB = 1.5


def main() -> None:
    p = parser(__doc__.splitlines()[0], n_train=1_000_000, epochs=1)
    p.add_argument("--n-centers", type=int, nargs="+", default=[16_000, 64_000, 128_000])
    p.add_argument("--n-features", type=int, default=32)
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    p.add_argument("--workdir", type=Path, default=None, help="folder for the memmap")
    args = p.parse_args()
    args.device = str(resolve_device(args.device))
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        X, y = make_memmap(Path(tmp) / "X.npy", args.n_train, args.n_features, args.seed)
        for n_centers in args.n_centers:
            for method in args.methods:
                results.append(run_one(args, X, y, n_centers, method))
                write_results(args, results)  # partial runs survive
        del X


def run_one(args, X, y, n_centers: int, method: str) -> dict:
    print(f"--- p = {n_centers}, projection {method}")
    model = EigenProRegressor(
        n_centers=n_centers, n_epochs=args.epochs, inner_params=METHODS[method],
        memory_gb=MEMORY_GB, device=args.device, dtype=args.dtype, random_state=args.seed,
        verbose=1, **FIXED_SETTINGS,
    )  # fmt: skip
    with peak_memory(args.device) as memory:
        start = time.perf_counter()
        model.fit(X, y)
        total = time.perf_counter() - start
    probe = np.sort(np.random.default_rng(args.seed).choice(len(X), 20_000, replace=False))
    epochs = [h["seconds"] for h in model.history_]
    record = {
        "n_train": len(X),
        "n_centers": n_centers,
        "method": method,
        "inner_params": model.inner_params_,
        "seconds_per_epoch": float(min(epochs)),
        "all_epoch_seconds": epochs,
        "setup_seconds": total - sum(epochs),
        "train_loss": [h["train_loss"] for h in model.history_],
        "train_r2_20k": float(model.score(X[probe], y[probe])),
        "batch_size": model.batch_size_,
        "n_components": model.n_components_,
        "peak_rss_mib": memory.get("peak_mib"),
        "data_mib": X.nbytes / 2**20,
        "memory_ok": memory.get("peak_mib", np.inf) < (X.nbytes + MEMORY_HEADROOM) / 2**20,
        "dense_p_by_p_gib_float32": 4 * n_centers**2 / 2**30,
    }
    print(json.dumps({k: record[k] for k in ("n_centers", "method", "seconds_per_epoch",
                                             "peak_rss_mib", "train_r2_20k")}))  # fmt: skip
    return record


def write_results(args, results: list[dict]) -> None:
    payload = {
        "study": "scale_centers",
        "settings": settings(args, memory_gb=MEMORY_GB),
        "machine": machine(args.device),
        "versions": versions(),
        "results": results,
    }
    write_json(args.out / "scale_centers.json", payload)
    plot(results, plot_path(args.out, "scale_centers"))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in results}):
        rows = [r for r in results if r["method"] == method]
        ps = [r["n_centers"] for r in rows]
        left.plot(ps, [r["seconds_per_epoch"] for r in rows], "o-", label=method)
        right.plot(ps, [r["peak_rss_mib"] for r in rows], "o-", label=method)
    if results:
        ps = sorted({r["n_centers"] for r in results})
        right.plot(ps, [results[0]["data_mib"] + 2048] * len(ps), ":", label="data + 2 GiB")
    left.set(xlabel="centers p", ylabel="seconds per epoch", title="one epoch, n = 1M")
    right.set(xlabel="centers p", ylabel="peak RSS (MiB)", title="memory")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
