"""scikit-learn estimators: :class:`EigenProRegressor` and :class:`EigenProClassifier`.

The estimators validate and convert the data once, resolve device, dtype and memory budget,
build the preconditioner and hand tensors to the solver; fitted attributes are numpy arrays,
so a fitted model pickles without its device and predicts on any machine.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import joblib
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    _check_feature_names,
    _check_n_features,
    _check_sample_weight,
    _check_y,
    check_array,
    check_consistent_length,
    check_is_fitted,
    validate_data,
)

from ._device import resolve_device, resolve_dtype, resolve_memory_budget
from .calibration import fit_temperature, log_probabilities
from .diagnostics import diagnose, repeated_rows_with_other_targets
from .distributed import get_communicator
from .eigensystem import NystromSample
from .kernels import (
    KERNELS,
    Kernel,
    PrecomputedKernel,
    RadialKernel,
    ScaledKernel,
    get_kernel,
)
from .model_selection import (
    MIN_SELECTION_ROWS,
    SELECTION_EIGH_DTYPE,
    SELECTION_ROWS,
    choose,
    median_distance,
    ridge_for_size,
)
from .model_size import DEFAULT_BUDGET_GFLOP, ModelSize, choose_model_size
from .precision import PRECISIONS, choose_precision
from .preconditioner import (
    PRECISION_FLOOR,
    default_max_components,
    default_subsample_size,
    setup_bytes,
)
from .projections import INNER_KEYS, check_inner
from .solver import DivergenceError, budget_for_batch, fit, memory_plan, predict
from .streaming import HostData, is_streamable
from .targets import TargetScaler
from .threads import fit_work, limited_threads, thread_count

__all__ = ["EigenProRegressor", "EigenProClassifier", "auto_bandwidth"]

#: A leave-one-out R^2 below this warns that the model predicts held-out rows worse than the
#: targets' mean (a little below 0 is the mean itself, measured with noise).
NO_SKILL = -0.01
#: Epochs at most with ``n_epochs="auto"``; the fit stops earlier when the training loss
#: converges (``tol``).
MAX_AUTO_EPOCHS = 100
#: Rows on which the data are checked against the kernel (:func:`eigenpro.diagnostics.diagnose`).
DIAGNOSIS_SAMPLE = 10000
#: A memory budget that limits batches to less than 1 / this of the batch the data and device
#: would use gets a warning.
BUDGET_WARNING_FACTOR = 4


def _is_auto(value) -> bool:
    """``value == "auto"`` for parameters that may also be arrays."""
    return isinstance(value, str) and value == "auto"


def _is_gaussian(kernel) -> bool:
    return isinstance(kernel, str) and kernel.lower() in ("gaussian", "rbf")


def _bandwidth_from_gamma(gamma, bandwidth) -> float:
    """scikit-learn's ``rbf`` parameter: ``exp(-gamma |x - z|^2)`` is the Gaussian of
    bandwidth ``1 / sqrt(2 gamma)``."""
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not 0 < gamma < math.inf:
        raise ValueError(f"kernel_params gamma must be a positive finite number; got {gamma!r}")
    if bandwidth != "auto":
        raise ValueError(
            f"got both bandwidth={bandwidth!r} and kernel_params gamma={gamma!r}; they set the "
            "same thing (bandwidth = 1 / sqrt(2 gamma)): give one"
        )
    return 1.0 / math.sqrt(2.0 * gamma)


def auto_bandwidth(X: np.ndarray, random_state=None) -> float:
    """The ``bandwidth="median"`` rule: half the median Euclidean distance between training
    points (the base of the ``"auto"`` search, :mod:`eigenpro.model_selection`).

    The median is taken over all pairs of at most 1000 randomly chosen rows. Half the median
    puts a typical pair at kernel value ``exp(-2)`` for the Gaussian kernel (on MNIST it
    gives 5.1, the bandwidth of the EigenPro paper). Falls back to 1.0 when all rows
    coincide.
    """
    rng = check_random_state(random_state)
    if X.shape[0] > SELECTION_ROWS:
        X = X[rng.choice(X.shape[0], SELECTION_ROWS, replace=False)]
    return 0.5 * median_distance(X, fallback=2.0)


@contextmanager
def _atomic_fit(estimator: BaseEstimator):
    """A fit replaces the fitted state as one step: the previous fit's attributes are set
    aside when it starts (so none survives beside the new ones, whatever path set them) and
    put back if it fails or is interrupted (``KeyboardInterrupt`` included), leaving the
    estimator exactly as it was."""
    previous = {k: v for k, v in vars(estimator).items() if _is_fitted_attribute(k)}
    for name in previous:
        delattr(estimator, name)
    try:
        yield previous
    except BaseException:
        for name in [k for k in vars(estimator) if _is_fitted_attribute(k)]:
            delattr(estimator, name)
        vars(estimator).update(previous)
        raise


def _reusable_nystrom(selection, dtype: torch.dtype) -> NystromSample | None:
    """The model selection's subsample with the eigensystem of its chosen kernel, for the
    EigenPro 2 preconditioner (:func:`~eigenpro.solver.fit`'s ``nystrom``): None when
    nothing was selected, the selection was weighted, or the training dtype resolves more
    than the selection's eigendecomposition (float64 fits compute their own)."""
    if selection is None or selection.eigensystem is None or selection.rows is None:
        return None
    if torch.finfo(dtype).eps < np.finfo(SELECTION_EIGH_DTYPE).eps:
        return None
    return NystromSample.from_kernel_matrix(selection.rows, *selection.eigensystem)


def _warn_if_no_better_than_the_mean(selection, searched: bool) -> None:
    """A model whose held-out (leave-one-out) predictions are worse than the targets' mean
    would score R^2 < 0 on new data: say so, rather than return it silently."""
    score = selection.best_score
    if not score < NO_SKILL:
        return
    what = "any bandwidth and ridge searched" if searched else "the given bandwidth and ridge"
    warnings.warn(
        f"with {what}, the kernel model predicts held-out rows of a {selection.n_rows}-row "
        f"subsample worse than the targets' mean (leave-one-out R^2 = {score:.3g}): the "
        "features may not predict the target, or need rescaling (a StandardScaler in a "
        "Pipeline), or another kernel",
        UserWarning,
        stacklevel=5,
    )


def _arguments(frame_locals: dict) -> dict:
    """An ``__init__``'s arguments, from its ``locals()``."""
    return {k: v for k, v in frame_locals.items() if k not in ("self", "__class__")}


def _is_fitted_attribute(name: str) -> bool:
    return name.endswith("_") and not name.startswith("__")


#: Parameters a warm start may change: the others define the problem being continued.
CONTINUABLE_PARAMS = frozenset(
    {"n_epochs", "tol", "verbose", "warm_start", "n_iter_no_change", "memory_gb", "device",
     "batch_size", "step_size", "random_state", "probability", "n_threads"}
)  # fmt: skip
#: Entries of a precomputed kernel matrix compared with its transpose at a time.
SYMMETRY_BLOCK_ELEMENTS = 2**22
#: Rows of a sparse ``X`` densified at a time for prediction.
SPARSE_ROWS = 4096
#: Rows that identify the training data for a warm start (:func:`_fingerprint`).
FINGERPRINT_ROWS = 2000


def _fingerprint(data: HostData, in_memory: bool, Y, sample_weight, params: dict) -> str:
    """A hash of the training problem: the data (up to :data:`FINGERPRINT_ROWS` evenly
    spaced rows, and for data in memory the column sums of all of them), targets, weights
    and parameters. A few milliseconds where hashing all the data would take a share of a
    small fit (60 ms for 10000 MNIST images)."""
    n = data.n_samples
    rows = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).astype(np.int64))
    sample = data.take(rows, torch.float64, torch.device("cpu")).numpy()
    sums = None
    if in_memory:  # a streamed memmap is not read whole for this
        X = data.X if data.rows is None else data.X[data.rows]
        sums = X.sum(axis=0, dtype=np.float64)
    return joblib.hash((n, data.n_features, sample, sums, Y, sample_weight, params))


def _validate_sample_weight(sample_weight, n: int) -> np.ndarray | None:
    """Finite non-negative float64 weights of shape (n,), not all zero; None stays None."""
    if sample_weight is None:
        return None
    sample_weight = _check_sample_weight(
        _to_numpy(sample_weight), np.empty((n, 0)), dtype=np.float64, ensure_non_negative=True
    )
    if not np.isfinite(sample_weight).all():
        raise ValueError("sample_weight contains NaN or infinity")
    return sample_weight


