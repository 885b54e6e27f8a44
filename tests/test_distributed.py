"""Sharding the centers over two gloo processes gives the single-process fit."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch.distributed as dist

from eigenpro import EigenProRegressor

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


def test_two_gloo_ranks_match_a_single_process(tmp_path):
    X, y, X_test = _data()
    np.savez(tmp_path / "data.npz", X=X, y=y, X_test=X_test)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("{params}", repr(PARAMS)))
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

    single = EigenProRegressor(**PARAMS).fit(X, y)
    assert single.world_size_ == 1 and single.inner_params_["method"] == "eigenpro"
    sharded = np.load(tmp_path / "pred.npy")
    np.testing.assert_allclose(sharded, single.predict(X_test), rtol=0, atol=1e-8)
