"""The model a solver trains: this rank's slice of ``f = sum_j coef_j k(z_j, .)``.

A :class:`CenterModel` holds its centers in the kernel's prepared form (computed once),
their coefficients and the buffers the iteration reuses. Every solver path trains one: with
the training points as centers (EigenPro 2) or with general centers (EigenPro 3 and 4). The
solver orders the centers with the Nystrom subsample first, so that the preconditioner's
columns ``K(X_B, X_S)`` are a contiguous slice of each kernel block.

With a :class:`~eigenpro.distributed.Communicator` over several ranks, each rank holds a
contiguous slice ``[lo, hi)`` of the centers; its products are partial sums that
:meth:`CenterModel.reduce` adds up over the ranks.
"""

from __future__ import annotations

import torch

from .distributed import Communicator
from .kernels import Kernel, kernel_matmul, narrow_mm

__all__ = ["CenterModel"]


class CenterModel:
    """This rank's centers (prepared once) and coefficients.

    Parameters
    ----------
    kernel : Kernel
    centers : Tensor of shape (hi - lo, d)
        This rank's slice of the centers, on the training device and dtype.
    n_outputs : int
    n_centers : int
        p, the number of centers over all ranks.
    lo : int
        Position of this rank's first center among all of them.
    comm : Communicator
    max_block_elements : int
        Largest kernel block materialised at once.
    keep_coordinates : bool
        Keep ``centers`` beside their prepared form (needed to evaluate kernels between
        centers, as the projections do; the EigenPro 2 path does without).
    """

    def __init__(
        self,
        kernel: Kernel,
        centers: torch.Tensor,
        n_outputs: int,
        *,
        n_centers: int,
        lo: int,
        comm: Communicator,
        max_block_elements: int,
        keep_coordinates: bool = True,
    ):
        self.kernel, self.comm = kernel, comm
        self.n_centers, self.lo, self.hi = n_centers, lo, lo + centers.shape[0]
        self.device, self.dtype = centers.device, centers.dtype
        self.max_block = max_block_elements
        self.prepared = kernel.prepare(centers)
        self.centers = centers if keep_coordinates else None
        self.coef = torch.zeros(centers.shape[0], n_outputs, dtype=self.dtype, device=self.device)
        self.workspace: torch.Tensor | None = None

    @property
    def n_local(self) -> int:
        return self.hi - self.lo

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the coefficients (restored by :meth:`load_state_dict`)."""
        return {"coef": self.coef.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.coef.copy_(state["coef"])

    # ----------------------------------------------------------- collectives
    def reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum every tensor over the ranks with a single all_reduce."""
        if not self.comm.is_distributed:
            return tensors
        flat = self.comm.all_reduce_(torch.cat([t.reshape(-1) for t in tensors]))
        chunks = flat.split([t.numel() for t in tensors])
        return [c.view_as(t) for c, t in zip(chunks, tensors, strict=True)]

    def owned(self, idx: torch.Tensor) -> tuple[torch.Tensor | slice, torch.Tensor]:
        """The entries of ``idx`` (global center positions) this rank holds: (their places
        in ``idx``, their local positions)."""
        if not self.comm.is_distributed:
            return slice(None), idx
        rows = torch.nonzero((idx >= self.lo) & (idx < self.hi)).flatten()
        return rows, idx[rows] - self.lo

    def coordinates(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (global positions) of the centers; zeros for rows other ranks hold,
        so that the sum over ranks is the whole batch."""
        rows, local = self.owned(idx)
        if isinstance(rows, slice):
            return self.centers[local]
        out = torch.zeros(len(idx), self.centers.shape[1], dtype=self.dtype, device=self.device)
        out[rows] = self.centers[local]
        return out

    # -------------------------------------------------------------- products
    def products(
        self,
        X: torch.Tensor,
        coef: torch.Tensor | None = None,
        keep_columns: torch.Tensor | slice | None = None,
    ):
        """Partial ``K(X, Z_r) @ coef`` (default: the model's coefficients), blockwise; with
        ``keep_columns``, also ``K(X, Z_r[keep_columns])`` from the same blocks."""
        need = X.shape[0] * self.n_local
        if self.workspace is None or self.workspace.numel() < min(need, self.max_block):
            self.workspace = torch.empty(
                min(need, self.max_block), dtype=self.dtype, device=self.device
            )
        return kernel_matmul(
            self.kernel, X, None, self.coef if coef is None else coef, prepared=self.prepared,
            max_block_elements=self.max_block, keep_columns=keep_columns,
            workspace=self.workspace,
        )  # fmt: skip

    def block(self, X: torch.Tensor) -> torch.Tensor | None:
        """``K(X, Z_r)`` as one matrix when it fits in a block, else None."""
        if X.shape[0] * self.n_local > self.max_block:
            return None
        points = self.kernel.prepare_points(X, self.prepared)
        return self.kernel.prepared_block(points, self.prepared)

    def gradient(self, X: torch.Tensor, residual: torch.Tensor, block=None) -> torch.Tensor:
        """``K(Z_r, X) @ residual`` (``block``: ``K(X, Z_r)`` when already computed)."""
        if block is not None:
            return narrow_mm(block.T, residual)
        return kernel_matmul(
            self.kernel, self.centers, X, residual, max_block_elements=self.max_block
        )

    def predict(self, X: torch.Tensor, coef: torch.Tensor | None = None) -> torch.Tensor:
        """``K(X, Z) @ coef`` summed over the ranks."""
        return self.reduce([self.products(X, coef)])[0]

    def gather(self, coef: torch.Tensor | None = None) -> torch.Tensor:
        """All ranks' coefficients (in the model's order of the centers), on the CPU."""
        coef = self.coef if coef is None else coef
        if not self.comm.is_distributed:
            return coef.cpu()
        full = torch.zeros(self.n_centers, coef.shape[1], dtype=self.dtype, device=self.device)
        full[self.lo : self.hi] = coef
        return self.reduce([full])[0].cpu()