def _sample_rows(X: np.ndarray, seed: int) -> np.ndarray:
    """At most :data:`DIAGNOSIS_SAMPLE` rows of ``X``, in float64."""
    if X.shape[0] > DIAGNOSIS_SAMPLE:
        X = X[np.sort(np.random.default_rng(seed).choice(X.shape[0], DIAGNOSIS_SAMPLE, False))]
    return np.asarray(X, dtype=np.float64)


def _to_numpy(data):
    """Torch tensors (on any device) become numpy arrays; anything else passes through."""
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy()
    return data


def _held_out_split(n: int, fraction: float, seed: int, stratify=None):
    """Sorted ``(train, held_out)`` positions; stratified by ``stratify`` (class codes)
    where every class can appear on both sides, else at random."""
    if stratify is not None:
        n_classes = int(np.max(stratify)) + 1
        n_held = math.ceil(fraction * n)
        if min(n_held, n - n_held) < n_classes or np.bincount(stratify).min() < 2:
            stratify = None
    train, held = train_test_split(
        np.arange(n), test_size=fraction, random_state=seed, stratify=stratify
    )
    return np.sort(train), np.sort(held)


def _rows(X, positions: np.ndarray) -> np.ndarray:
    """Rows of validated training data (numpy, or :class:`HostData`) as float64 numpy."""
    if isinstance(X, HostData):
        return X.take(positions, torch.float64, torch.device("cpu")).numpy()
    return np.asarray(X[positions], dtype=np.float64)


def _as_tensor(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    array = np.asarray(array, dtype=np_dtype)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np_dtype, order="C")  # torch needs writable contiguous memory
    return torch.from_numpy(array).to(device)


def _score_eval_sets(eval_tensors, predict_fn) -> dict:
    """Score each ``(X_eval, scorer)`` pair on ``predict_fn(X_eval)``; the history record of
    the epoch gets the scores and the seconds they took (outside the epoch's clock)."""
    start = time.perf_counter()
    scores = [float(scorer(predict_fn(Xe).double().cpu().numpy())) for Xe, scorer in eval_tensors]
    return {"eval_scores": scores, "eval_seconds": time.perf_counter() - start}


def _validation(held: tuple, score, scaler: TargetScaler) -> tuple:
    """``(X_val, rate(predictions) -> score)`` for the solver: its predictions are in the
    scaled target units and are brought back before scoring."""
    X_val, Y_val, w_val = held

    def rate(pred: torch.Tensor) -> float:
        pred = scaler.inverse_transform(pred.double().cpu().numpy())
        return score(Y_val, pred, sample_weight=w_val)

    return X_val, rate


class _Weighting:
    """Sample weights as a diagonal scaling of the kernel (:class:`~eigenpro.kernels.ScaledKernel`).

    The weighted problem ``(W K + alpha I) c = W y`` (:class:`~sklearn.kernel_ridge.KernelRidge`
    with ``sample_weight``) is EigenPro on ``S K S`` with ``S = diag(sqrt(w))``, targets
    ``S y`` and ``c = S c'``; on general centers (scale 1) it is the weighted least-squares
    fit. The weights are divided by their mean first, and ``alpha`` with them (the same
    solution): unit weights on average keep the automatic step rules' scale. Without weights
    every method returns its input.
    """

    def __init__(self, sample_weight: np.ndarray | None, alpha: float):
        self.ridge = alpha
        self.root = None
        if sample_weight is not None:
            mean = float(sample_weight.mean())
            if not mean > 0:
                raise ValueError(
                    "sample_weight is zero on every training row left after holding out "
                    "validation rows (early_stopping or probability): nothing to fit"
                )
            self.ridge = alpha / mean
            self.root = np.sqrt(sample_weight / mean)

    def kernel(self, kernel: Kernel) -> Kernel:
        return kernel if self.root is None else ScaledKernel(kernel)

    def data(self, data: HostData) -> HostData:
        return data if self.root is None else data.with_column(self.root)

    def targets(self, Y: np.ndarray) -> np.ndarray:
        return Y if self.root is None else Y * self.root[:, None]

    def centers(self, centers: torch.Tensor | None) -> torch.Tensor | None:
        if self.root is None or centers is None:
            return centers
        return torch.cat([centers, centers.new_ones(centers.shape[0], 1)], dim=1)

    def coefficients(self, coef: torch.Tensor, *, on_data: bool) -> np.ndarray:
        """The fitted coefficients in the original kernel's terms."""
        coef = coef.numpy()
        if self.root is None or not on_data:
            return coef
        return (coef * self.root[:, None]).astype(coef.dtype)


