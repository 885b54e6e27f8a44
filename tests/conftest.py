"""Shared fixtures: real data sets from ../shared/datasets (skipped cleanly where absent),
and a thread count that does not follow the machine's load."""

import numpy as np
import pytest

from eigenpro import threads
from eigenpro.datasets import dataset_available, load_mnist


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """Count no other processes as busy: ``n_threads="auto"`` follows the machine's load, and
    a different thread count sums products in a different order, so two fits of one test
    could differ in the last bits. tests/test_threads.py checks the load reading itself."""
    monkeypatch.setattr(threads, "cpus_busy_elsewhere", lambda: 0)


@pytest.fixture(scope="session")
def mnist():
    """MNIST scaled to [0, 1] as float32: (X_train, y_train, X_test, y_test)."""
    if not dataset_available("mnist"):
        pytest.skip(
            "MNIST not found (../shared/datasets/mnist or $EIGENPRO_DATA/mnist); "
            "set EIGENPRO_DATA to run"
        )
    X_train, y_train, X_test, y_test = load_mnist()
    return (X_train.astype(np.float32) / 255, y_train, X_test.astype(np.float32) / 255, y_test)
