"""Class probabilities from a kernel classifier's outputs: a softmax with a fitted temperature.

EigenPro classifiers regress one-hot class indicators (``+1/-1`` for two classes), so their
outputs are scores on the scale of the targets, not probabilities. Temperature scaling
(Guo et al., "On calibration of modern neural networks", ICML 2017) turns them into
probabilities with one parameter: ``p = softmax(logits / T)``, ``T`` minimising the
log-loss on data the model was not trained on. It keeps the predicted class (the argmax).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = ["fit_temperature", "log_probabilities", "TEMPERATURE_RANGE"]

#: Temperatures searched, on a log scale (outputs on the scale of one-hot targets need
#: about 0.02 to 1).
TEMPERATURE_RANGE = (1e-4, 1e4)


def _logits(outputs: np.ndarray) -> np.ndarray:
    """Per-class logits: the outputs, or ``(-f, f)`` for a binary model's one column."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    return np.hstack([-outputs, outputs]) if outputs.shape[1] == 1 else outputs


def log_probabilities(outputs: np.ndarray, temperature: float) -> np.ndarray:
    """Log class probabilities ``log softmax(logits / temperature)``.

    Parameters
    ----------
    outputs : ndarray of shape (n_samples,) or (n_samples, n_classes)
        A classifier's outputs (one column or a 1-d array: two classes, positive means the
        second).
    temperature : float
        Positive.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}")
    return log_softmax(_logits(outputs) / temperature, axis=1)


def _smoothed_targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Platt's smoothing of one-hot targets: with ``n`` held-out points, a point is its class
    with probability ``(n + 1) / (n + 2)`` (the rest spread over the other classes), so that
    a held-out set without errors still gives a finite temperature, not probabilities of 1."""
    n = len(labels)
    targets = np.full((n, n_classes), 1.0 / ((n + 2) * (n_classes - 1)))
    targets[np.arange(n), labels] = (n + 1) / (n + 2)
    return targets


def fit_temperature(
    outputs: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """The temperature minimising the (weighted) log-loss of held-out outputs, against
    Platt's smoothed targets (a held-out set without errors gives a finite temperature).

    Parameters
    ----------
    outputs : ndarray of shape (n_samples,) or (n_samples, n_classes)
        Outputs on held-out data.
    labels : ndarray of shape (n_samples,)
        Their classes as integers in ``[0, n_classes)``.
    sample_weight : ndarray of shape (n_samples,), optional

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from eigenpro.calibration import fit_temperature
    >>> rng = np.random.default_rng(0)
    >>> logits = 2.0 * rng.normal(size=(5000, 3))
    >>> labels = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)  # ~ softmax(logits)
    >>> abs(fit_temperature(logits, labels) - 1.0) < 0.1
    True
    """
    logits = _logits(outputs)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.shape[0] == 0 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"need one label per row of outputs; got {labels.shape} labels for "
            f"{logits.shape[0]} rows"
        )
    weights = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight)
    targets = _smoothed_targets(labels, logits.shape[1])

    def loss(log_t: float) -> float:
        return -float(weights @ (targets * log_softmax(logits / np.exp(log_t), axis=1)).sum(1))

    low, high = np.log(TEMPERATURE_RANGE)
    best = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))
