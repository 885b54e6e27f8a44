"""Every thread pool at the fit's count, scoped to the library's calls (eigenpro.threads)."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from eigenpro import EigenProClassifier, EigenProRegressor, model_selection, threads
from eigenpro.threads import cpus_busy_elsewhere, limited_threads, thread_count


def _blas_threads() -> set:
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


def _pools() -> tuple:
    return torch.get_num_threads(), sorted(_blas_threads())


def test_limited_threads_sets_every_pool_and_puts_each_back():
    before = _pools()
    with limited_threads(1) as n:
        assert n == 1
        assert _pools() == (1, [1] if before[1] else [])
    assert _pools() == before


def test_limited_threads_restores_after_an_error_and_when_nested():
    before = _pools()
    with pytest.raises(RuntimeError, match="inside"):
        with limited_threads(1):
            with limited_threads(1):
                pass
            assert torch.get_num_threads() == 1  # the inner exit leaves the outer setting
            raise RuntimeError("inside")
    assert _pools() == before
    with pytest.raises(ValueError, match="positive integer"):
        with limited_threads(0):
            pass


def test_thread_count_given_auto_and_invalid(monkeypatch):
    assert thread_count(3).n_threads == 3
    for bad in (0, -2, 1.5, "all", True):
        with pytest.raises(ValueError, match="n_threads"):
            thread_count(bad)
    wanted = torch.get_num_threads()
    monkeypatch.setattr(threads, "cpus_busy_elsewhere", lambda: None)
    assert thread_count().n_threads == wanted
    monkeypatch.setattr(threads, "cpus_busy_elsewhere", lambda: 0)
    assert thread_count().n_threads == min(wanted, threads._usable_cpus())
    small = thread_count("auto", work_flops=threads.SMALL_WORK_FLOPS / 2)
    assert small.n_threads == 1 and "too few" in small.reason
    assert thread_count("auto", work_flops=threads.SMALL_WORK_FLOPS * 2).n_threads == min(
        wanted, threads._usable_cpus()
    )
    assert threads.fit_work(353, 10, 1000) == 353**3  # the selection's eigendecomposition
    assert threads.fit_work(20000, 13, 1000) == 20000**2 * 29  # one pass over the points
    monkeypatch.setattr(threads, "cpus_busy_elsewhere", lambda: 10**6)
    choice = thread_count()
    assert choice.n_threads == 1 and "other processes" in choice.reason


@pytest.mark.skipif(cpus_busy_elsewhere() is None, reason="no /proc/loadavg on this system")
def test_a_busy_process_is_counted():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\n"
                             "while time.time() - t < 3: pass"])  # fmt: skip
    try:
        time.sleep(0.3)
        seen = [cpus_busy_elsewhere() for _ in range(5)]
    finally:
        busy.kill()
        busy.wait()
    assert max(seen) >= 1


@pytest.mark.parametrize("Estimator", [EigenProRegressor, EigenProClassifier])
def test_fit_and_predict_run_at_the_estimators_count(Estimator, monkeypatch):
    """Inside a fit, scipy's LAPACK (the selection's eigendecompositions) and torch run at
    n_threads; outside it, every pool is as it was."""
    seen = []
    original = model_selection._eigh

    def spy(matrix, dtype=np.float64):
        seen.append(_pools())
        return original(matrix, dtype)

    monkeypatch.setattr(model_selection, "_eigh", spy)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = X[:, 0] > 0 if Estimator is EigenProClassifier else X[:, 0]
    before = _pools()
    model = Estimator(n_threads=1, n_epochs=2, random_state=0).fit(X, y)
    assert model.n_threads_ == 1
    assert seen and all(p == (1, [1] if before[1] else []) for p in seen)
    assert _pools() == before
    model.predict(X)
    assert _pools() == before
    with pytest.raises(ValueError, match="n_threads"):
        Estimator(n_threads=0).fit(X, y)
    assert Estimator(n_epochs=1, random_state=0).fit(X, y).n_threads_ == 1  # too small to share
