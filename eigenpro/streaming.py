"""Training data that stays on the host and reaches the device one batch at a time.

:class:`HostData` wraps a numpy array, a :class:`numpy.memmap` or a CPU torch tensor without
copying it. :meth:`HostData.take` gathers the rows of one batch (sorted, so that a memmap is
read front to back), checks them for NaN and infinity, converts them to the training dtype
and moves them to the device (pinned and ``non_blocking`` for CUDA). Nothing ever holds the
whole data set in the training dtype or on the device.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["HostData", "is_streamable"]


def is_streamable(X) -> bool:
    """Whether ``X`` can be streamed as is: a 2-d real numpy array (memmaps included), a
    2-d real CPU torch tensor or a scipy.sparse CSR matrix (densified batch by batch)."""
    if sp.issparse(X):
        return X.format == "csr" and X.dtype.kind in "fiu"
    if isinstance(X, torch.Tensor):
        return X.device.type == "cpu" and X.ndim == 2 and not X.is_complex() and not X.is_sparse
    if isinstance(X, np.ndarray):
        return X.ndim == 2 and X.dtype.kind in "fiu"
    return False


class HostData:
    """Rows of a host matrix, gathered batch by batch onto a device.

    Parameters
    ----------
    X : ndarray, numpy.memmap, CPU Tensor or scipy.sparse CSR matrix of shape (n, d)
        Kept by reference, never copied (or densified) as a whole.
    rows : ndarray of int, optional
        Restrict to these rows (e.g. the training part of a held-out split); batch positions
        then index into ``rows``.
    column : ndarray of shape (n,), optional
        Appended to every row as a last feature (the square roots of sample weights, read
        by :class:`~eigenpro.kernels.ScaledKernel`); indexed like the rows of ``X``.

    Raises
    ------
    TypeError
        If ``X`` is not a 2-d real numpy array, CPU tensor or scipy.sparse CSR matrix.
    """

    def __init__(self, X, rows: np.ndarray | None = None, column: np.ndarray | None = None):
        if not is_streamable(X):
            raise TypeError(
                "streamed data must be a 2-d real numpy array, numpy.memmap, CPU torch tensor "
                "or scipy.sparse CSR matrix; "
                f"got {type(X).__name__}"
                + (f" with shape {tuple(X.shape)}" if hasattr(X, "shape") else "")
            )
        self.X = X
        self._finite: bool | None = None  # in-memory data: checked once, on first use
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.column = None if column is None else np.asarray(column, dtype=np.float64)
        if self.column is not None and self.column.shape != (X.shape[0],):
            raise ValueError(f"column has shape {self.column.shape}; expected ({X.shape[0]},)")

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0] if self.rows is None else self.rows.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1]) + (self.column is not None)

    @property
    def nbytes(self) -> int:
        """Size of the underlying data in bytes."""
        if self._is_tensor:
            return int(self.X.numel() * self.X.element_size())
        if sp.issparse(self.X):
            return int(self.X.data.nbytes + self.X.indices.nbytes + self.X.indptr.nbytes)
        return int(self.X.nbytes)

    @property
    def _is_tensor(self) -> bool:
        return isinstance(self.X, torch.Tensor)

    def _all_finite(self) -> bool:
        """Whether the whole of an in-memory ``X`` is finite (checked once: one pass costs
        less than checking every batch of every epoch, 0.36 s of a 12 s MNIST fit); False
        for memory maps, whose batches are checked as they are read."""
        if self._finite is None:
            X = self.X
            if self._is_tensor:
                self._finite = bool(torch.isfinite(X).all())
            elif sp.issparse(X):
                self._finite = bool(np.isfinite(X.data).all())
            elif isinstance(X, np.memmap):
                self._finite = False
            else:
                self._finite = bool(np.isfinite(X).all())
        return self._finite

    def subset(self, positions: np.ndarray) -> HostData:
        """The rows at ``positions`` (relative to this object), still without a copy."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        out = HostData(self.X, rows, self.column)
        out._finite = self._finite
        return out

    def with_column(self, column: np.ndarray | None) -> HostData:
        """The same rows with ``column`` (one value per row of this object) appended as a
        last feature; ``None`` gives the rows without one."""
        if column is None:
            return HostData(self.X, self.rows)
        full = np.ones(self.X.shape[0])
        full[slice(None) if self.rows is None else self.rows] = column
        return HostData(self.X, self.rows, full)

    def whole(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """All rows as one tensor on ``device``: without a copy when they already are a
        contiguous CPU array of ``dtype`` (checked for NaN and infinity all the same)."""
        X = self.X
        if (
            self.rows is None
            and self.column is None
            and device.type == "cpu"
            and not self._is_tensor
            and not sp.issparse(X)
        ):
            if X.flags.c_contiguous and X.dtype == torch.empty(0, dtype=dtype).numpy().dtype:
                view = torch.from_numpy(X) if X.flags.writeable else None
                if view is not None:
                    if not torch.isfinite(view).all():
                        self.take(np.arange(self.n_samples), dtype, device)  # names the row
                    return view
        return self.take(np.arange(self.n_samples), dtype, device)

    def take(
        self,
        positions: np.ndarray,
        dtype: torch.dtype,
        device: torch.device,
        *,
        name: str = "X",
    ) -> torch.Tensor:
        """Rows at ``positions`` as a ``(len(positions), d)`` tensor on ``device``.

        Raises
        ------
        ValueError
            If the rows contain NaN or infinity.
        """
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        if self._is_tensor:
            batch = self.X.index_select(0, torch.from_numpy(rows)).to(dtype)
        elif sp.issparse(self.X):  # only this batch is ever dense
            batch = torch.from_numpy(self.X[rows].toarray()).to(dtype)
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.X[rows])).to(dtype)
        if not self._all_finite() and not torch.isfinite(batch).all():
            bad = rows[~torch.isfinite(batch).all(dim=1).numpy()]
            kind = "NaN" if torch.isnan(batch).any() else "infinity"
            raise ValueError(
                f"Input {name} contains {kind} (first bad row: {int(bad[0])}); streamed data is "
                "checked batch by batch, remove or impute non-finite values."
            )
        if self.column is not None:
            extra = torch.from_numpy(self.column[rows]).to(dtype).unsqueeze(1)
            batch = torch.cat([batch, extra], dim=1)
        if device.type == "cuda":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
