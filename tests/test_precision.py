"""bf16 operands, rounded consistently: the exact kernel of slightly moved points, scoped to
the library's products, chosen by "auto" only where a probe shows no loss."""

import pickle

import numpy as np
import pytest
import torch

import eigenpro.precision as precision
from eigenpro import EigenProRegressor
from eigenpro.kernels import GaussianKernel, LaplacianKernel, LinearKernel
from eigenpro.precision import bf16_products, bf16_unavailable, choose_precision, split_bf16

NO_BF16 = bf16_unavailable(torch.device("cpu"))
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=f"no bf16 products: {NO_BF16}")


def _points(n=300, d=70, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def test_split_parts_are_bf16_values_that_sum_to_the_input():
    x = torch.from_numpy(np.random.default_rng(1).lognormal(size=1000).astype(np.float32))
    parts = split_bf16(x)
    assert torch.equal(parts, parts.to(torch.bfloat16).to(torch.float32))
    np.testing.assert_allclose(parts.double().sum(1), x.double(), rtol=2**-23)


@needs_bf16
@pytest.mark.parametrize("kernel", [GaussianKernel(6.0), LaplacianKernel(12.0)], ids=repr)
def test_bf16_block_is_the_exact_kernel_of_the_rounded_points(kernel):
    X, Z = _points(200), _points(300, seed=1)
    fast = kernel.with_precision("bf16")
    got = fast(X, Z).double()
    origin = Z.double().mean(0)

    def rounded(A):  # what the bf16 path multiplies: (a - o) / h rounded to bf16
        units = ((A - origin.float()) / kernel.bandwidth).to(torch.bfloat16).double()
        return units * kernel.bandwidth

    exact_rounded = kernel(rounded(X), rounded(Z))
    original = kernel(X.double(), Z.double())
    assert float((got - exact_rounded).abs().max()) < 2e-5  # float32 accumulation only
    assert float((got - original).abs().max()) < precision.BF16_KERNEL_TOLERANCE
    assert float((got - original).abs().max()) > 1e-5  # the operands really were bf16
    # The distance of a point to itself is 0 in bf16 too, up to the round-off of IEEE float32
    # (which the Laplacian's square root magnifies).
    ieee_gap = float((kernel(X, X).diagonal() - 1).abs().max())
    assert float((fast(X, X).diagonal() - 1).abs().max()) <= 2 * ieee_gap + 1e-6


def test_the_torch_setting_is_restored_even_after_an_error():
    backend = torch.backends.mkldnn.matmul
    before = backend.fp32_precision
    with pytest.raises(RuntimeError, match="inside"):
        with bf16_products(torch.device("cpu")):
            assert backend.fp32_precision == "bf16"
            raise RuntimeError("inside")
    assert backend.fp32_precision == before


def test_given_precisions_are_checked():
    rows, Y = _points(50).double().numpy(), np.ones((50, 1))
    kw = dict(dtype=torch.float32, device=torch.device("cpu"), work=1e12, n_features=70)
    with pytest.raises(ValueError, match="radial kernel"):
        choose_precision("bf16", LinearKernel(), rows, Y, 1.0, **kw)
    with pytest.raises(ValueError, match="float32"):
        choose_precision(
            "bf16", GaussianKernel(1.0), rows, Y, 1.0, **{**kw, "dtype": torch.float64}
        )
    with pytest.raises(ValueError, match="precision must be"):
        choose_precision("fp8", GaussianKernel(1.0), rows, Y, 1.0, **kw)
    assert choose_precision("ieee", GaussianKernel(1.0), rows, Y, 1.0, **kw).precision == "ieee"


def test_auto_stays_ieee_for_small_or_narrow_fits():
    rows, Y = _points(50).double().numpy(), np.ones((50, 1))
    kw = dict(dtype=torch.float32, device=torch.device("cpu"))
    small = choose_precision(
        "auto", GaussianKernel(9.0), rows, Y, 1.0, work=1e6, n_features=70, **kw
    )
    narrow = choose_precision(
        "auto", GaussianKernel(9.0), rows, Y, 1.0, work=1e12, n_features=8, **kw
    )
    assert small.precision == narrow.precision == "ieee"
    assert "operations" in small.reason and "features" in narrow.reason


@needs_bf16
def test_auto_takes_bf16_where_the_probe_and_leave_one_out_agree(monkeypatch):
    monkeypatch.setattr(precision, "BF16_MIN_WORK", 0.0)
    X = _points(400, d=80).double()
    y = torch.sin(X[:, :3].sum(1, keepdim=True))
    kernel = GaussianKernel(float(torch.cdist(X, X).median()))
    kw = dict(dtype=torch.float32, device=torch.device("cpu"), work=1.0, n_features=80)
    choice = choose_precision("auto", kernel, X.numpy(), y.numpy(), 1.0, **kw)
    assert choice.precision == "bf16", choice.reason
    assert choice.kernel_error["ieee"] < 1e-5 < choice.kernel_error["bf16"] < 2e-3
    assert abs(choice.loo_r2["bf16"] - choice.loo_r2["ieee"]) < precision.BF16_LOO_TOLERANCE


@needs_bf16
def test_a_bf16_fit_matches_the_ieee_fit_and_keeps_its_precision():
    X = _points(1500, d=80).numpy()
    y = np.sin(X[:, :3].sum(1))
    before = torch.backends.mkldnn.matmul.fp32_precision
    fits = {
        p: EigenProRegressor(precision=p, random_state=0, n_epochs=20, tol=None).fit(X, y)
        for p in ("ieee", "bf16")
    }
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert fits["bf16"].precision_ == "bf16" and fits["ieee"].precision_ == "ieee"
    X_test = _points(200, d=80, seed=3).numpy()
    diff = fits["bf16"].predict(X_test) - fits["ieee"].predict(X_test)
    assert np.abs(diff).max() < 0.02 * np.std(y)
    again = pickle.loads(pickle.dumps(fits["bf16"]))
    assert again.kernel_.precision == "bf16"
    np.testing.assert_array_equal(again.predict(X_test), fits["bf16"].predict(X_test))


def test_a_default_small_fit_is_ieee_and_says_why():
    X = _points(300, d=5).numpy()
    model = EigenProRegressor(random_state=0, n_epochs=2, tol=None).fit(X, X[:, 0])
    assert model.precision_ == "ieee"
    assert "features" in model.precision_check_["reason"]


@needs_bf16
def test_a_fixed_origin_makes_every_bf16_block_the_same_kernel():
    """Blocks against different sets of centers (shards, tiles, the preconditioner's
    subsample) round about the same origin, so a pair (x, z) has one kernel value."""
    X = _points(50)
    Z = torch.cat([_points(60, seed=1), _points(60, seed=2) + 2.0])  # halves with other means
    origin = Z.double().mean(0).numpy()
    fixed = GaussianKernel(6.0).with_precision("bf16", origin=origin)
    whole, half = fixed(X, Z), fixed(X, Z[:60])
    assert float((whole[:, :60] - half).abs().max()) < 1e-6  # float32 accumulation only
    loose = GaussianKernel(6.0).with_precision("bf16")  # each block's own centers' mean
    assert float((loose(X, Z)[:, :60] - loose(X, Z[:60])).abs().max()) > 1e-5  # not so
    again = pickle.loads(pickle.dumps(fixed))
    assert torch.equal(again(X, Z), whole)
