"""Epoch time against the physical floor, and peak memory against the data (MNIST, d = 784).

For each n, in one process: the seconds of one EigenPro epoch (automatic settings, MNIST
training images, Gaussian bandwidth 5; the fastest of at least ``--epochs`` one-epoch fits,
default 3, and of as many as ``--seconds-per-n`` allows: single epochs on a shared 2-core
machine vary by 10-20%), the floor (the fastest of samples taken before, between and after
those fits, so that both minima come from the same minutes and as many tries; the
same-sized float matmul for the full n x n kernel block, its exponentials and the product
with the coefficients; DESIGN.md section 3) and their ratio; the peak resident memory of
the first fit against the size of the training data. Also the same floor computed in row
blocks of the fit's batch size (the GEMM shape an SGD epoch has: every batch streams all the
centers through the caches) and the epoch's ratio to it. Each n is timed once per
``--precisions`` (``ieee``, ``bf16``: :mod:`eigenpro.precision`), the floor in the same
precision and in IEEE float32 beside it.

    python benchmarks/throughput.py                        # n = 10000, 30000, 60000
    python benchmarks/throughput.py --tag before --note "..."  # keep a baseline beside it
"""

from __future__ import annotations

import functools
import itertools
import time

import numpy as np
from _common import (
    PAPER_SETTINGS,
    kernel_floor_seconds,
    load_mnist_scaled,
    machine,
    parser,
    peak_memory,
    plot_path,
    settings,
    versions,
    write_json,
)

from eigenpro import EigenProClassifier
from eigenpro._device import resolve_device, resolve_dtype


def main():
    p = parser(__doc__.splitlines()[0], n_train=[10000, 30000, 60000], epochs=3, multi_n=True)
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. 'before')")
    p.add_argument("--seconds-per-n", type=float, default=45.0,
                   help="after --epochs tries, try again while less time than this was spent "
                   "on one n (more tries where they are cheap)")  # fmt: skip
    p.add_argument("--note", default=None, help="what code was timed, recorded as 'code'")
    p.add_argument("--precisions", nargs="+", default=["ieee", "bf16"], choices=["ieee", "bf16"],
                   help="precisions of the kernel products timed")  # fmt: skip
    args = p.parse_args()
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    X_all, y_all, _, _ = load_mnist_scaled(args.data_dir, max(args.n_train))
    rows = []
    for n, precision in itertools.product(args.n_train, args.precisions):
        X, y = np.ascontiguousarray(X_all[:n]), y_all[:n]
        data_mib = X.nbytes / 2**20
        floor_sample = functools.partial(
            kernel_floor_seconds, n, n, X.shape[1], 10, dtype=dtype, device=device, repeats=1
        )
        own_floor = functools.partial(floor_sample, precision=precision)
        # Floors and epochs interleaved (floor, fit, floor, fit, ..., floor), each fit one
        # epoch: both minima then come from the same minutes of a machine whose speed drifts.
        floors, epochs, batch_floors, ieee_floors = [own_floor()], [], [], [floor_sample()]
        started = time.perf_counter()
        for attempt in itertools.count():
            if attempt >= args.epochs and time.perf_counter() - started > args.seconds_per_n:
                break
            clf = EigenProClassifier(
                kernel="gaussian", bandwidth=5.0, n_epochs=1, device=device,
                dtype=args.dtype, random_state=args.seed, verbose=1,
                **{**PAPER_SETTINGS, "precision": precision},
            )  # fmt: skip
            with peak_memory(device) as measured:
                start = time.perf_counter()
                clf.fit(X, y)
                fit_seconds = time.perf_counter() - start
            if attempt == 0:
                mem, setup = measured, fit_seconds - clf.history_[0]["seconds"]
            epochs.append(clf.history_[0]["seconds"])
            floors.append(own_floor())
            ieee_floors.append(floor_sample())
            batch_floors.append(own_floor(block_rows=clf.batch_size_))
        epoch_seconds, floor, ieee_floor = min(epochs), min(floors), min(ieee_floors)
        row = {
            "n": n,
            "d": X.shape[1],
            "precision": clf.precision_,
            "epoch_seconds": epoch_seconds,
            "floor_seconds": floor,
            "ratio_to_floor": epoch_seconds / floor,
            "ieee_floor_seconds": ieee_floor,
            "ratio_to_ieee_floor": epoch_seconds / ieee_floor,
            "batch_floor_seconds": min(batch_floors),
            "ratio_to_batch_floor": epoch_seconds / min(batch_floors),
            "batch_floor_tries_seconds": batch_floors,
            "setup_seconds": setup,
            "epoch_tries_seconds": epochs,
            "floor_tries_seconds": floors,
            "ieee_floor_tries_seconds": ieee_floors,
            "data_mib": data_mib,
            "peak_rss_mib": mem["peak_mib"],
            "rss_before_fit_mib": mem["start_mib"],
            "peak_over_data_mib": mem["peak_mib"] - data_mib,
            "n_components": clf.n_components_,
            "batch_size": clf.batch_size_,
            "subsample_size": clf.subsample_size_,
        }
        if "gpu_peak_mib" in mem:
            row["gpu_peak_mib"] = mem["gpu_peak_mib"]
        rows.append(row)
        print(
            f"n={n} {precision}: epoch {epoch_seconds:.1f} s, floor {floor:.1f} s, "
            f"ratio {row['ratio_to_floor']:.3f} (to the IEEE floor {ieee_floor:.1f} s: "
            f"{row['ratio_to_ieee_floor']:.3f}; at the batch's rows "
            f"{row['ratio_to_batch_floor']:.3f}); peak RSS {mem['peak_mib']:.0f} MiB "
            f"(data {data_mib:.0f} MiB)"
        )
    name = "throughput" + (f"_{args.tag}" if args.tag else "")
    payload = {
        "study": "throughput",
        "settings": settings(args, kernel="gaussian", bandwidth=5.0),
        "machine": machine(device),
        "versions": versions(),
        "floor": "float matmul (n x d by d x n, in row blocks of 4096) + exp_ + matmul with "
        "the n x 10 coefficients (padded with zero columns to 16, the faster GEMM on the CPU); "
        "sampled in the same process before, between and after the fits",
        "results": rows,
    }
    if args.note:
        payload["code"] = args.note
    write_json(args.out / f"{name}.json", payload)
    plot(rows, plot_path(args.out, name))


def plot(rows, path):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for precision in sorted({r["precision"] for r in rows}):
        mine = [r for r in rows if r["precision"] == precision]
        ns = [r["n"] for r in mine]
        left.plot(ns, [r["epoch_seconds"] for r in mine], "o-", label=f"epoch, {precision}")
        left.plot(ns, [r["floor_seconds"] for r in mine], "s--", label=f"floor, {precision}")
        for r in mine:
            left.annotate(f"{r['ratio_to_floor']:.2f}x", (r["n"], r["epoch_seconds"]))
    left.set(xlabel="n", ylabel="seconds", title="one epoch against the floor")
    left.legend()
    rows = [r for r in rows if r["precision"] == rows[0]["precision"]]
    ns = [r["n"] for r in rows]
    right.plot(ns, [r["peak_rss_mib"] for r in rows], "o-", label="peak RSS of the fit")
    right.plot(ns, [r["data_mib"] for r in rows], "s--", label="training data")
    right.plot(ns, [r["data_mib"] + 2048 for r in rows], ":", label="data + 2 GiB")
    right.set(xlabel="n", ylabel="MiB", title="memory")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
