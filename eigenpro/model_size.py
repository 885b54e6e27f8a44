"""The model size by default: every training point while that is affordable, a fixed number
of centers beyond.

EigenPro 2 (every training point a center) costs about ``n^2 (d + c)`` multiply-adds per pass
over the data, for ``n`` rows of ``d`` features and a kernel whose nonlinearity costs as much as
``c`` = :data:`KERNEL_COST` multiply-adds per entry; EigenPro 3 with ``p`` centers costs
``n p (d + c)``. With a budget ``W`` (``compute_budget``, in 10^9 multiply-adds per pass),
``n_centers="auto"`` keeps every training point while ``n^2 (d + c) <= W``, that is up to

    n_all = sqrt(W / (d + c))  rows,

and beyond uses ``p = n_all / 2`` centers drawn at random (EigenPro 3 moves more numbers per
kernel entry, and the projection onto the centers costs ``p^2`` to ``p^3``, so the same pass
costs it about twice what EigenPro 2 pays per entry). Past ``n_all`` a pass therefore costs
``n p (d + c)``: the time of a default fit grows about linearly in ``n`` from there.
The centers must also fit the memory budget: their Cholesky factor (``p^2`` numbers) in a
quarter of it, and for every training point as a center the data and a batch's kernel block.

With the default budget (:data:`DEFAULT_BUDGET_GFLOP`), every point is a center up to about
37,000 rows at 13 features, 16,700 rows at 128 features and 7,100 at 784 features; beyond,
18,700 / 8,300 / 3,500 centers. Accuracy on real tables (``benchmarks/tabular.py``) changes
little from thousands of random centers up, while time grows with ``p``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = [
    "CENTERS_PER_LIMIT",
    "DEFAULT_BUDGET_GFLOP",
    "KERNEL_COST",
    "ModelSize",
    "all_points_limit",
    "choose_model_size",
]

#: Multiply-adds one kernel entry's nonlinearity (an exp, a square root) costs, about.
KERNEL_COST = 16
#: ``compute_budget="auto"``: 10^9 multiply-adds per pass over the data (about half a second
#: per pass on a 2-core CPU of the 2020s in fp32, much less on a GPU).
DEFAULT_BUDGET_GFLOP = 40.0
#: Centers per row at the all-points limit: EigenPro 3 pays about twice per kernel entry.
CENTERS_PER_LIMIT = 0.5
#: Fewest centers ``"auto"`` uses (a smaller model is too coarse for the data it has).
MIN_AUTO_CENTERS = 1000
#: Share of the memory budget the centers' Cholesky factor may take.
FACTOR_SHARE = 0.25


@dataclass(frozen=True)
class ModelSize:
    """What ``n_centers="auto"`` chose, and why.

    Attributes
    ----------
    n_centers : int or None
        The number of centers, or None for every training point (EigenPro 2).
    all_points_limit : int
        Rows up to which every training point is a center at this budget and width.
    budget_gflop : float
        The compute budget per pass, in 10^9 multiply-adds.
    reason : str
        One sentence: the choice and the numbers behind it.
    """

    n_centers: int | None
    all_points_limit: int
    budget_gflop: float
    reason: str

    def as_dict(self) -> dict:
        """The choice as plain Python values (the fitted ``model_size_``)."""
        return asdict(self)


def all_points_limit(n_features: int, budget_gflop: float) -> int:
    """Rows ``n`` for which one EigenPro 2 pass, ``n^2 (d + c)`` multiply-adds, fits the
    budget.

    Parameters
    ----------
    n_features : int
        Features ``d`` of the data (columns after preprocessing).
    budget_gflop : float
        The compute budget per pass, in 10^9 multiply-adds.

    Returns
    -------
    int
    """
    return int(math.sqrt(budget_gflop * 1e9 / (n_features + KERNEL_COST)))


def choose_model_size(
    n_samples: int,
    n_features: int,
    n_outputs: int,
    *,
    budget_gflop: float = DEFAULT_BUDGET_GFLOP,
    memory_bytes: float = math.inf,
    itemsize: int = 4,
) -> ModelSize:
    """The model size of ``n_centers="auto"``: every training point while a pass fits the
    budget and the memory, else a fixed number of centers.

    Parameters
    ----------
    n_samples, n_features, n_outputs : int
        The training data's rows, features and target columns.
    budget_gflop : float, default=DEFAULT_BUDGET_GFLOP
        Work one pass over the data may cost, in 10^9 multiply-adds of the kernel products.
    memory_bytes : float, default=inf
        The fit's memory budget on the device.
    itemsize : int, default=4
        Bytes per number in the training dtype.

    Returns
    -------
    ModelSize

    Examples
    --------
    >>> choose_model_size(5_000, 13, 1).n_centers is None
    True
    >>> choose_model_size(100_000, 128, 1).n_centers
    8333
    """
    if budget_gflop <= 0 or not math.isfinite(budget_gflop):
        raise ValueError(f"compute_budget must be a positive number; got {budget_gflop!r}")
    limit = all_points_limit(n_features, budget_gflop)
    # Every point as a center holds the data, targets and coefficients on the device.
    resident = n_samples * (n_features + 2 * n_outputs) * itemsize
    fits = resident <= FACTOR_SHARE * memory_bytes
    if n_samples <= limit and fits:
        reason = (
            f"every training point is a center: {n_samples} rows at {n_features} features "
            f"cost {_gflop(n_samples, n_samples, n_features):.3g} of the "
            f"{budget_gflop:.3g} GFLOP a pass may take (all points up to {limit} rows)"
        )
        return ModelSize(None, limit, float(budget_gflop), reason)
    p = max(MIN_AUTO_CENTERS, int(CENTERS_PER_LIMIT * limit))
    if math.isfinite(memory_bytes):  # the centers' Cholesky factor in a quarter of memory
        p = min(p, int(math.sqrt(FACTOR_SHARE * memory_bytes / itemsize)))
    p = max(1, min(p, n_samples))
    why = (
        f"{n_samples} rows at {n_features} features are past the {limit} rows up to which "
        f"every point is a center at compute_budget={budget_gflop:.3g} GFLOP per pass"
        if n_samples > limit
        else f"{n_samples} rows of {n_features} features do not fit a quarter of the memory"
    )
    reason = (
        f"{p} centers drawn at random (EigenPro 3): {why}; a pass costs "
        f"{_gflop(n_samples, p, n_features):.3g} GFLOP and grows linearly in the rows"
    )
    return ModelSize(p, limit, float(budget_gflop), reason)


def _gflop(n: int, p: int, d: int) -> float:
    """10^9 multiply-adds of one pass: ``n p (d + c)``."""
    return n * p * (d + KERNEL_COST) / 1e9
