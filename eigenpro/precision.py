"""Precision of the kernel products: IEEE float32, or bf16 operands on the faster units.

Nearly all the work of a fit is one GEMM per kernel block, the distances ``|u - v|^2`` in
bandwidth units (:class:`~eigenpro.kernels.RadialKernel`). CPUs with bf16 instructions
(``avx512_bf16``, AMX) and GPUs with tensor cores multiply bf16 operands, accumulating in
float32, several times faster: on the 2-core AMD EPYC benchmark machine a 4096 x 800 x 4096
product ran at 575 against 261 GFLOP/s through oneDNN.

``precision="bf16"`` rounds **consistently**: the centred, bandwidth-scaled operands are
rounded to bf16 once, their squared norms are taken of the rounded operands in float32 and
carried exactly through the same product as three bf16 parts each, and the product
accumulates in float32. The kernel matrix is then, up to float32 round-off, the exact kernel
matrix of points moved by at most ``2^-9`` of their coordinates (in bandwidth units): still
symmetric positive semi-definite, so EigenPro's theory holds for it unchanged, and a
prediction takes the same rounding. Rounding only the cross term while the norms stay exact
would not be consistent (the distance of a point to itself would not be 0): on MNIST its
Gaussian block was 6.7e-3 from float64, against 1.1e-6 in IEEE float32 and 5.6e-4 here.

``precision="auto"`` uses bf16 only where it pays and costs no accuracy: the hardware has
the units; the fit is float32 and large (:data:`BF16_MIN_WORK`) with enough features that
the product dominates (:data:`BF16_MIN_FEATURES`); a probe on the data's own kernel block
stays within :data:`BF16_KERNEL_TOLERANCE` of float64; and the closed-form leave-one-out
R^2 of the chosen ridge on the model selection's rows falls by at most
:data:`BF16_LOO_TOLERANCE`. What was chosen and why is the estimators' ``precision_`` and
``precision_check_``.

The switch to the bf16 path is one process-wide torch setting
(``torch.backends.mkldnn.matmul.fp32_precision`` on the CPU, TF32 on CUDA, which multiplies
bf16-exact operands exactly), set only around the library's distance products, under a
lock, and put back after each: bf16 fits in several threads take turns, and no setting is
left changed. Float32 matrix products that *other* threads run during those milliseconds
(an IEEE fit beside it in joblib's threading backend, the user's own torch code) would also
see it, so ``"auto"`` takes bf16 only for fits in the main thread (joblib's threading
workers are not); give ``precision="ieee"`` where bf16 fits run beside other float32 work in
one process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BF16_KERNEL_TOLERANCE", "BF16_LOO_TOLERANCE", "BF16_MIN_FEATURES", "BF16_MIN_WORK",
    "PRECISIONS", "PrecisionChoice", "bf16_products", "bf16_unavailable", "choose_precision",
    "round_to_bf16_", "split_bf16",
]  # fmt: skip

#: The values of the estimators' ``precision``.
PRECISIONS = ("auto", "ieee", "bf16")
#: Largest ``max |K_bf16 - K_float64| / max |K|`` on the probe block that ``"auto"`` accepts:
#: the perturbation of the points, about ``2^-9`` of a coordinate in bandwidth units, moves
#: a Gaussian value by up to a few 1e-4 (MNIST: 5.6e-4).
BF16_KERNEL_TOLERANCE = 2e-3
#: Largest fall of the leave-one-out R^2 (the model selection's rows, its chosen ridge) that
#: ``"auto"`` accepts from bf16 operands.
BF16_LOO_TOLERANCE = 1e-3
#: ``"auto"`` considers bf16 only for fits whose passes over the data take at least this
#: many operations (below it the probe costs more than bf16 could save) ...
BF16_MIN_WORK = 2e10
#: ... and at least this many features: with fewer, the exponentials and the products by
#: the coefficients, not the distance product, take most of a kernel block's time.
BF16_MIN_FEATURES = 64
#: Rows of the probe block (against all the selection's rows).
PROBE_ROWS = 256

_lock = threading.RLock()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_unavailable(device: torch.device) -> str | None:
    """Why ``device`` has no faster bf16 products, or None when it has them."""
    if device.type == "cpu":
        if not torch.backends.mkldnn.is_available():
            return "this torch build has no oneDNN"
        if not _cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            return "this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)"
        return None
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] < 8:
            return "this GPU has no bf16 tensor cores (compute capability below 8.0)"
        return None
    return f"no bf16 product path on {device.type}"


@contextmanager
def bf16_products(device: torch.device) -> Iterator[None]:
    """Float32 matrix products on ``device`` with bf16 operands and float32 accumulation for
    the enclosed calls (exact for operands that are bf16 values already); the setting is
    restored on exit. Held under a process-wide lock."""
    backend = torch.backends.mkldnn.matmul if device.type == "cpu" else torch.backends.cuda.matmul
    mode = "bf16" if device.type == "cpu" else "tf32"
    with _lock:
        before = backend.fp32_precision
        backend.fp32_precision = mode
        try:
            yield
        finally:
            backend.fp32_precision = before


def round_to_bf16_(X: torch.Tensor) -> torch.Tensor:
    """Round ``X`` (float32) to the nearest bf16 values, in place."""
    return X.copy_(X.to(torch.bfloat16))


def split_bf16(x: torch.Tensor, parts: int = 3) -> torch.Tensor:
    """``parts`` bf16-exact float32 columns whose sum is ``x`` to float32 precision (three
    parts of 8 significant bits each carry float32's 24)."""
    out = torch.empty(x.shape[0], parts, dtype=x.dtype, device=x.device)
    rest = x.clone()
    for i in range(parts):
        out[:, i] = rest.to(torch.bfloat16).to(x.dtype)
        rest -= out[:, i]
    return out


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision of a fit's kernel products and why (``precision_``,
    ``precision_check_``)."""

    precision: str
    reason: str
    kernel_error: dict | None = None
    loo_r2: dict | None = None

    def as_dict(self) -> dict:
        return {"precision": self.precision, "reason": self.reason,
                "kernel_error": self.kernel_error, "loo_r2": self.loo_r2}  # fmt: skip


def _loo_r2(kernel, rows: torch.Tensor, Y: torch.Tensor, alpha: float) -> float:
    from .model_selection import leave_one_out_errors

    kmat = kernel(rows, rows).to(torch.float64)
    kmat = 0.5 * (kmat + kmat.T)
    errors = float(leave_one_out_errors(kmat.cpu(), Y, [alpha])[0])
    total = float(Y.pow(2).sum())
    return 1.0 - errors / total if total > 0 else 0.0


def choose_precision(
    precision: str,
    kernel,
    rows: np.ndarray,
    Y: np.ndarray,
    alpha_rows: float,
    *,
    dtype: torch.dtype,
    device: torch.device,
    work: float,
    n_features: int,
) -> PrecisionChoice:
    """The precision of a fit's kernel products.

    Parameters
    ----------
    precision : {"auto", "ieee", "bf16"}
    kernel : Kernel
        The fit's kernel; only radial kernels have a bf16 path.
    rows : ndarray of shape (s, d)
        The model selection's rows (float64).
    Y : ndarray of shape (s, l)
        Their targets as the solver sees them (centred).
    alpha_rows : float
        The ridge for ``s`` rows (the selection's choice).
    dtype, device : the fit's.
    work : float
        Operations of one pass over the data (every center against every point).
    n_features : int

    Returns
    -------
    PrecisionChoice
    """
    from .kernels import RadialKernel

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    radial = isinstance(kernel, RadialKernel)
    if precision == "ieee":
        return PrecisionChoice("ieee", "precision='ieee' as given")
    if precision == "bf16":
        if not radial:
            raise ValueError(
                f"precision='bf16' needs a radial kernel (gaussian, laplacian, cauchy, "
                f"matern); {kernel!r} has no bf16 path"
            )
        if dtype != torch.float32:
            raise ValueError(f"precision='bf16' needs dtype='float32'; the fit is {dtype}")
        return PrecisionChoice("bf16", "precision='bf16' as given")
    # "auto"
    why_not = None
    if not radial:
        why_not = "the kernel is not radial"
    elif dtype != torch.float32:
        why_not = f"the fit is {str(dtype).removeprefix('torch.')}"
    elif n_features < BF16_MIN_FEATURES:
        why_not = f"{n_features} features: the distance product is a small part of the work"
    elif work < BF16_MIN_WORK:
        why_not = f"{work:.2g} operations per pass: too few to gain from bf16"
    elif threading.current_thread() is not threading.main_thread():
        why_not = "the fit runs outside the main thread (a threading backend)"
    else:
        why_not = bf16_unavailable(device)
    if why_not is not None:
        return PrecisionChoice("ieee", f"IEEE float32: {why_not}")
    fast = kernel.with_precision("bf16", origin=np.asarray(rows, dtype=np.float64).mean(0))
    X64 = torch.from_numpy(np.asarray(rows, dtype=np.float64))
    X32 = X64.to(device=device, dtype=torch.float32)
    probe = slice(0, min(PROBE_ROWS, X64.shape[0]))
    reference = kernel(X64[probe], X64)
    scale = float(reference.abs().max()) or 1.0
    errors = {
        name: float((k(X32[probe], X32).double().cpu() - reference).abs().max()) / scale
        for name, k in (("ieee", kernel), ("bf16", fast))
    }
    if errors["bf16"] > BF16_KERNEL_TOLERANCE:
        return PrecisionChoice(
            "ieee", f"IEEE float32: bf16 operands moved the kernel by {errors['bf16']:.2g} "
            f"(more than {BF16_KERNEL_TOLERANCE:g})", errors,
        )  # fmt: skip
    Yt = torch.from_numpy(np.asarray(Y, dtype=np.float64))
    loo = {name: _loo_r2(k, X32, Yt, alpha_rows) for name, k in (("ieee", kernel), ("bf16", fast))}
    if loo["bf16"] < loo["ieee"] - BF16_LOO_TOLERANCE:
        return PrecisionChoice(
            "ieee", f"IEEE float32: bf16 operands lowered the leave-one-out R^2 from "
            f"{loo['ieee']:.4f} to {loo['bf16']:.4f}", errors, loo,
        )  # fmt: skip
    return PrecisionChoice(
        "bf16", f"bf16 operands: kernel within {errors['bf16']:.1e} of float64, leave-one-out "
        f"R^2 {loo['bf16']:.4f} against {loo['ieee']:.4f} in IEEE float32", errors, loo,
    )  # fmt: skip