class _BaseEigenPro(BaseEstimator):
    """Shared fitting and prediction; subclasses define targets and scores."""

    _parameter_constraints: dict = {
        "kernel": [StrOptions(set(KERNELS) | {"precomputed"}), callable, Kernel],
        "bandwidth": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto", "median"})],
        "kernel_params": [dict, None],
        "n_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "n_components": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "subsample_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "step_size": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "memory_gb": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "fit_intercept": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "n_centers": [
            None,
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            "array-like",
        ],
        "compute_budget": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "inner_params": [dict, None],
        "device": [str, torch.device],
        "dtype": "no_validation",  # checked by resolve_dtype, which names the problem
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "n_threads": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "precision": [StrOptions(set(PRECISIONS))],
    }

    def __init__(self, **params):
        """Store the parameters as given (each public class spells out its signature, which
        scikit-learn reads, and names itself in errors about unknown keywords)."""
        vars(self).update(params)

    @contextmanager
    def _own_threads(self, X=None, fitting: bool = False):
        """Every thread pool at this estimator's thread count (:mod:`eigenpro.threads`)
        for the enclosed calls on ``X``; a fit records it in ``n_threads_``."""
        if fitting:
            self._validate_params()  # before the count: n_threads is one of the parameters
        shape = getattr(X, "shape", None)
        work = None
        if shape is not None and len(shape) == 2:
            n, d = int(shape[0]), int(shape[1])
            p = self.centers_.shape[0] if not fitting else n
            work = fit_work(n, d, SELECTION_ROWS) if fitting else 2.0 * n * p * (d + 16)
        choice = thread_count(getattr(self, "n_threads", "auto"), work)
        with limited_threads(choice.n_threads):
            if fitting:
                self.n_threads_ = choice.n_threads
                if self.verbose:
                    print(f"[EigenPro] threads: {choice.reason}")
            yield choice

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        self._validate_params()
        for name in ("bandwidth", "step_size", "memory_gb", "alpha", "compute_budget"):
            value = getattr(self, name)
            if not isinstance(value, str) and not np.isfinite(value):
                raise ValueError(f"{name} must be finite; got {value!r}")
        if self._precomputed and not (
            self.n_centers is None
            or isinstance(self.n_centers, Integral)
            or _is_auto(self.n_centers)
        ):
            raise ValueError(
                "kernel='precomputed' takes n_centers='auto', None or an int (centers drawn "
                "from the training points); centers given as points need the kernel itself"
            )

    @property
    def _max_epochs(self) -> int:
        """Epochs at most: ``n_epochs``, or :data:`MAX_AUTO_EPOCHS` for ``"auto"``."""
        return MAX_AUTO_EPOCHS if self.n_epochs == "auto" else int(self.n_epochs)

    @property
    def _precomputed(self) -> bool:
        return isinstance(self.kernel, str) and self.kernel == "precomputed"

    def _validate_kernel_matrix(self, K, y, *, multi_output: bool, y_numeric: bool):
        """``kernel="precomputed"``: the training kernel matrix, square and symmetric."""
        K, y = validate_data(
            self, _to_numpy(K), _to_numpy(y), dtype=[np.float64, np.float32],
            accept_sparse="csr", multi_output=multi_output, y_numeric=y_numeric,
        )  # fmt: skip
        K = K.toarray() if sp.issparse(K) else K
        if K.shape[0] != K.shape[1]:
            raise ValueError(
                f"kernel='precomputed' needs the square (n_samples, n_samples) kernel matrix of "
                f"the training points as X; got shape {K.shape}"
            )
        scale = max(float(np.abs(np.diagonal(K)).max()), np.finfo(np.float64).tiny)
        rows = max(1, SYMMETRY_BLOCK_ELEMENTS // K.shape[0])  # n x n temporaries: never
        if not all(
            np.allclose(K[i : i + rows], K[:, i : i + rows].T, rtol=0.0, atol=1e-6 * scale)
            for i in range(0, K.shape[0], rows)
        ):
            raise ValueError(
                "kernel='precomputed': X is not symmetric; a kernel matrix K(X_train, X_train) "
                "must be (EigenPro would not converge)"
            )
        return K, y

    def _validate_fit_data(self, X, y, *, multi_output: bool, y_numeric: bool):
        """Validate ``(X, y)`` for ``fit``; returns ``X`` (numpy, or :class:`HostData` when
        ``n_centers`` is set) and ``y`` (numpy).

        With ``n_centers`` set, numpy arrays, memmaps and CPU tensors are not copied: only
        their shape and type are checked here, and the values batch by batch while fitting.
        """
        if sp.issparse(y):
            raise TypeError(
                "y is a scipy.sparse matrix; EigenPro needs dense targets: pass y.toarray()"
            )
        if self._precomputed:  # the matrix, as it is; _fit_targets turns it into a kernel
            K, y = self._validate_kernel_matrix(
                X, y, multi_output=multi_output, y_numeric=y_numeric
            )
            self._size_model(*K.shape, y, matrix=True)
            return K, y
        streamable = is_streamable(X)
        if streamable:  # the model size from the shape, before anything is read
            self._size_model(*X.shape, y)
        if not streamable or self._centers_spec is None:
            X, y = validate_data(
                self, _to_numpy(X), _to_numpy(y), dtype=[np.float64, np.float32],
                accept_sparse="csr", multi_output=multi_output, y_numeric=y_numeric,
            )  # fmt: skip
            if not streamable:
                self._size_model(*X.shape, y)
            if self._centers_spec is not None:
                return HostData(X), y
            # EigenPro 2: the training points are the centers, held dense on the device
            return (X.toarray() if sp.issparse(X) else X), y
        n, d = X.shape
        if n < 1:
            raise ValueError(f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a "
                             "minimum of 1 is required.")  # fmt: skip
        if d < 1:
            raise ValueError(f"Found array with 0 feature(s) (shape={tuple(X.shape)}) while a "
                             "minimum of 1 is required.")  # fmt: skip
        _check_feature_names(self, X, reset=True)
        _check_n_features(self, X, reset=True)
        y = _check_y(_to_numpy(y), multi_output=multi_output, y_numeric=y_numeric, estimator=self)
        check_consistent_length(np.empty((n, 0)), y)
        return HostData(X), y

    def _size_model(self, n: int, d: int, y, matrix: bool = False) -> None:
        """Resolve ``n_centers`` for this fit into ``_centers_spec`` (None: every training
        point; an int or the centers given) and record ``model_size_``
        (:mod:`eigenpro.model_size`)."""
        self._centers_spec = self.n_centers
        if not _is_auto(self.n_centers):
            self.model_size_ = None
            return
        if matrix:  # the n x n matrix exists already: every point is a center
            size = ModelSize(None, n, math.nan, "kernel='precomputed': every training point "
                             "is a center (the kernel matrix is given whole)")  # fmt: skip
        else:
            n_outputs = 1 if np.ndim(y) < 2 else int(np.shape(y)[1])
            device = resolve_device(self.device)
            size = choose_model_size(
                int(n), int(d), n_outputs,
                budget_gflop=DEFAULT_BUDGET_GFLOP if self.compute_budget == "auto"
                else float(self.compute_budget),
                memory_bytes=resolve_memory_budget(self.memory_gb, device),
                itemsize=resolve_dtype(self.dtype).itemsize,
            )  # fmt: skip
        self._centers_spec = size.n_centers
        self.model_size_ = size.as_dict()
        if self.verbose:
            print(f"n_centers='auto': {size.reason}")

    def _validate_X(self, X, reset: bool):
        return validate_data(
            self, _to_numpy(X), reset=reset, dtype=[np.float64, np.float32], accept_sparse="csr"
        )

    def _continued(self, previous: dict) -> dict | None:
        """The state a warm start continues from (None: start afresh)."""
        return previous.get("_warm_state_") if self.warm_start else None

    def _fit_targets(
        self, X, Y: np.ndarray, score, stratify=None, eval_scorers=(), sample_weight=None,
        previous=None,
    ):  # fmt: skip
        """Fit coefficients for the 2-d float targets ``Y``: resolve device, dtype, budget,
        seed, held-out split, bandwidth and centers once, then run the solver.

        ``X`` is a numpy array (EigenPro 2, moved to the device whole) or a
        :class:`~eigenpro.streaming.HostData` (``n_centers`` set: streamed from the host).
        ``score(Y_true, Y_pred, sample_weight)`` rates the validation set when early stopping;
        ``eval_scorers`` are ``(X_eval, scorer(Y_pred) -> float)`` pairs recorded per epoch.
        In a ``torch.distributed`` process group with several ranks, the centers are sharded
        across the ranks (every rank must call ``fit`` with the same data).
        ``sample_weight``: validated non-negative weights, or None. ``previous``: the
        ``_warm_state_`` of the fit a warm start continues, used when the problem is the same.
        Returns the positions of the rows held out for early stopping (None without) and
        ``(rows, outputs)``: the leave-one-out outputs of the model selection's subsample
        (:mod:`eigenpro.model_selection`), in the targets' units, or None.
        """
        comm = get_communicator()
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype)
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        budget = resolve_memory_budget(self.memory_gb, device)
        random_state = check_random_state(self.random_state)
        seed = comm.broadcast_int(int(random_state.randint(np.iinfo(np.int32).max)), device)
        rng = np.random.default_rng(seed)
        if self.inner_params is not None:
            check_inner(self.inner_params)
        matrix = None
        if self._precomputed:  # the points are the rows' indices into the kernel matrix
            matrix, X = X, np.arange(X.shape[0], dtype=np_dtype)[:, None]
        in_memory = not isinstance(X, HostData)
        data = HostData(X) if in_memory else X
        fingerprint = _fingerprint(
            data if matrix is None else HostData(matrix), in_memory, Y, sample_weight,
            self._problem(),
        )  # fmt: skip
        previous = self._check_continuation(previous, fingerprint)
        if previous is not None:  # the same split, bandwidth and centers; the batches go on
            seed = previous["seed"]
            rng.bit_generator.state = previous["rng_state"]

        val_pos = held = None
        if self.early_stopping:
            val_pos, data, Y, sample_weight, held = self._hold_out(
                data, Y, sample_weight, seed, stratify, (dtype, device)
            )
        n = data.n_samples
        scaler = self._target_scaler(Y, sample_weight)
        Y = scaler.transform(Y)
        kernel, bandwidth, alpha, selection, diagnosis = self._kernel_and_diagnosis(
            data, Y, seed, in_memory, matrix, sample_weight, held_out=val_pos is None
        )
        spec = self._centers_spec
        centers = None if spec is None else self._centers(spec, data, rng, np_dtype)
        if previous is not None and centers is not None:
            centers = torch.from_numpy(previous["centers"])
        weighted = _Weighting(sample_weight, alpha)
        validation = None if held is None else _validation(held, score, scaler)
        callback = None
        if eval_scorers:
            eval_tensors = [(_as_tensor(Xe, dtype, device), scorer) for Xe, scorer in eval_scorers]

            def callback(epoch: int, predict_fn, record: dict) -> dict:
                return _score_eval_sets(
                    eval_tensors, lambda X: scaler.inverse_transform(predict_fn(X))
                )

        try:
            result = fit(
                weighted.kernel(kernel), weighted.data(data),
                torch.from_numpy(np.array(weighted.targets(Y), dtype=np_dtype, order="C")),
                centers=weighted.centers(centers), device=device, dtype=dtype,
                n_epochs=self._max_epochs, memory_budget=budget, batch_size=self.batch_size,
                step_size=self.step_size, n_components=self.n_components,
                subsample_size=self.subsample_size, inner=self.inner_params,
                ridge=weighted.ridge, rng=rng, comm=comm,
                validation=validation,
                n_iter_no_change=self.n_iter_no_change, tol=self.tol,
                output_scale=scaler.scale,
                callback=callback, verbose=self.verbose if comm.rank == 0 else 0,
                no_exact_fit="; ".join(diagnosis.reasons) or None,
                warm=None if previous is None else previous["warm"],
                nystrom=_reusable_nystrom(selection, dtype) if spec is None else None,
            )  # fmt: skip
        except DivergenceError as exc:
            precond = getattr(exc, "preconditioner", None)
            cause = self._likely_cause(precond, getattr(exc, "batch_size", None), dtype, diagnosis)
            raise DivergenceError(f"{exc} {cause}") from None

        p = n if centers is None else int(centers.shape[0])
        self._warn_if_budget_binds(result, p, data.n_features, Y.shape[1], device, dtype,
                                   on_data=centers is None)  # fmt: skip
        if centers is None:
            centers = data.take(np.arange(n), dtype, torch.device("cpu"))
        self.centers_ = centers.numpy()
        if matrix is not None:  # the centers' indices among the training points
            self.centers_ = self.centers_[:, 0].astype(np.int64)
        self.dual_coef_ = scaler.coefficients(
            weighted.coefficients(result.coef, on_data=spec is None)
        )
        self.intercept_ = scaler.offset.copy()
        self.n_centers_ = p
        self.kernel_ = kernel
        self.bandwidth_ = float(kernel.bandwidth) if isinstance(kernel, RadialKernel) else None
        self.alpha_ = float(alpha)
        self.selection_ = None if selection is None else selection.as_dict()
        if matrix is not None:  # predictions read the test rows of K; keep no n x n copy
            self.kernel_ = "precomputed"
        self._set_solver_attributes(result, device)
        self.inner_params_ = None
        if spec is not None:
            self.inner_params_ = {key: result.inner.get(key) for key in INNER_KEYS}
        if previous is not None:
            self._append_history(previous)
        self._warm_state_ = {
            "fingerprint": fingerprint, "seed": seed, "rng_state": rng.bit_generator.state,
            "warm": result.warm, "centers": centers.numpy(), "history": self.history_,
            "n_iter": self.n_iter_, "best_epoch": self.best_epoch_, "dual_coef": self.dual_coef_,
        }  # fmt: skip
        loo = None
        if selection is not None and selection.loo_predictions is not None:
            loo = (selection.rows, scaler.inverse_transform(selection.loo_predictions))
        return val_pos, loo

    def _target_scaler(self, Y: np.ndarray, sample_weight) -> TargetScaler:
        """The intercept (``fit_intercept``) and scale of the solver's targets
        (:mod:`eigenpro.targets`); the classifier's indicators are not scaled."""
        return TargetScaler.fit(
            Y, sample_weight, center=self.fit_intercept, scale=self._scales_targets
        )

    _scales_targets = True
    #: Whether held-out outputs of the selection's subsample are wanted (the classifier's
    #: probabilities), even when nothing is searched.
    _calibrates_on_selection = False

    def _problem(self) -> dict:
        """The parameters that define the problem a warm start continues (callables by
        identity)."""
        return {
            k: _to_numpy(v) if isinstance(v, (np.ndarray, torch.Tensor)) else repr(v)
            for k, v in self.get_params().items()
            if k not in CONTINUABLE_PARAMS
        }

    def _hold_out(self, data: HostData, Y, sample_weight, seed, stratify, on):
        """Early stopping's split: ``(held-out positions, training data, targets, weights,
        (X_val on the device, Y_val, weights of the held-out rows))``; ``on`` is
        ``(dtype, device)``."""
        n = data.n_samples
        if n < 2:
            raise ValueError("early_stopping=True needs at least 2 samples to hold some out")
        train_pos, val_pos = _held_out_split(n, self.validation_fraction, seed, stratify)
        X_val, Y_val = data.take(val_pos, *on), Y[val_pos]
        w_val = None if sample_weight is None else sample_weight[val_pos]
        if sample_weight is not None:
            sample_weight = sample_weight[train_pos]
        held = (X_val, Y_val, w_val)
        return val_pos, data.subset(train_pos), Y[train_pos], sample_weight, held

    def _check_continuation(self, previous: dict | None, fingerprint: str) -> dict | None:
        """``previous`` when it fitted the same problem; else None, with a warning."""
        if previous is None or previous["fingerprint"] == fingerprint:
            return previous
        warnings.warn(
            "warm_start=True, but the training data, targets, weights or the parameters that "
            f"define the problem (all but {sorted(CONTINUABLE_PARAMS)}) changed since the last "
            "fit: starting afresh",
            UserWarning,
            stacklevel=5,
        )
        return None

    def _append_history(self, previous: dict) -> None:
        """Number this fit's epochs after the continued fit's and keep its history; with
        early stopping, keep the continued fit's coefficients if no epoch of this one scored
        higher than its best (as one long fit would)."""
        offset = previous["n_iter"]
        for record in self.history_:
            record["epoch"] += offset
        self.history_ = previous["history"] + self.history_
        self.n_iter_ += offset
        self.best_epoch_ += offset
        scores = [r["val_score"] for r in self.history_]
        if self.early_stopping and None not in scores:
            before = scores[previous["best_epoch"] - 1]
            if before >= max(scores[offset:], default=-np.inf):  # ties: the earlier, as one fit
                self.dual_coef_, self.best_epoch_ = previous["dual_coef"], previous["best_epoch"]

    def _kernel_and_diagnosis(
        self, data: HostData, Y: np.ndarray, seed: int, in_memory: bool, matrix=None,
        sample_weight=None, held_out: bool = False,
    ):  # fmt: skip
        """The kernel and the ridge (``"auto"`` ones chosen on a sample of rows by
        :func:`~eigenpro.model_selection.choose`; ``matrix``: the precomputed kernel
        matrix), what was searched, and what the data allow
        (:func:`~eigenpro.diagnostics.diagnose`). ``Y``: the solver's (centred) targets."""
        n = data.n_samples
        sample = np.arange(n)
        if n > SELECTION_ROWS:
            sample = np.sort(check_random_state(seed).choice(n, SELECTION_ROWS, replace=False))
        rows = data.take(sample, torch.float64, torch.device("cpu")).numpy()
        make_kernel, radial, bandwidth = self._kernel_factory(matrix)
        root = None
        if sample_weight is not None and sample_weight.mean() > 0:
            root = np.sqrt(sample_weight[sample] / sample_weight.mean())
        bandwidth, alpha, selection = choose(
            make_kernel, rows, Y[sample], bandwidth=bandwidth, alpha=self.alpha,
            n_train=n, radial=radial, root_weights=root,
            score_given=held_out and self._calibrates_on_selection,
        )  # fmt: skip
        if selection is not None:
            selection.rows = sample
            _warn_if_no_better_than_the_mean(selection, self._searched())
        kernel = make_kernel(bandwidth)
        kernel = self._kernel_precision(kernel, rows, Y[sample], alpha, selection, n)
        if in_memory:  # the whole data are at hand: check them all
            X = data.X if data.rows is None else data.X[data.rows]
            single = bool(np.ptp(X, axis=0).max() == 0)
            repeated = repeated_rows_with_other_targets(X, Y)
            rows = _sample_rows(X, seed)
        else:  # a constant sample proves a single distinct row only when it is the whole data
            single, repeated = len(rows) == n and bool(np.ptp(rows, axis=0).max() == 0), 0
        diagnosis = diagnose(
            kernel, rows, resolve_dtype(self.dtype), single_row=single, repeated=repeated,
            bandwidth_fixed=not isinstance(self.bandwidth, str) or self._gamma_given(),
            ridge=alpha,
        )  # fmt: skip
        return kernel, bandwidth, alpha, selection, diagnosis

    def _kernel_precision(self, kernel, rows, Y_rows, alpha: float, selection, n: int):
        """``kernel`` with the precision of its products (:mod:`eigenpro.precision`), chosen
        on the selection's ``rows`` and recorded in ``precision_`` and ``precision_check_``;
        every rank takes rank 0's choice."""
        spec = self._centers_spec
        p = n if spec is None else (int(spec) if isinstance(spec, Integral) else len(spec))
        s = rows.shape[0]
        alpha_rows = selection.alpha if selection is not None else ridge_for_size(alpha, n, s)
        device = resolve_device(self.device)
        choice = choose_precision(
            self.precision, kernel, rows, Y_rows, alpha_rows, dtype=resolve_dtype(self.dtype),
            device=device, work=2.0 * n * p * (rows.shape[1] + 16), n_features=rows.shape[1],
        )  # fmt: skip
        bf16 = get_communicator().broadcast_int(int(choice.precision == "bf16"), device)
        self.precision_ = "bf16" if bf16 else "ieee"
        self.precision_check_ = choice.as_dict()
        if self.verbose:
            print(f"[EigenPro] precision: {choice.reason}")
        if not bf16:
            return kernel
        # one origin for every bf16 block: the selection rows' mean, the same on every rank
        return kernel.with_precision("bf16", origin=np.asarray(rows, dtype=np.float64).mean(0))

    def _centers(self, spec, data: HostData, rng: np.random.Generator, np_dtype) -> torch.Tensor:
        """The centers ``spec`` (a number, or the points) on the host, in the training
        dtype."""
        n = data.n_samples
        if isinstance(spec, Integral):
            p = int(spec)
            if p > n:
                raise ValueError(
                    f"n_centers={p} is larger than the number of training samples ({n})"
                )
            idx = np.sort(rng.choice(n, size=p, replace=False))
            return data.take(idx, resolve_dtype(self.dtype), torch.device("cpu"))
        array = check_array(_to_numpy(spec), dtype=[np.float64, np.float32], input_name="n_centers")
        if array.shape[1] != data.n_features:
            raise ValueError(
                f"n_centers has {array.shape[1]} features, but X has {data.n_features} "
                "features; the centers must live in the same space as the data"
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np_dtype))

    def _gamma_given(self) -> bool:
        """True when ``kernel_params`` sets the Gaussian's scale as scikit-learn's gamma."""
        return _is_gaussian(self.kernel) and "gamma" in (self.kernel_params or {})

    def _searched(self) -> bool:
        """Whether the bandwidth or the ridge is chosen from the data."""
        return self.alpha == "auto" or (self.bandwidth == "auto" and not self._gamma_given())

    def _kernel_factory(self, matrix=None):
        """``(make_kernel(bandwidth) -> Kernel, whether it has a bandwidth, the bandwidth
        asked for)``; scikit-learn's ``gamma`` in ``kernel_params`` fixes the Gaussian's."""
        if matrix is not None:
            kernel = PrecomputedKernel(torch.from_numpy(matrix))
            return (lambda bandwidth: kernel), False, None
        bandwidth, params = self.bandwidth, dict(self.kernel_params or {})
        if self._gamma_given():
            bandwidth = _bandwidth_from_gamma(params.pop("gamma"), bandwidth)
        radial = isinstance(self.kernel, str) and issubclass(
            KERNELS[self.kernel.lower()], RadialKernel
        )
        if not radial:
            kernel = get_kernel(self.kernel, **params)
            return (lambda bandwidth: kernel), False, None
        return (lambda h: get_kernel(self.kernel, bandwidth=float(h), **params)), True, bandwidth

    def _warn_if_budget_binds(self, result, n, d, n_out, device, dtype, *, on_data: bool):
        """Warn when ``memory_gb`` shrank the Nystrom subsample, forced plain SGD (q = 0), or
        holds batches far below the critical batch size, and say what budget would not
        (``on_data``: the training points are the centers, EigenPro 2)."""
        if self.memory_gb == "auto":
            return
        precond, plan, batch = result.preconditioner, result.plan, result.batch_size
        s = int(result.subsample_size)
        s_default = default_subsample_size(n) if self.subsample_size == "auto" else s
        problems = []
        if s < s_default:
            problems.append(f"shrinks the Nystrom subsample to {s} points (default {s_default})")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        needed = itemsize * n * (d + n_out) + setup_bytes(s_default, d, n)
        if on_data:
            roomy = memory_plan(n, d, n_out, s_default, device, dtype, 2**62).max_batch_size
            binds = self.batch_size == "auto" and plan.max_batch_size < min(roomy, n)
            if binds and precond.n_components == 0 and self.n_components == "auto":
                problems.append(
                    f"leaves room for batches of {batch} points only, too few for any "
                    "preconditioning (q=0: plain kernel SGD)"
                )
            elif binds and BUDGET_WARNING_FACTOR * batch <= precond.critical_batch_size:
                problems.append(
                    f"limits batches to {batch} points, far below the critical batch size "
                    f"{precond.critical_batch_size:.0f}"
                )
            wanted = int(min(roomy, n, max(batch, precond.critical_batch_size)))
            needed = max(needed, budget_for_batch(n, d, n_out, s_default, dtype, wanted))
        if problems:
            warnings.warn(
                f"memory_gb={self.memory_gb} " + " and ".join(problems) + ": the fit is right "
                "but converges more slowly per epoch or takes more, smaller steps. "
                f"memory_gb={needed / 2**30:.2g} would not.",
                UserWarning,
                stacklevel=4,
            )

    def _likely_cause(self, precond, batch_size, dtype: torch.dtype, diagnosis) -> str:
        """The likely cause of a divergence the solver could not recover from (``precond``:
        the preconditioner used, if one was built)."""
        if self.step_size != "auto":
            auto = "" if precond is None else (
                f" (step_size='auto' would use {precond.step_size(batch_size):.3g})"
            )  # fmt: skip
            return (
                f"Likely cause: step_size={self.step_size:g} is above the stable step for this "
                f"problem{auto}."
            )
        if not isinstance(self.kernel, str):
            return (
                "Likely cause: the kernel is not positive semi-definite on this data; EigenPro "
                "needs a symmetric positive semi-definite kernel."
            )
        s = self.subsample_size if precond is None else int(precond.subsample_indices.numel())
        q = self.n_components if precond is None else precond.n_components
        if q != "auto" and s != "auto" and q > default_max_components(s):
            return (
                f"Likely cause: n_components={q} is too many for "
                f"subsample_size={s}; use fewer components or a larger subsample."
            )
        if not diagnosis.exact_fit:
            return (
                f"Likely cause: the data have no exact fit ({'; '.join(diagnosis.reasons)}) and "
                "the noise of the stochastic steps kept the loss above the zero model's; set "
                "alpha > 0 or a smaller step_size."
            )
        if (
            precond is not None
            and dtype == torch.float32
            and precond.n_components
            and (precond.tail_eigenvalue / precond.top_eigenvalue < 10 * PRECISION_FLOOR[dtype])
        ):
            return "Likely cause: float32 round-off at this step size; try dtype='float64'."
        return (
            "The kernel matrix may be too ill-conditioned for this step; try alpha > 0 (ridge), "
            "a smaller step_size, or dtype='float64'."
        )

    def _set_solver_attributes(self, result, device) -> None:
        """The fitted attributes every path shares: what the solver chose and did."""
        precond = result.preconditioner
        self.n_components_ = precond.n_components
        self.subsample_size_ = int(result.subsample_size)
        self.batch_size_ = int(result.batch_size)
        self.step_size_ = float(result.step_size)
        self.eigenvalues_ = precond.eigenvalues.cpu().numpy()
        self.top_eigenvalue_ = precond.top_eigenvalue
        self.tail_eigenvalue_ = precond.tail_eigenvalue
        self.beta_ = precond.beta
        self.critical_batch_size_ = precond.critical_batch_size
        self.n_iter_ = result.n_epochs
        self.best_epoch_ = result.best_epoch
        self.history_ = result.history
        self.device_ = str(device)
        self.world_size_ = result.world_size

    def _eval_sets(self, eval_set, make_scorer, *, numeric: bool):
        """Validate ``eval_set`` (a list of ``(X, y)`` pairs) into ``(X, scorer)`` pairs, before
        any training: errors name the pair (``eval_set[i]``)."""
        if eval_set is None:
            return []
        if not isinstance(eval_set, (list, tuple)) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in eval_set
        ):
            raise TypeError("eval_set must be a list of (X, y) pairs")
        out = []
        for i, (X_eval, y_eval) in enumerate(eval_set):
            name = f"eval_set[{i}]"
            if sp.issparse(y_eval):
                raise TypeError(f"{name}: y is a scipy.sparse matrix; pass y.toarray()")
            try:
                X_eval = self._validate_X(X_eval, reset=False)
                X_eval = X_eval.toarray() if sp.issparse(X_eval) else X_eval
                y_eval = np.asarray(_to_numpy(y_eval))
                if numeric or y_eval.dtype.kind in "fc":
                    y_eval = check_array(
                        y_eval, ensure_2d=False, dtype=np.float64 if numeric else None,
                        input_name="y",
                    )  # fmt: skip
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            if y_eval.shape[0] != X_eval.shape[0]:
                raise ValueError(
                    f"{name} has inconsistent numbers of samples: {X_eval.shape[0]} rows in X "
                    f"and {y_eval.shape[0]} in y"
                )
            out.append((X_eval, make_scorer(y_eval)))
        return out

    # --------------------------------------------------------------- prediction
    def _raw_predict(self, X) -> np.ndarray:
        """``K(X, centers_) @ dual_coef_`` as float64 numpy of shape (n, l)."""
        check_is_fitted(self, "dual_coef_")
        X = self._validate_X(X, reset=False)
        with self._own_threads(X):
            return self._outputs(X)

    def _outputs(self, X) -> np.ndarray:
        """``K(X, centers_) @ dual_coef_`` for validated ``X`` (a sparse ``X`` densified
        :data:`SPARSE_ROWS` rows at a time)."""
        if sp.issparse(X):
            chunks = [
                self._outputs(X[start : start + SPARSE_ROWS].toarray())
                for start in range(0, X.shape[0], SPARSE_ROWS)
            ]
            return np.vstack(chunks)
        coef = self.dual_coef_.reshape(self.centers_.shape[0], -1)
        if isinstance(self.kernel_, str):  # precomputed: X is K(X_test, X_train)
            out = np.asarray(X[:, self.centers_] @ coef.astype(np.float64), dtype=np.float64)
            return out + self.intercept_
        device = resolve_device(self.device, fallback=True)
        dtype = torch.float32 if self.dual_coef_.dtype == np.float32 else torch.float64
        centers = _as_tensor(self.centers_, dtype, device)
        coef = _as_tensor(coef, dtype, device)
        itemsize = 4 if dtype == torch.float32 else 8
        budget = resolve_memory_budget(self.memory_gb, device)
        max_block = int(min(2**25, max(2**16, budget // (3 * itemsize))))
        with torch.no_grad():
            out = predict(
                self.kernel_,
                _as_tensor(X, dtype, device),
                centers,
                coef,
                max_block_elements=max_block,
            )
        return out.cpu().numpy().astype(np.float64) + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.pairwise = self._precomputed
        return tags


class EigenProRegressor(RegressorMixin, _BaseEigenPro):
    """Kernel regression trained by EigenPro preconditioned SGD.

    Fits ``f(x) = sum_j dual_coef_j k(x_j, x)`` over the training points ``x_j`` by
    minimising the square loss with the EigenPro 2.0 iteration: mini-batch SGD whose top
    ``n_components`` kernel eigendirections are flattened by a Nystrom preconditioner, with
    the batch and step sizes chosen automatically from the data and the device. With
    ``alpha > 0`` the iteration converges to the kernel ridge solution
    ``(K + alpha I) c = y`` of :class:`sklearn.kernel_ridge.KernelRidge`; with ``alpha=0``,
    to the interpolant, and the number of epochs acts as the regulariser.

    Parameters
    ----------
    kernel : {"gaussian", "rbf", "laplacian", "cauchy", "matern", "polynomial", "linear", \
"precomputed"}, callable or Kernel, default="gaussian"
        A name, a function ``(X, Z) -> matrix`` on torch tensors, or an
        :class:`eigenpro.kernels.Kernel`. ``"precomputed"``: ``X`` is the training kernel
        matrix ``K(X_train, X_train)`` (n x n, symmetric positive semi-definite) in ``fit``,
        and ``K(X_test, X_train)`` in ``predict``, as for
        :class:`~sklearn.kernel_ridge.KernelRidge`; ``centers_`` then holds the centers'
        indices among the training points.
    bandwidth : float, "auto" or "median", default="auto"
        Bandwidth of radial kernels (``exp(-|x-z|^2 / (2 bandwidth^2))`` for the Gaussian,
        ``exp(-|x-z|_2 / bandwidth)`` for the Laplacian: the Euclidean distance, where
        scikit-learn's ``laplacian`` uses the L1 one). ``"auto"``: the best of
        0.25, 0.5, ..., 8 times the median distance between training points by the
        closed-form leave-one-out error of exact kernel ridge regression on a subsample of
        1000 rows, searched together with ``alpha`` (:mod:`eigenpro.model_selection`);
        the scores are in ``selection_``. ``"median"``: half the median distance, nothing
        searched (:func:`eigenpro.estimators.auto_bandwidth`). A number is used as given.
    kernel_params : dict, default=None
        Extra kernel parameters: ``nu`` (Matern), ``degree``, ``gamma``, ``coef0``
        (polynomial), or keyword arguments of a callable kernel. For ``"rbf"``/``"gaussian"``,
        ``gamma`` is scikit-learn's (``exp(-gamma |x-z|^2)``, so ``bandwidth = 1 / sqrt(2
        gamma)``): grids written for ``KernelRidge(kernel="rbf")`` carry over.
    n_epochs : int or "auto", default="auto"
        Passes over the training data at most; ``"auto"``: 100. The fit stops earlier at
        convergence (``tol``) or when the validation score stops improving
        (``early_stopping``).
    tol : float or None, default=1e-4
        Stop when the training objective (the mean squared error, plus the ridge term when
        ``alpha > 0``) improved by less than ``tol`` times that of the zero model in each of
        ``n_iter_no_change`` consecutive epochs, as scikit-learn's ``SGDRegressor``
        does. None: run exactly ``n_epochs`` epochs.
    n_components : int or "auto", default="auto"
        q, the number of eigendirections the preconditioner flattens. ``"auto"`` picks q so
        that the critical batch size ``beta / lambda_{q+1}`` matches the largest batch the
        device handles. ``0`` gives plain kernel SGD with its own safe step size.
    subsample_size : int or "auto", default="auto"
        Size of the Nystrom subsample for the eigensystem; ``"auto"``: ``n / 15`` clipped
        to [2000, 12000] (2000 up to 30k points, 4000 for 60k).
    batch_size : int or "auto", default="auto"
        ``"auto"``: the critical batch size, bounded by the memory budget.
    step_size : float or "auto", default="auto"
        ``eta`` of ``alpha_B -= (eta / m) r``; ``"auto"``: the EigenPro 2.0 optimum for the
        batch size. Halved automatically (with a warning) if an epoch diverges.
    memory_gb : float or "auto", default="auto"
        Memory budget on the device in GiB; ``"auto"``: 80% of free GPU memory, or half the
        available RAM (at most 16 GiB) on the CPU.
    alpha : float or "auto", default="auto"
        Ridge regularisation: converge to ``(K + alpha I) c = y`` (the targets centred and
        scaled, see ``fit_intercept``), as :class:`~sklearn.kernel_ridge.KernelRidge`.
        ``"auto"``: chosen with the bandwidth by leave-one-out error on the subsample (a
        log grid from one eigendecomposition per bandwidth, at least ``1e-2`` of the mean
        ``k(x, x)``: smaller ridges interpolate noise and need far more epochs), carried to
        the whole training set as ``alpha (n / 1000) ** 0.5``. Fitted value: ``alpha_``.
        A number is used as given; 0 interpolates.
    fit_intercept : bool, default=True
        Centre the targets (weighted mean per output, ``intercept_``) before fitting and add
        the mean back in ``predict``, as :class:`~sklearn.linear_model.Ridge` does; the
        regressor also divides each target column by its standard deviation while fitting,
        so ``alpha`` and ``tol`` mean the same for any unit of ``y``. ``False``: the kernel
        expansion alone, which decays to 0 away from the data.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, score it after each epoch (R^2), stop
        after ``n_iter_no_change`` epochs without improvement and keep the best epoch.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=3
        Epochs without improvement (``tol``, or the validation score) before stopping.
    n_centers : "auto", None, int or array-like of shape (n_centers, n_features), \
default="auto"
        Centers of the model. ``"auto"``: every training point while one pass costs at most
        ``compute_budget``, else a fixed number of centers drawn at random, so that the time
        of a default fit grows about linearly in ``n`` past that size
        (:mod:`eigenpro.model_size`: about 37,000 rows at 13 features, 16,700 at 128 and
        7,100 at 784 before 18,500 / 8,300 / 3,500 centers); what was chosen and why is in
        ``model_size_`` and, with ``verbose``, printed. ``None``: every training point
        (EigenPro 2; memory and work
        per epoch grow like n^2). An int p: p training points drawn at random (seeded by
        ``random_state``); an array: those points. Both use EigenPro 3 (memory O(p), work
        per epoch O(np + p^2)) and converge to the least-squares fit on the centers,
        ``argmin_c ||K(X, Z) c - y||^2 (+ alpha c^T K(Z, Z) c)``. ``X`` may then be a numpy
        array, a ``numpy.memmap`` or a CPU tensor: it stays on the host and is moved to the
        device one batch at a time (NaN/inf are detected batch by batch). Inside an
        initialised ``torch.distributed`` process group the centers are sharded across the
        ranks (see :func:`eigenpro.distributed.init_distributed`).
    compute_budget : float or "auto", default="auto"
        The work one pass over the data may cost with ``n_centers="auto"``, in 10^9
        multiply-adds of the kernel products (``n p (d + 16)``); ``"auto"``: 40, about half a
        second per pass in fp32 on a 2-core CPU. Raise it for a larger model, lower it for a
        faster fit.
    inner_params : dict, default=None
        Settings of the projection onto the centers (``n_centers`` set), each ``"auto"``
        when absent: ``method`` (``"delayed"``: EigenPro 4's delayed projection, the batch
        points kept as temporary centers and projected every ``T`` batches, exactly by a
        Cholesky factor of ``K(Z, Z)`` when its ``2 p^2`` numbers fit in a quarter of the
        memory budget in one process (then chosen by ``"auto"``), else by inner EigenPro
        passes; no ``alpha`` yet; ``"cholesky"``: the exact factor after every step, chosen
        by ``"auto"`` with ``alpha > 0``; ``"eigenpro"``: an inner EigenPro 2 iteration
        tracking the projection, warm-started, chosen when the factor does not fit), and for
        the inexact ones the inner iteration's ``n_components``, ``subsample_size``,
        ``batch_size``, ``step_size`` and ``n_steps`` (inner steps per data batch, or per
        pass of a delayed projection). With the exact delayed projection and fewer centers
        than points, ``sgd_epochs`` SGD epochs (``"auto"``: 1, or 0 for a warm start, when
        ``n_epochs`` leaves 3 after them) are followed by conjugate-gradient epochs, one
        pass over the data each, which reach the least-squares fit where SGD would crawl
        (:mod:`eigenpro.conjugate_gradient`); ``sgd_epochs >= n_epochs`` turns them off.
        The values used are in ``inner_params_`` (``sgd_epochs=None``: SGD throughout).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        ``"auto"`` uses the first GPU when one is available.
    dtype : {"float32", "float64"}, default="float32"
        Training precision (the eigensystem is always computed in float64).
    random_state : int, RandomState instance or None, default=None
        Seeds the subsample, the batches and the held-out split.
    verbose : int, default=0
        ``1`` shows one progress bar per fit, with the epoch and the running loss.
    warm_start : bool, default=False
        ``True``: a ``fit`` on the same training data, targets and weights, with the same
        problem-defining parameters (all but ``n_epochs``, ``verbose``, ``warm_start``,
        ``n_iter_no_change``, ``memory_gb``, ``device``, ``batch_size``, ``step_size`` and
        ``random_state``), continues the previous fit: from its last iterate, with its
        preconditioner, batch and step size, held-out split and centers; ``n_epochs`` counts
        further epochs and ``history_`` continues. Otherwise it starts afresh with a
        warning. With early stopping, the best epoch of both fits is kept.
    n_threads : int or "auto", default="auto"
        Threads of every pool a fit or a prediction runs (torch's, and the BLAS and OpenMP
        libraries under numpy and scipy, through threadpoolctl), set for the library's own
        calls and put back after them. ``"auto"``: :func:`torch.get_num_threads` (one per
        core, or what ``OMP_NUM_THREADS``, :func:`torch.set_num_threads` or a joblib worker
        says), lowered to the CPUs other processes leave free when the fit starts
        (:mod:`eigenpro.threads`). Fitted value: ``n_threads_``.
    precision : {"auto", "ieee", "bf16"}, default="auto"
        Operands of the kernel's distance products in a float32 fit (radial kernels).
        ``"ieee"``: IEEE float32. ``"bf16"``: the centred, bandwidth-scaled points rounded
        to bf16 once, consistently, with float32 accumulation, on the CPU's bf16 units
        (oneDNN) or a GPU's tensor cores: the exact kernel of points moved by at most
        ``2^-9`` of a coordinate, 2-4x faster products. ``"auto"``: bf16 where the hardware
        has it, the fit is large with at least 64 features, and a probe of the data's kernel
        block and the selection's leave-one-out R^2 show no loss
        (:mod:`eigenpro.precision`); IEEE otherwise. Fitted: ``precision_`` and
        ``precision_check_`` (the probe's figures and the reason).

    Attributes
    ----------
    centers_ : ndarray of shape (n_samples, n_features)
        The training points the model is expanded on.
    dual_coef_ : ndarray of shape (n_samples,) or (n_samples, n_targets)
        Their coefficients.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Only when ``X`` has string feature names.
    n_iter_ : int
        Epochs run.
    history_ : list of dict
        Per epoch: ``train_loss`` (the training mean squared error, in the targets' units),
        ``objective`` (with the ridge term, where ``alpha > 0``), ``val_score``,
        ``seconds``, ``step_size``.
    intercept_ : ndarray of shape (n_targets,)
        The targets' weighted means added to the kernel expansion (zeros without
        ``fit_intercept``).
    alpha_ : float
        The ridge used (in the units of the centred, scaled targets).
    selection_ : dict or None
        The leave-one-out search behind ``"auto"`` bandwidth and ``alpha``: rows scored,
        candidate bandwidths and ridges, the table of leave-one-out R^2 and the best score
        (None when nothing was searched).
    model_size_ : dict or None
        What ``n_centers="auto"`` chose and why (None for a given ``n_centers``).
    n_threads_ : int
        Threads the fit ran on (see ``n_threads``).
    precision_ : str
        ``"ieee"`` or ``"bf16"``: the kernel products of the fit and its predictions.
    precision_check_ : dict
        Why (``reason``), and for ``"auto"`` the probe's kernel errors against float64
        (``kernel_error``) and leave-one-out R^2 (``loo_r2``) in each precision.
    bandwidth_, n_components_, subsample_size_, batch_size_, step_size_ : float or int
        The values actually used.
    eigenvalues_ : ndarray
        Nystrom estimates of the top eigenvalues of the kernel operator.
    beta_, top_eigenvalue_, tail_eigenvalue_, critical_batch_size_ : float
        ``max k_P(x, x)``, ``lambda_1``, ``lambda_{q+1}`` and ``beta / lambda_{q+1}``. With
        ``n_centers`` set, ``tail_eigenvalue_`` is the top eigenvalue of the preconditioned
        operator measured on a data sample when that is larger.
    n_centers_ : int
        Number of centers p.
    inner_params_ : dict or None
        The projection settings used (with fewer centers than points; None for unused ones,
        and None for every training point as a center).
    world_size_ : int
        Ranks the centers were sharded over.

    See Also
    --------
    EigenProClassifier : the same model for classification.
    sklearn.kernel_ridge.KernelRidge : exact kernel ridge regression, O(n^3).

    Examples
    --------
    >>> import numpy as np
    >>> from eigenpro import EigenProRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(500, 3))
    >>> y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
    >>> model = EigenProRegressor(bandwidth=1.0, n_epochs=20, random_state=0).fit(X, y)
    >>> model.score(X, y) > 0.99
    True
    """

    def __init__(
        self,
        kernel="gaussian",
        *,
        bandwidth="auto",
        kernel_params=None,
        n_epochs="auto",
        tol=1e-4,
        n_components="auto",
        subsample_size="auto",
        batch_size="auto",
        step_size="auto",
        memory_gb="auto",
        alpha="auto",
        fit_intercept=True,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        n_centers="auto",
        compute_budget="auto",
        inner_params=None,
        device="auto",
        dtype="float32",
        random_state=None,
        verbose=0,
        warm_start=False,
        n_threads="auto",
        precision="auto",
    ):
        super().__init__(**_arguments(locals()))

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, pandas, torch or scipy.sparse. Sparse data are densified batch by batch
            with ``n_centers`` set; with ``n_centers=None`` the training points are the
            model's centers, held dense.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the squared errors: the fit converges to
            ``(W K + alpha I) c = W y``, :class:`~sklearn.kernel_ridge.KernelRidge`'s
            weighted solution (general centers: the weighted least-squares fit). A zero
            weight removes the point from the fit. The early-stopping score is weighted too.
        eval_set : list of (X, y) pairs, optional
            Data scored (R^2) after every epoch, recorded in ``history_[i]["eval_scores"]``;
            for monitoring only, it never influences the fit.

        Returns
        -------
        self
        """
        with _atomic_fit(self) as previous, self._own_threads(X, fitting=True):
            self._fit_regressor(X, y, sample_weight, eval_set, self._continued(previous))
        return self

    def _fit_regressor(self, X, y, sample_weight, eval_set, previous) -> None:
        self._check_params()
        X, y = self._validate_fit_data(X, y, multi_output=True, y_numeric=True)
        sample_weight = _validate_sample_weight(sample_weight, y.shape[0])
        Y = y.reshape(-1, 1) if y.ndim == 1 else y

        def make_scorer(y_eval):
            y_eval = y_eval.reshape(-1, 1) if y_eval.ndim == 1 else y_eval
            return lambda pred: r2_score(y_eval, pred)

        evals = self._eval_sets(eval_set, make_scorer, numeric=True)
        self._fit_targets(
            X, Y, score=r2_score, eval_scorers=evals, sample_weight=sample_weight,
            previous=previous,
        )  # fmt: skip
        if y.ndim == 1:
            self.dual_coef_ = self.dual_coef_.ravel()

    def predict(self, X) -> np.ndarray:
        """Predict targets for ``X``.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        out = self._raw_predict(X)
        return out.ravel() if self.dual_coef_.ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class EigenProClassifier(ClassifierMixin, _BaseEigenPro):
    """Kernel classifier trained by EigenPro preconditioned SGD.

    Regresses one-hot class indicators (``+1/-1`` for two classes) with the EigenPro 2.0
    iteration and predicts the class with the largest output. Labels may be of any type.
    All parameters are those of :class:`EigenProRegressor`; ``early_stopping`` scores the
    held-out set by accuracy and holds it out stratified by class.

    Parameters
    ----------
    kernel, bandwidth, kernel_params, n_epochs, n_components, subsample_size, batch_size, \
tol, step_size, memory_gb, alpha, fit_intercept, early_stopping, validation_fraction, \
n_iter_no_change, n_centers, compute_budget, inner_params, device, dtype, random_state, \
verbose, warm_start, n_threads, precision
        See :class:`EigenProRegressor`.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, multiplied into ``sample_weight``: a dict ``{label:
        weight}``, or ``"balanced"``, ``n_samples / (n_classes * bincount(y))``, as in
        scikit-learn (:func:`sklearn.utils.class_weight.compute_sample_weight`).
    probability : bool, default=False
        :meth:`predict_proba` and :meth:`predict_log_proba` always work: a softmax of the
        outputs with a temperature fitted on held-out outputs. By default those are the
        leave-one-out outputs of the subsample the bandwidth and ridge are chosen on (free:
        the selection computes them); with ``early_stopping=True``, the held-out split.
        ``True`` fits the temperature on rows held out of a second fit instead (on
        ``1 - validation_fraction`` of the data, as many epochs; the final model still uses
        every row): about twice the fitting time, as :class:`sklearn.svm.SVC`'s
        ``probability``, and closest to the final model.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    temperature_ : float or None
        The softmax temperature of :meth:`predict_proba` (:mod:`eigenpro.calibration`);
        None with fewer than 10 training rows.
    centers_, dual_coef_, n_features_in_, feature_names_in_, n_iter_, history_
        As in :class:`EigenProRegressor`; ``dual_coef_`` has one column for two classes and
        ``n_classes`` columns otherwise.
    bandwidth_, n_components_, subsample_size_, batch_size_, step_size_, eigenvalues_, \
beta_, top_eigenvalue_, tail_eigenvalue_, critical_batch_size_, n_centers_, inner_params_, \
world_size_, intercept_, alpha_, selection_, model_size_, n_threads_, precision_, \
precision_check_
        As in :class:`EigenProRegressor`; the classifier centres the indicators by the
        (weighted) class frequencies and does not scale them.

    See Also
    --------
    EigenProRegressor : the same model for regression.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from eigenpro import EigenProClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = EigenProClassifier(n_epochs=5, random_state=0).fit(X[:1500] / 16, y[:1500])
    >>> clf.score(X[1500:] / 16, y[1500:]) > 0.9
    True
    """

    _scales_targets = False
    _calibrates_on_selection = True

    _parameter_constraints: dict = {
        **_BaseEigenPro._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "probability": ["boolean"],
    }

    def __init__(
        self,
        kernel="gaussian",
        *,
        bandwidth="auto",
        kernel_params=None,
        n_epochs="auto",
        tol=1e-4,
        n_components="auto",
        subsample_size="auto",
        batch_size="auto",
        step_size="auto",
        memory_gb="auto",
        alpha="auto",
        fit_intercept=True,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        n_centers="auto",
        compute_budget="auto",
        inner_params=None,
        device="auto",
        dtype="float32",
        random_state=None,
        verbose=0,
        warm_start=False,
        class_weight=None,
        probability=False,
        n_threads="auto",
        precision="auto",
    ):
        super().__init__(**_arguments(locals()))

    def fit(self, X, y, sample_weight=None, eval_set=None):
        """Fit the classifier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            numpy, pandas, torch or scipy.sparse. Sparse data are densified batch by batch
            with ``n_centers`` set; with ``n_centers=None`` the training points are the
            model's centers, held dense.
        y : array-like of shape (n_samples,)
            Class labels of any type.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the points' squared errors, multiplied by the
            ``class_weight`` of their class; a zero weight removes the point from the fit.
        eval_set : list of (X, y) pairs, optional
            Data scored (accuracy) after every epoch, recorded in
            ``history_[i]["eval_scores"]``; for monitoring only, it never influences the fit.

        Returns
        -------
        self
        """
        with _atomic_fit(self) as previous, self._own_threads(X, fitting=True):
            self._fit_classifier(X, y, sample_weight, eval_set, self._continued(previous))
        return self

    def _fit_classifier(self, X, y, sample_weight, eval_set, previous) -> None:
        self._check_params()
        X, y = self._validate_fit_data(X, y, multi_output=False, y_numeric=False)
        y = column_or_1d(y, warn=True)
        sample_weight = _validate_sample_weight(sample_weight, y.shape[0])
        check_classification_targets(y)
        target_type = type_of_target(y)
        if target_type not in ("binary", "multiclass"):
            raise ValueError(
                f"EigenProClassifier supports binary and multiclass targets; got {target_type!r}"
            )
        classes, encoded = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                "the classifier needs samples of at least 2 classes in the data; "
                f"got 1 class ({classes[0]!r})"
            )
        if classes.shape[0] == 2:
            Y = np.where(encoded == 1, 1.0, -1.0).reshape(-1, 1)
        else:
            Y = np.zeros((encoded.shape[0], classes.shape[0]))
            Y[np.arange(encoded.shape[0]), encoded] = 1.0
        counts = np.bincount(encoded)
        stratify = encoded if counts.min() >= 2 else None
        if self.class_weight is not None:
            by_class = compute_sample_weight(self.class_weight, y)
            sample_weight = by_class if sample_weight is None else sample_weight * by_class
            sample_weight = _validate_sample_weight(sample_weight, y.shape[0])

        def labels(Y_2d):
            return Y_2d.argmax(axis=1) if Y_2d.shape[1] > 1 else Y_2d[:, 0] > 0

        def accuracy(Y_true, Y_pred, sample_weight=None):
            return accuracy_score(labels(Y_true), labels(Y_pred), sample_weight=sample_weight)

        def make_scorer(y_eval):
            return lambda pred: accuracy_score(y_eval.ravel(), classes[labels(pred).astype(int)])

        evals = self._eval_sets(eval_set, make_scorer, numeric=False)
        val_pos, loo = self._fit_targets(
            X, Y, score=accuracy, stratify=stratify, eval_scorers=evals,
            sample_weight=sample_weight, previous=previous,
        )  # fmt: skip
        self.classes_ = classes
        self.temperature_ = None
        if val_pos is not None:  # early stopping held these rows out: calibrate on them
            outputs = self._outputs(_rows(X, val_pos))
        elif self.probability:
            val_pos, outputs = self._held_out_outputs(X, Y, sample_weight, stratify)
        elif loo is not None:  # each subsample row predicted by a fit without it
            val_pos, outputs = loo
        if val_pos is not None:
            weights = None if sample_weight is None else sample_weight[val_pos]
            self.temperature_ = fit_temperature(outputs, encoded[val_pos], weights)

    def _held_out_outputs(self, X, Y, sample_weight, stratify):
        """Outputs, on ``validation_fraction`` of the training rows, of a model fitted like
        this one (as many epochs) on the others: held-out data to fit the temperature on."""
        n = Y.shape[0]
        if n < 2:
            raise ValueError("probability=True needs at least 2 samples to hold some out")
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        train_pos, val_pos = _held_out_split(n, self.validation_fraction, seed, stratify)
        helper = clone(self).set_params(
            n_epochs=self.n_iter_,
            tol=None,
            warm_start=False,
            verbose=0,
            probability=False,
            alpha=self.alpha_,
        )
        if self.bandwidth_ is not None and not self._gamma_given():
            helper.set_params(bandwidth=self.bandwidth_)
        d = X.shape[1] if isinstance(X, np.ndarray) else X.n_features
        helper._size_model(len(train_pos), d, Y, matrix=self._precomputed)
        helper._fit_targets(
            X[train_pos] if isinstance(X, np.ndarray) else X.subset(train_pos), Y[train_pos],
            score=None, sample_weight=None if sample_weight is None else sample_weight[train_pos],
        )  # fmt: skip
        return val_pos, helper._outputs(_rows(X, val_pos))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: ``softmax(outputs / temperature_)``.

        The outputs are the regressed class indicators (``(-f, f)`` for two classes), and
        ``temperature_`` minimises the log-loss on training rows held out of the fit (the
        early-stopping split, or with ``probability=True`` a second fit's held-out rows).
        The most probable class is :meth:`predict`'s.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        outputs = self._raw_predict(X)
        if self.temperature_ is None:
            raise NotFittedError(
                "this model has no held-out outputs to calibrate its probabilities on (a "
                "subsample of fewer than "
                f"{MIN_SELECTION_ROWS} rows): fit it with probability=True or "
                "early_stopping=True to use predict_proba"
            )
        return log_probabilities(outputs, self.temperature_)

    def decision_function(self, X) -> np.ndarray:
        """Model outputs: shape (n_samples,) for two classes (positive means ``classes_[1]``),
        else (n_samples, n_classes)."""
        out = self._raw_predict(X)
        return out[:, 0] if out.shape[1] == 1 else out

    def predict(self, X) -> np.ndarray:
        """Predict class labels for ``X``."""
        scores = self.decision_function(X)
        indices = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[indices]
