"""eigenpro: fast large-scale kernel regression and classification with EigenPro.

Kernel machines trained by preconditioned SGD (Ma & Belkin, NeurIPS 2017; MLSys 2019):
the preconditioner flattens the top of the kernel's spectrum, so SGD takes steps up to
``lambda_1 / lambda_{q+1}`` times larger, with batch and step sizes chosen automatically.
"""

from .estimators import EigenProClassifier, EigenProRegressor
from .feature_learning import EigenProRFMClassifier, EigenProRFMRegressor
from .kernels import get_kernel
from .solver import DivergenceError

__version__ = "0.1.0"

__all__ = [
    "EigenProClassifier",
    "EigenProRegressor",
    "EigenProRFMClassifier",
    "EigenProRFMRegressor",
    "DivergenceError",
    "get_kernel",
    "__version__",
]
