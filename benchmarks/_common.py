"""Shared plumbing of the benchmark scripts: options, machine facts, memory, floor, JSON.

Every study accepts ``--device --dtype --n-train --epochs --seed --out --data-dir`` and writes
``<out>/<study>.json`` (settings, machine, library versions, every figure) and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: What the studies of a fixed method (MNIST, CIFAR-10, throughput, scaling) hold fixed where
#: the estimators now choose from the data: no ridge, no intercept, exactly ``--epochs``
#: epochs, IEEE float32 products (``throughput.py`` also times bf16). Their figures measure
#: the method, not the automatic choices (``tabular.py`` measures those).
FIXED_SETTINGS = {"alpha": 0.0, "tol": None, "fit_intercept": False, "precision": "ieee"}
#: ... and every training point a center (EigenPro 2), as the papers' MNIST runs.
PAPER_SETTINGS = {**FIXED_SETTINGS, "n_centers": None}
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def parser(description: str, *, n_train, epochs: int, multi_n: bool = False):
    """The options every study takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1'")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    if multi_n:
        p.add_argument("--n-train", type=int, nargs="+", default=n_train)
    else:
        p.add_argument("--n-train", type=int, default=n_train)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for JSON and PNG")
    p.add_argument("--data-dir", default=None, help="folder holding mnist/ or CIFAR batches")
    return p


def _git_commit(directory: Path) -> str | None:
    """The commit of the eigenpro code that was timed (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict:
    import scipy
    import sklearn

    import eigenpro

    out = {
        "python": platform.python_version(),
        "eigenpro": eigenpro.__version__,
        "eigenpro_commit": _git_commit(Path(eigenpro.__file__).parent),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        import falkon

        out["falkon"] = falkon.__version__
    except ImportError:
        pass
    return out


def machine(device: torch.device | str = "cpu") -> dict:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "device": str(device),
        "cpu_caches": cpu_caches(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def cpu_caches() -> dict:
    """The first CPU's caches as Linux describes them, e.g. ``{"L2": "1024K", "L3": "32768K"}``
    (empty elsewhere), and the CPUs sharing each: a figure can be traced to its machine."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size, shared = (
                (index / name).read_text().strip()
                for name in ("level", "type", "size", "shared_cpu_list")
            )
        except OSError:
            continue
        if kind != "Instruction":
            out[f"L{level}"] = f"{size} (CPUs {shared})"
    return out


def falkon_fit(X, Y, n_centers: int, penalty: float, seed: int, bandwidth: float,
               maxiter: int = 10):  # fmt: skip
    """Falkon (Rudi, Carratino & Rosasco, 2017; FalkonML/falkon) at ``M = n_centers`` with its
    Gaussian kernel (same parameterisation as ours), on the GPU when there is one, with
    ``maxiter`` conjugate-gradient iterations. Returns (fitted model, fit seconds), or None
    when ``import falkon`` fails (it is optional: see the README to install it)."""
    try:
        import falkon
    except ImportError:
        return None
    options = falkon.FalkonOptions(use_cpu=not torch.cuda.is_available())
    model = falkon.Falkon(
        kernel=falkon.kernels.GaussianKernel(sigma=bandwidth), penalty=penalty, M=n_centers,
        maxiter=maxiter, seed=seed, options=options,
    )  # fmt: skip
    start = time.perf_counter()
    X = torch.as_tensor(X)
    model.fit(X, torch.as_tensor(Y, dtype=X.dtype))
    return model, time.perf_counter() - start


def _status_mib(field: str) -> float | None:
    try:
        found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


