"""Sharding the centers over two gloo processes gives the single-process fit."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist

from eigenpro import EigenProRegressor, estimators, solver
from eigenpro.distributed import Communicator
from eigenpro.precision import bf16_unavailable

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

PARAMS = dict(
    bandwidth=1.0,
    n_centers=120,
    n_epochs=3,
    dtype="float64",
    device="cpu",
    random_state=0,
    tol=None,
    inner_params={"method": "eigenpro"},
)

WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from eigenpro import EigenProRegressor
    from eigenpro.distributed import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    device, comm = init_distributed(backend="gloo")
    data = np.load(sys.argv[1])
    model = EigenProRegressor(**{params}).fit(data["X"], data["y"])
    assert model.world_size_ == 2
    if comm.rank == 0:
        np.save(sys.argv[2], model.predict(data["X_test"]))
        print("precision", model.precision_, "subsample", model.subsample_size_)
    shutdown_distributed()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]
    return X, y, rng.normal(size=(100, 3))


PATHS = {
    "eigenpro2": {**PARAMS, "n_centers": None, "inner_params": None},
    "tracked": PARAMS,
    # sharded, the delayed projection has no Cholesky factor, hence no ridge
    "delayed": {**PARAMS, "alpha": 0.0, "inner_params": {"method": "delayed"}},
    # float32 with the selection's eigensystem as the preconditioner's, and bf16 products
    # where the CPU has them ("auto" otherwise stays IEEE): every rank takes rank 0's choice
    "eigenpro2 float32": {
        **PARAMS,
        "n_centers": None,
        "inner_params": None,
        "dtype": "float32",
        "bandwidth": "auto",
        "alpha": "auto",
        "precision": "ieee" if bf16_unavailable(torch.device("cpu")) else "bf16",
    },
}
#: Largest difference between the sharded and the single-process predictions. float32: the
#: shards sum their products in another order, and 3 epochs of steps near 1 / lambda_{q+1}
#: carry that round-off to about 0.01-0.02 (IEEE and bf16 alike, y of std 0.8); bf16 blocks
#: rounded about each shard's own mean were 2.3 apart, which this catches.
TOLERANCE = {"eigenpro2 float32": 0.05}


@pytest.mark.parametrize("path", list(PATHS))
def test_two_gloo_ranks_match_a_single_process(tmp_path, monkeypatch, path):
    """Every path shards its centers: EigenPro 2 (the training points), and general centers
    with the tracked and the delayed projection."""
    params = PATHS[path]
    X, y, X_test = _data()
    np.savez(tmp_path / "data.npz", X=X, y=y, X_test=X_test)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("{params}", repr(params)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "data.npz"), str(tmp_path / "pred.npy")],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[0].decode() for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out

    # On several ranks the delayed projection solves with inner passes (no Cholesky factor):
    # the single process must too.
    monkeypatch.setattr(solver, "_factor_fits", lambda *args: False)
    single = EigenProRegressor(**params).fit(X, y)
    assert single.world_size_ == 1
    if params["n_centers"] is not None:
        assert single.inner_params_["method"] == (params["inner_params"] or {})["method"]
    assert single.precision_ == params.get("precision", "ieee")
    sharded = np.load(tmp_path / "pred.npy")
    np.testing.assert_allclose(
        sharded, single.predict(X_test), rtol=0, atol=TOLERANCE.get(path, 1e-8)
    )


class _CountingCommunicator(Communicator):
    """One process posing as a group of one: every collective runs the sharded code path and
    is counted."""

    def __init__(self):
        super().__init__()
        self.all_reduces = 0

    @property
    def is_distributed(self) -> bool:
        return True

    def all_reduce_(self, tensor):
        self.all_reduces += 1
        return tensor

    def broadcast_int(self, value, device):
        return int(value)


def _all_reduces_per_epoch(monkeypatch, params) -> tuple[EigenProRegressor, list[int]]:
    """Fit with a counting communicator; the all_reduces of each epoch."""
    comm = _CountingCommunicator()
    monkeypatch.setattr(estimators, "get_communicator", lambda: comm)
    per_epoch = []
    original = solver._run_epoch

    def counted(*args, **kwargs):
        before = comm.all_reduces
        out = original(*args, **kwargs)
        per_epoch.append(comm.all_reduces - before)
        return out

    monkeypatch.setattr(solver, "_run_epoch", counted)
    X, y, _ = _data()
    # no ridge: its penalty, reported per epoch, would cost one more (small) all_reduce
    return EigenProRegressor(**{**params, "alpha": 0.0}).fit(X, y), per_epoch


@pytest.mark.parametrize("n_steps", ["auto", 3])
def test_one_all_reduce_per_data_batch(monkeypatch, n_steps):
    """By default each data batch costs one all_reduce: the partial predictions, the partial
    preconditioner projections and the inner projection step travel together; each inner
    step asked for beyond the first costs one more."""
    params = {**PARAMS, "inner_params": {"method": "eigenpro", "n_steps": n_steps}}
    model, per_epoch = _all_reduces_per_epoch(monkeypatch, params)
    assert model.inner_params_["n_steps"] == (1 if n_steps == "auto" else n_steps)
    n_batches = -(-len(_data()[0]) // model.batch_size_)
    steps = model.inner_params_["n_steps"]
    assert per_epoch == [n_batches * steps] * PARAMS["n_epochs"]


def test_eigenpro2_path_costs_one_all_reduce_per_batch(monkeypatch):
    model, per_epoch = _all_reduces_per_epoch(monkeypatch, PATHS["eigenpro2"])
    assert per_epoch == [-(-len(_data()[0]) // model.batch_size_)] * PARAMS["n_epochs"]
