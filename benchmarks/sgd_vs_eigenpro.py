"""EigenPro against plain kernel SGD on a Gaussian-kernel regression problem.

Three runs on the same data, kernel and seed, in one process:

1. EigenPro with everything automatic, for ``--epochs`` epochs: its training MSE is the
   target (set-up seconds included in its time);
2. plain kernel SGD (``n_components=0``) at EigenPro's batch size and its own safe step:
   epochs needed to reach the target (the paper's "epochs" comparison);
3. plain kernel SGD at its own automatic batch size ``beta / lambda_1`` (a handful of
   points): wall-clock seconds needed to reach the target.

Runs 2 and 3 stop at the target, at ``--max-epochs`` or after ``--max-seconds``.

    python benchmarks/sgd_vs_eigenpro.py     # synthetic n = 2000 (as in the tests), MNIST 10k
"""

from __future__ import annotations

import numpy as np
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
from eigenpro.kernels import get_kernel


def make_problem(n: int, d: int, seed: int):
    """The problem of tests/test_convergence.py: a smooth target of normal inputs."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]
    return X, y.reshape(-1, 1)


PROBLEMS = {
    # name: (default n, bandwidth, epochs of EigenPro that set the target)
    "synthetic": (2000, 2.0, 2),
    "mnist": (10000, 5.0, 5),
}


def load_problem(name: str, n: int | None, args):
    default_n, bandwidth, epochs = PROBLEMS[name]
    n = n or default_n
    if name == "synthetic":
        X, Y = make_problem(n, args.d, args.seed)
        label = f"synthetic, d={args.d}: sin(x0) + x1 x2 / 2"
    else:
        X, y, _, _ = load_mnist_scaled(args.data_dir, n)
        Y = np.eye(10, dtype=np.float32)[y]
        label = "MNIST, pixels in [0, 1], one-hot targets"
    return X, Y, bandwidth, args.epochs or epochs, label


def main():
    p = parser(__doc__.splitlines()[0], n_train=None, epochs=0)
    p.add_argument("--problem", nargs="+", choices=sorted(PROBLEMS), default=["synthetic", "mnist"])
    p.add_argument("--d", type=int, default=10, help="input dimension of the synthetic problem")
    p.add_argument("--max-epochs", type=int, default=2000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args()
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    budget = resolve_memory_budget("auto", device)
    torch.manual_seed(args.seed)

    studies = []
    for name in args.problem:
        X_np, Y_np, bandwidth, epochs, label = load_problem(name, args.n_train, args)
        kernel = get_kernel("gaussian", bandwidth=bandwidth)
        n = X_np.shape[0]
        print(f"{label}: n={n}, Gaussian bandwidth {bandwidth}, target after {epochs} epochs")
        X = torch.as_tensor(X_np, dtype=dtype, device=device)
        Y = torch.as_tensor(Y_np, dtype=dtype, device=device)
        common = dict(
            budget=budget, seed=args.seed, max_seconds=args.max_seconds, metric="train_mse"
        )
        eigenpro = iterate_until(kernel, X, Y, n_components="auto", batch_size="auto",
                                 max_epochs=epochs, target=None, **common)  # fmt: skip
        target = eigenpro["train_mse"][-1]
        eigenpro["epochs_to_target"] = epochs
        eigenpro["seconds_to_target"] = eigenpro["seconds"][-1]
        same_batch = iterate_until(kernel, X, Y, n_components=0, batch_size=eigenpro["batch_size"],
                                   max_epochs=args.max_epochs, target=target, **common)  # fmt: skip
        own_batch = iterate_until(kernel, X, Y, n_components=0, batch_size="auto",
                                  max_epochs=args.max_epochs, target=target, **common)  # fmt: skip
        study = {
            "problem": name,
            "description": label,
            "n": n,
            "d": X_np.shape[1],
            "bandwidth": bandwidth,
            "eigenpro_epochs": epochs,
            "target_train_mse": target,
            "eigenpro": eigenpro,
            "sgd_same_batch": same_batch,
            "sgd_own_batch": own_batch,
        }
        if same_batch["epochs_to_target"] is not None:
            study["epoch_ratio"] = same_batch["epochs_to_target"] / epochs
        else:
            study["epoch_ratio_at_least"] = same_batch["epochs_run"] / epochs
        own = own_batch["seconds_to_target"]
        study["time_ratio" if own else "time_ratio_at_least"] = (
            own if own else own_batch["seconds"][-1]
        ) / eigenpro["seconds"][-1]
        studies.append(study)
        print(summary(study))

    payload = {
        "study": "sgd_vs_eigenpro",
        "settings": settings(args, kernel="gaussian", dtype=str(dtype)),
        "machine": machine(device),
        "versions": versions(),
        "results": studies,
    }
    write_json(args.out / "sgd_vs_eigenpro.json", payload)
    plot(studies, plot_path(args.out, "sgd_vs_eigenpro"))


def summary(study: dict) -> str:
    ep, same, own = study["eigenpro"], study["sgd_same_batch"], study["sgd_own_batch"]

    def reach(run):
        if run["epochs_to_target"] is None:
            return f"not reached in {run['epochs_run']} epochs / {run['seconds'][-1]:.1f} s"
        return f"{run['epochs_to_target']} epochs, {run['seconds_to_target']:.2f} s"

    return (
        f"{study['problem']} n={study['n']}: target MSE {study['target_train_mse']:.3g}\n"
        f"  EigenPro     q={ep['n_components']} m={ep['batch_size']}: {reach(ep)}\n"
        f"  SGD, m={same['batch_size']:<5}  {reach(same)}\n"
        f"  SGD, m={own['batch_size']:<5}  {reach(own)}"
    )


def plot(studies, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(studies), figsize=(5.5 * len(studies), 4), squeeze=False)
    for ax, study in zip(axes[0], studies, strict=True):
        for key, label in [
            ("eigenpro", "EigenPro"),
            ("sgd_same_batch", "plain SGD, EigenPro's batch"),
            ("sgd_own_batch", "plain SGD, its own batch"),
        ]:
            run = study[key]
            label = f"{label} (m={run['batch_size']})"
            ax.loglog(run["seconds"], run["train_mse"], marker=".", label=label)
        ax.axhline(study["target_train_mse"], color="gray", ls=":", label="target")
        ax.set(
            title=f"{study['problem']}, n = {study['n']}",
            xlabel="fit seconds (set-up included)",
            ylabel="training MSE",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
