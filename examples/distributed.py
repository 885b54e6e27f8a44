"""Fit EigenPro 3 with its centers sharded over several processes (torch.distributed).

One machine, two CPU processes (gloo) or two GPUs (NCCL)::

    torchrun --standalone --nproc_per_node=2 examples/distributed.py

Two machines with 4 GPUs each (run on both; HOST0 is the first machine's address)::

    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 examples/distributed.py   # on HOST0
    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=1 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 examples/distributed.py   # on the other

Every rank loads the same data (here a memmap, read batch by batch) and calls ``fit`` with the
same parameters; each holds only its slice of the centers and coefficients. The fitted
estimator on every rank holds the full model and predicts on its own.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from eigenpro import EigenProRegressor
from eigenpro.distributed import init_distributed, shutdown_distributed


def make_data(path: str, n: int, d: int, seed: int = 0) -> None:
    """Write a synthetic regression set to ``path`` (X as a .npy memmap, written in chunks)."""
    rng = np.random.default_rng(seed)
    X = np.lib.format.open_memmap(path + ".X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    y = np.empty(n, dtype=np.float32)
    for lo in range(0, n, 100_000):
        chunk = rng.normal(size=(min(n, lo + 100_000) - lo, d)).astype(np.float32)
        X[lo : lo + len(chunk)] = chunk
        y[lo : lo + len(chunk)] = np.sin(chunk[:, 0]) + 0.5 * chunk[:, 1] * chunk[:, 2]
    X.flush()
    np.save(path + ".y.npy", y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-features", type=int, default=8)
    parser.add_argument("--n-centers", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "eigenpro_dist"))
    args = parser.parse_args()

    device, comm = init_distributed()  # reads RANK, WORLD_SIZE, ... set by torchrun
    if comm.rank == 0 and not os.path.exists(args.data + ".y.npy"):
        make_data(args.data, args.n_train, args.n_features)
    if comm.is_distributed:
        import torch.distributed as dist

        dist.barrier()  # the others wait for rank 0's file
    X = np.load(args.data + ".X.npy", mmap_mode="r")
    y = np.load(args.data + ".y.npy")

    start = time.perf_counter()
    model = EigenProRegressor(
        n_centers=args.n_centers, n_epochs=args.epochs, device=device, random_state=0
    ).fit(X, y)
    seconds = time.perf_counter() - start
    if comm.rank == 0:
        score = model.score(X[:5000], y[:5000])
        print(
            f"{comm.world_size} rank(s), {args.n_centers} centers, n={len(y)}: "
            f"{seconds:.1f} s, train R^2 on 5000 points {score:.4f}"
        )
    shutdown_distributed()


if __name__ == "__main__":
    main()