@contextmanager
def peak_memory(device: torch.device | str = "cpu"):
    """Peak resident memory (MiB) of this process inside the block, in ``out["peak_mib"]``.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) on entry, so each block
    of one process is measured on its own; on CUDA also records the peak allocated memory.
    """
    out: dict = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["method"] = "VmHWM after clear_refs"
    except OSError:
        out["method"] = "VmHWM of the whole process"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    out["start_mib"] = _status_mib("VmRSS")
    try:
        yield out
    finally:
        out["peak_mib"] = _status_mib("VmHWM")
        if dev.type == "cuda":
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def kernel_floor_seconds(
    n_rows: int,
    n_cols: int,
    d: int,
    n_out: int,
    *,
    dtype=torch.float32,
    device="cpu",
    block_rows: int = 4096,
    repeats: int = 2,
    precision: str = "ieee",
) -> float:
    """Seconds of the physical floor of one epoch (DESIGN.md section 3), measured here.

    The same-sized work as one pass over an ``n_rows x n_cols`` kernel matrix, done in the
    most favourable way: one ``(block_rows x d) @ (d x n_cols)`` float matmul per row block,
    the exponentials of the block in place (no scaling pass), and its product with an
    ``n_cols x n_out`` coefficient matrix (2-15 columns padded with zeros to 16 on the CPU
    in float32, the faster GEMM there, as the library does since 1d95c9f: see
    ``eigenpro.kernels.NARROW_GEMM_COLUMNS``; written out here so that the floor of older
    code is the same). No distances, no preconditioner, no shuffling: a lower bound.
    ``precision="bf16"``: the first product with bf16 operands and float32 accumulation
    (:func:`eigenpro.precision.bf16_products`), as the library's bf16 distance products.
    """
    from eigenpro.precision import bf16_products

    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    # Inner products in [-1, 0], like the exponents of a real kernel block (no overflow).
    X = -torch.rand(block_rows, d, generator=gen, dtype=dtype).div_(d).to(device)
    Z = torch.rand(n_cols, d, generator=gen, dtype=dtype).to(device)
    W = torch.rand(n_cols, n_out, generator=gen, dtype=dtype).to(device)
    if device.type == "cpu" and dtype == torch.float32 and 2 <= n_out < 16:
        W = torch.cat([W, W.new_zeros(n_cols, 16 - n_out)], dim=1)
    block = torch.empty(block_rows, n_cols, dtype=dtype, device=device)
    out = torch.empty(block_rows, W.shape[1], dtype=dtype, device=device)
    n_blocks = n_rows / block_rows
    best = float("inf")
    torch.mm(X, Z.T, out=block)  # warm-up: thread pool, first-touch of the block
    for _ in range(repeats):
        # Time a few whole blocks (about 4 x 4096 rows) and scale to n_rows: identical work
        # per block.
        reps = max(1, min(int(np.ceil(n_blocks)), -(-4 * 4096 // block_rows)))
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            if precision == "bf16":
                with bf16_products(device):
                    torch.mm(X, Z.T, out=block)
            else:
                torch.mm(X, Z.T, out=block)
            block.exp_()
            torch.mm(block, W, out=out)
        sync(device)
        best = min(best, (time.perf_counter() - start) / reps * n_blocks)
    return best


def krr_in_worker(X, Y, X_test, y_test, *, gamma: float, alpha: float) -> dict:
    """Fit scikit-learn's ``KernelRidge(kernel="rbf")`` in a process of its own
    (``_krr_worker.py``; one-dimensional ``Y``: a regression scored by R^2, else one-hot
    classes): a crash of the exact solver becomes a reported skip, and the worker's peak
    memory is the exact solver's alone. scipy's OpenBLAS 0.3.30 picks its SkylakeX kernels
    on the 2-core benchmark machines (AMD EPYC, Intel Xeon), and its threaded Cholesky solve
    segfaults there from n = 20000 on; its Haswell kernels (AVX2) run the same solve on both
    threads. A user's own OPENBLAS_CORETYPE wins."""
    import subprocess
    import tempfile

    env = dict(os.environ)
    env.setdefault("OPENBLAS_CORETYPE", "Haswell")
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.npz", Path(tmp) / "out.json"
        np.savez(data, X=np.asarray(X, np.float64), Y=np.asarray(Y, np.float64),
                 X_test=np.asarray(X_test, np.float64), y_test=y_test, gamma=gamma,
                 alpha=alpha)  # fmt: skip
        worker = Path(__file__).resolve().parent / "_krr_worker.py"
        done = subprocess.run(
            [sys.executable, str(worker), str(data), str(out)], check=False, env=env
        )
        if done.returncode != 0:
            return {"skipped": f"KernelRidge worker failed (exit code {done.returncode})"}
        result = json.loads(out.read_text())
    result["openblas_coretype"] = env["OPENBLAS_CORETYPE"]
    return result


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def settings(args: argparse.Namespace, **extra) -> dict:
    """The run's options, and the settings the studies of a fixed method hold
    (:data:`FIXED_SETTINGS`, the products' precision included)."""
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out["fixed_settings"] = dict(FIXED_SETTINGS)
    out.update(extra)
    return out


def load_mnist_scaled(data_dir, n_train: int | None = None, dtype=np.float32):
    """MNIST pixels scaled to [0, 1]: X_train[:n_train], y_train[:n_train], X_test, y_test."""
    from eigenpro.datasets import load_mnist

    X_train, y_train, X_test, y_test = load_mnist(data_dir)
    n = len(X_train) if n_train is None else min(n_train, len(X_train))
    scale = dtype(1 / 255)
    return (
        X_train[:n].astype(dtype) * scale,
        y_train[:n],
        X_test.astype(dtype) * scale,
        y_test,
    )


def plot_path(out: Path, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.png"


def track_classifier(clf, X_train, y_train, X_test, y_test, device="cpu") -> dict:
    """Fit ``clf`` with the test set as a monitoring set (never used by the fit) and return
    the per-epoch record: test error (%), training loss, epoch seconds, cumulative seconds,
    plus set-up seconds, peak memory and the automatically chosen settings."""
    with peak_memory(device) as mem:
        start = time.perf_counter()
        clf.fit(X_train, y_train, eval_set=[(X_test, y_test)])
        total = time.perf_counter() - start
    epochs = [h["seconds"] for h in clf.history_]
    # The monitoring predictions run outside the epochs' clocks and are timed on their own.
    eval_seconds = sum(h.get("eval_seconds", 0.0) for h in clf.history_)
    setup = total - sum(epochs) - eval_seconds
    start = time.perf_counter()
    test_error = 100 * (1 - clf.score(X_test, y_test))
    predict_seconds = time.perf_counter() - start
    return {
        "test_error_pct": [100 * (1 - h["eval_scores"][0]) for h in clf.history_],
        "train_loss": [h["train_loss"] for h in clf.history_],
        "epoch_seconds": epochs,
        "cumulative_seconds": (np.cumsum(epochs)).tolist(),
        "final_test_error_pct": test_error,
        "setup_seconds": setup,
        "monitoring_seconds": eval_seconds,
        "wall_seconds": total,
        "predict_seconds": predict_seconds,
        "peak_rss_mib": mem["peak_mib"],
        "gpu_peak_mib": mem.get("gpu_peak_mib"),
        "chosen": {
            "bandwidth": clf.bandwidth_,
            "n_components": clf.n_components_,
            "subsample_size": clf.subsample_size_,
            "batch_size": clf.batch_size_,
            "step_size": clf.step_size_,
            "critical_batch_size": clf.critical_batch_size_,
            "top_eigenvalue": clf.top_eigenvalue_,
            "tail_eigenvalue": clf.tail_eigenvalue_,
            "beta": clf.beta_,
            "device": clf.device_,
        },
    }


def iterate_until(
    kernel, X, Y, *, n_components, batch_size, budget, max_epochs, max_seconds, seed,
    target=None, metric="train_mse", X_test=None, y_test=None,
) -> dict:  # fmt: skip
    """Run the library's solver until ``metric`` reaches ``target`` (or a cap) and record it.

    :func:`eigenpro.solver.fit` chooses every setting as the estimators do
    (``n_components=0``: plain kernel SGD with its own safe step). ``metric`` is
    ``"train_mse"`` (exact training MSE after each epoch, one extra kernel pass, untimed) or
    ``"train_loss"`` (the solver's running loss over the epoch's batches, free). With
    ``X_test``/``y_test`` (class labels), the test error after each epoch is recorded too
    (untimed). Fit time counts the set-up and every epoch.
    """
    from tqdm.auto import tqdm

    from eigenpro.solver import fit

    bar = tqdm(desc="epochs", unit="epoch", leave=False)
    test_errors, untimed = [], [0.0]
    start = time.perf_counter()
    fit_seconds = []

    def on_epoch(epoch, predict, record):
        paused = time.perf_counter()
        fit_seconds.append(paused - start - untimed[0])
        if metric == "train_mse":
            record["train_mse"] = float((predict(X) - Y).pow(2).mean())
        if X_test is not None:
            scores = predict(X_test)
            labels = scores.argmax(1) if scores.shape[1] > 1 else (scores[:, 0] > 0).long()
            test_errors.append(100 * float((labels.cpu().numpy() != y_test).mean()))
        value = record.get(metric)
        bar.update()
        bar.set_postfix({metric: f"{value:.3g}", "target": f"{target or 0:.3g}"}, refresh=False)
        reached = target is not None and value <= target
        untimed[0] += time.perf_counter() - paused
        return {**record, "stop": reached or fit_seconds[-1] > max_seconds}

    result = fit(
        kernel, X, Y, device=X.device, dtype=X.dtype, n_epochs=max_epochs,
        memory_budget=budget, batch_size=batch_size, n_components=n_components,
        rng=np.random.default_rng(seed), callback=on_epoch,
    )  # fmt: skip
    bar.close()
    values = [h[metric] for h in result.history]
    reached = [i for i, v in enumerate(values) if target is not None and v <= target]
    first = reached[0] if reached else None
    precond = result.preconditioner
    out = {
        "n_components": precond.n_components,
        "batch_size": int(result.batch_size),
        "step_size": float(result.history[0]["step_size"]),
        "critical_batch_size": precond.critical_batch_size,
        "setup_seconds": fit_seconds[0] - result.history[0]["seconds"],
        "epochs_run": len(values),
        metric: values,
        "seconds": fit_seconds,
        "epochs_to_target": None if first is None else first + 1,
        "seconds_to_target": None if first is None else fit_seconds[first],
    }
    if X_test is not None:
        out["test_error_pct"] = test_errors
    return out
