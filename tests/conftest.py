"""Shared fixtures: real data sets from ../shared/datasets (skipped cleanly where absent)."""

import numpy as np
import pytest

from eigenpro.datasets import dataset_available, load_mnist


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
