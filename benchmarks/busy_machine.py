"""Default fits beside other work: every thread pool at the fit's count (eigenpro.threads).

For each workload, on a quiet machine and with 1 and then ``cores`` busy processes beside it
(each a Python loop), the best of ``--repeats`` interleaved runs of:

- ``default``: the estimator as a user gets it (``n_threads="auto"``);
- ``all threads``: ``n_threads`` = torch's thread count, load not looked at (the pools are
  still scoped to that count);
- ``one thread``: every pool at one thread (torch and threadpoolctl around the call, and
  ``n_threads=1``): the reference of issue 25's target.

Workloads: the digits classifier of the README's Quickstart, its diabetes regressor under
5-fold ``cross_val_score``, and a 3 x 2 ``GridSearchCV`` (19 fits) of the digits classifier.
The grid's ``all threads`` runs are left out with every core busy (minutes each; recorded as
null).

    python benchmarks/busy_machine.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS_DIR, machine, versions, write_json
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from eigenpro import EigenProClassifier, EigenProRegressor

GRID = {"bandwidth": [1.5, 3.0, 6.0], "alpha": [1e-3, 1e-1]}


def _workloads():
    Xd, yd = load_digits(return_X_y=True)
    Xd = Xd / 16
    Xr, yr = load_diabetes(return_X_y=True)

    def digits(n_threads):
        EigenProClassifier(random_state=0, n_threads=n_threads).fit(Xd, yd)

    def diabetes_cv(n_threads):
        model = make_pipeline(StandardScaler(), EigenProRegressor(random_state=0,
                                                                  n_threads=n_threads))  # fmt: skip
        cross_val_score(model, Xr, yr, cv=5)

    def digits_grid(n_threads):
        GridSearchCV(EigenProClassifier(random_state=0, n_threads=n_threads), GRID,
                     cv=3).fit(Xd, yd)  # fmt: skip

    return {"digits classifier": digits, "diabetes 5-fold CV": diabetes_cv,
            "digits 3x2 grid (19 fits)": digits_grid}  # fmt: skip


def _timed(work, mode: str) -> float:
    start = time.perf_counter()
    if mode == "one thread":
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1):
                work(1)
        finally:
            torch.set_num_threads(before)
    else:
        work("auto" if mode == "default" else torch.get_num_threads())
    return time.perf_counter() - start


def _busy(count: int) -> list:
    loop = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]


def main():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR / "busy_machine.json"))
    args = parser.parse_args()
    cores = torch.get_num_threads()
    modes = ["default", "all threads", "one thread"]
    results = []
    for load in sorted({0, 1, cores}):
        procs = _busy(load)
        try:
            time.sleep(0.5)
            for name, work in _workloads().items():
                work("auto")  # warm-up: imports, allocator
                seconds = {m: [] for m in modes}
                skipped = {"all threads"} if load >= cores and "grid" in name else set()
                for _ in range(args.repeats):  # interleaved, so drifts hit every mode alike
                    for mode in modes:
                        if mode not in skipped:
                            seconds[mode].append(_timed(work, mode))
                best = {m: (min(v) if v else None) for m, v in seconds.items()}
                row = {
                    "workload": name, "busy_processes": load, "best_seconds": best,
                    "all_seconds": seconds,
                    "default_over_one_thread": best["default"] / best["one thread"],
                }  # fmt: skip
                results.append(row)
                print(
                    f"busy {load} | {name:<26} | "
                    + " | ".join(f"{m} {best[m]:6.2f} s" for m in modes if best[m] is not None)
                    + f" | default / one thread {row['default_over_one_thread']:.2f}",
                    flush=True,
                )
        finally:
            for p in procs:
                p.kill()
                p.wait()
    payload = {
        "study": "busy_machine", "results": results,
        "settings": {"repeats": args.repeats, "grid": GRID, "modes": modes,
                     "torch_threads": cores, "float": "float32"},
        "machine": machine(), "versions": versions(),
    }  # fmt: skip
    print("wrote", write_json(Path(args.out), payload))


if __name__ == "__main__":
    main()
