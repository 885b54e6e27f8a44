"""The paper's central picture on MNIST: spectrum decay, its flattening, and what it buys.

Three panels in one PNG (``spectrum.png``):

1. the top eigenvalues of the Gaussian kernel operator (bandwidth 5): an exact float64
   eigendecomposition of ``K / 5000`` on a 5000-point subsample, against the library's
   Nystrom estimates from a 2000-point subsample (exact and randomized solvers);
2. the spectrum after preconditioning: the eigenvalues of the preconditioned kernel
   ``k_P(x, z) = k(x, z) - sum_{i<=q} (1 - lambda_{q+1}/lambda_i) e_i(x) e_i(z)`` on the same
   5000 points, with the preconditioner EigenPro builds (Nystrom on 2000 of them);
3. training MSE per epoch on ``--n-train`` MNIST images: EigenPro against plain kernel SGD
   at the same batch size.

    python benchmarks/spectrum.py
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from _common import (
    iterate_until,
    load_mnist_scaled,
    machine,
    parser,
    plot_path,
    settings,
    versions,
    write_json,
)

from eigenpro._device import resolve_device, resolve_dtype, resolve_memory_budget
from eigenpro.eigensystem import nystrom_eigensystem
from eigenpro.kernels import get_kernel
from eigenpro.preconditioner import build_preconditioner

BANDWIDTH = 5.0
EXACT_SIZE = 5000
NYSTROM_SIZE = 2000
TOP = 600


def main():
    p = parser(__doc__.splitlines()[0], n_train=10000, epochs=10)
    args = p.parse_args()
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    X_train, y_train, _, _ = load_mnist_scaled(args.data_dir)
    kernel = get_kernel("gaussian", bandwidth=BANDWIDTH)
    rng = np.random.default_rng(args.seed)

    # 1. Exact spectrum of K / 5000 against the Nystrom estimates from 2000 of the points.
    idx = rng.choice(len(X_train), EXACT_SIZE, replace=False)
    X5 = torch.as_tensor(X_train[idx], dtype=torch.float64)
    K = kernel(X5, X5)
    exact = scipy.linalg.eigh(K.numpy() / EXACT_SIZE, eigvals_only=True, driver="evd")[::-1]
    sub = X5[:NYSTROM_SIZE]  # idx is already a random draw
    nystrom = {
        method: nystrom_eigensystem(
            kernel, sub, TOP, method=method, seed=args.seed
        ).eigenvalues.numpy()
        for method in ("exact", "randomized")
    }
    rel = {
        m: float(np.max(np.abs(v[:100] - exact[:100]) / exact[:100])) for m, v in nystrom.items()
    }
    print(f"Nystrom vs exact, top 100 eigenvalues, max relative difference: {rel}")

    # 2. Spectrum of the preconditioned kernel on the same 5000 points.
    precond = build_preconditioner(
        kernel, X5, subsample_size=NYSTROM_SIZE, max_batch_size=4096,
        rng=np.random.default_rng(args.seed), dtype=torch.float64,
    )  # fmt: skip
    q = precond.n_components
    lam = precond.eigenvalues
    X_sub = X5[precond.subsample_indices]
    U = precond.eigenvectors * math.sqrt(NYSTROM_SIZE)  # unit eigenvectors of K_S / s
    E = kernel(X5, X_sub) @ U / torch.sqrt(NYSTROM_SIZE * lam[:q])  # e_i(x), (5000, q)
    shrink = 1 - lam[q] / lam[:q]
    K_P = K - (E * shrink) @ E.T
    preconditioned = scipy.linalg.eigh(K_P.numpy() / EXACT_SIZE, eigvals_only=True)[::-1]
    print(
        f"q = {q}: lambda_1 = {exact[0]:.3g}, lambda_(q+1) = {exact[q]:.3g}; preconditioned "
        f"top eigenvalue {preconditioned[0]:.3g} (ratio {exact[0] / preconditioned[0]:.0f}x)"
    )

    # 3. Training MSE per epoch, EigenPro against plain SGD at the same batch size.
    n = min(args.n_train, len(X_train))
    Xt = torch.as_tensor(X_train[:n], dtype=dtype, device=device)
    Yt = torch.as_tensor(np.eye(10)[y_train[:n]], dtype=dtype, device=device)
    common = dict(budget=resolve_memory_budget("auto", device), seed=args.seed,
                  max_epochs=args.epochs, max_seconds=float("inf"), metric="train_mse")  # fmt: skip
    eigenpro = iterate_until(kernel, Xt, Yt, n_components="auto", batch_size="auto", **common)
    sgd = iterate_until(kernel, Xt, Yt, n_components=0, batch_size=eigenpro["batch_size"], **common)

    payload = {
        "study": "spectrum",
        "settings": settings(
            args, bandwidth=BANDWIDTH, exact_size=EXACT_SIZE, nystrom_size=NYSTROM_SIZE
        ),  # fmt: skip
        "machine": machine(device),
        "versions": versions(),
        "results": {
            "exact_eigenvalues": exact[:TOP].tolist(),
            "nystrom_eigenvalues": {m: v.tolist() for m, v in nystrom.items()},
            "nystrom_max_rel_diff_top100": rel,
            "n_components": q,
            "preconditioned_eigenvalues": preconditioned[:TOP].tolist(),
            "acceleration": float(exact[0] / preconditioned[0]),
            "training": {"n": n, "eigenpro": eigenpro, "plain_sgd": sgd},
        },
    }
    write_json(args.out / "spectrum.json", payload)
    plot(payload["results"], plot_path(args.out, "spectrum"))


def plot(res, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ranks = np.arange(1, len(res["exact_eigenvalues"]) + 1)
    ax = axes[0]
    ax.loglog(ranks, res["exact_eigenvalues"], "k-", lw=2, label=f"exact, {EXACT_SIZE} points")
    for method, vals in res["nystrom_eigenvalues"].items():
        ax.loglog(
            np.arange(1, len(vals) + 1), vals, "--", label=f"Nystrom {NYSTROM_SIZE}, {method}"
        )
    ax.set(xlabel="index i", ylabel="lambda_i", title="MNIST Gaussian kernel: spectrum")
    ax.legend(fontsize=8)
    ax = axes[1]
    q = res["n_components"]
    ax.loglog(ranks, res["exact_eigenvalues"], "k-", label="original")
    ax.loglog(ranks, res["preconditioned_eigenvalues"], "r-", label=f"preconditioned (q = {q})")
    ax.axvline(q + 1, color="gray", ls=":")
    ax.set(xlabel="index i", ylabel="eigenvalue",
           title=f"after preconditioning: top eigenvalue / {res['acceleration']:.0f}")  # fmt: skip
    ax.legend(fontsize=8)
    ax = axes[2]
    train = res["training"]
    for key, label in [("eigenpro", "EigenPro"), ("plain_sgd", "plain SGD")]:
        run = train[key]
        epochs = np.arange(1, len(run["train_mse"]) + 1)
        ax.semilogy(epochs, run["train_mse"], "o-", label=f"{label} (m = {run['batch_size']})")
    ax.set(xlabel="epoch", ylabel="training MSE", title=f"MNIST {train['n']}: training MSE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
