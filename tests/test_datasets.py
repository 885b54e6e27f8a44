"""Tests for eigenpro.datasets: real MNIST / CIFAR-10 where present, synthetic files otherwise.

No test touches the network: downloads are exercised with local ``file://`` URLs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from eigenpro import datasets
from eigenpro.datasets import (
    CIFAR10_LABEL_NAMES,
    cifar10_label_names,
    dataset_available,
    find_data_dir,
    load_cifar10,
    load_mnist,
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _skip_unless_available(name: str, label: str) -> None:
    if not dataset_available(name):
        searched = ", ".join(str(p) for p in datasets._search_paths(name))
        pytest.skip(f"{label} not found in {searched}; set EIGENPRO_DATA")


# --------------------------------------------------------------------------------------------
# Real data sets (skipped where absent)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    _skip_unless_available("mnist", "MNIST")
    return load_mnist()


@pytest.fixture(scope="module")
def cifar10():
    _skip_unless_available("cifar10", "CIFAR-10")
    return load_cifar10()


@pytest.mark.slow
def test_real_mnist(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert X_train.dtype == np.uint8 and X_test.dtype == np.uint8
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert np.bincount(y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert set(np.unique(y_test).tolist()) == set(range(10))
    assert X_train.min() == 0 and X_train.max() == 255


@pytest.mark.slow
def test_real_cifar10(cifar10):
    X_train, y_train, X_test, y_test = cifar10
    assert X_train.shape == (50000, 3072) and X_train.dtype == np.uint8
    assert y_train.shape == (50000,) and y_train.dtype == np.int64
    assert np.bincount(y_train, minlength=10).tolist() == [5000] * 10
    assert 1 <= X_test.shape[0] <= 10000 and X_test.shape[1] == 3072
    assert X_test.dtype == np.uint8 and y_test.dtype == np.int64
    assert y_test.shape == (X_test.shape[0],)
    assert 0 <= y_test.min() and y_test.max() <= 9


@pytest.mark.slow
def test_real_cifar10_label_names(cifar10):
    assert cifar10_label_names() == OFFICIAL_NAMES
    assert list(CIFAR10_LABEL_NAMES) == OFFICIAL_NAMES


# --------------------------------------------------------------------------------------------
# Synthetic files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch):
    """Hide a user's EIGENPRO_DATA and the real shared/datasets folder from the default search."""
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "_shared_roots", list)


def _idx_bytes(array, magic):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write(path, payload, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _make_mnist(directory, gz=True, n_train=5, n_test=3, seed=0):
    """Write tiny valid MNIST IDX files; return the arrays they hold."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write(directory / f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 2051), gz)
        _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 2049), gz)
        arrays[prefix] = (images, labels)
    return arrays


def _check_mnist(result, arrays):
    X_train, y_train, X_test, y_test = result
    for (X, y), prefix in (((X_train, y_train), "train"), ((X_test, y_test), "t10k")):
        images, labels = arrays[prefix]
        assert X.dtype == np.uint8 and X.shape == (len(images), 784)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(X, images.reshape(len(images), -1))
        np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path, gz):
    arrays = _make_mnist(tmp_path / "mnist", gz=gz)
    _check_mnist(load_mnist(tmp_path / "mnist"), arrays)
    # The parent folder holding mnist/ is accepted too.
    _check_mnist(load_mnist(tmp_path), arrays)


def test_mnist_arrays_are_writable(tmp_path):
    _make_mnist(tmp_path)
    X_train, y_train, _, _ = load_mnist(tmp_path)
    X_train[0, 0] = 1
    y_train[0] = 1


def test_mnist_bad_magic_names_file(tmp_path):
    _make_mnist(tmp_path)
    bad = _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(5), 2051), gz=True)
    with pytest.raises(ValueError, match="magic") as info:
        load_mnist(tmp_path)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_truncated_payload_names_file(tmp_path, gz):
    _make_mnist(tmp_path, gz=gz)
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    bad = _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images, 2051)[:-10], gz)
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path)
    assert str(bad) in str(info.value)


def test_mnist_truncated_header_and_gzip(tmp_path):
    _make_mnist(tmp_path)
    bad = _write(tmp_path / "t10k-labels-idx1-ubyte", b"\x00\x00\x08", gz=True)
    with pytest.raises(ValueError, match="header") as info:
        load_mnist(tmp_path)
    assert str(bad) in str(info.value)
    # A cut-off gzip stream is reported as corrupt, naming the file.
    bad.write_bytes(gzip.compress(_idx_bytes(np.zeros(3), 2049))[:-12])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    _make_mnist(tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(4), 2049), gz=True)
    with pytest.raises(ValueError, match="4 labels"):
        load_mnist(tmp_path)


def test_missing_explicit_path_lists_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(missing)
    message = str(info.value)
    assert str(missing) in message and str(missing / "mnist") in message
    assert "EIGENPRO_DATA" in message and "download=True" in message


def test_missing_default_search_lists_every_place(tmp_path, monkeypatch, isolated):
    shared = tmp_path / "shared"
    monkeypatch.setattr(datasets, "_shared_roots", lambda: [shared])
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(cache_dir=tmp_path / "cache")
    message = str(info.value)
    for place in ("env", "shared", "cache"):
        assert str(tmp_path / place / "cifar-10-batches-py") in message
    assert not dataset_available("cifar10", cache_dir=tmp_path / "cache")


def test_partial_mnist_is_not_found(tmp_path):
    _make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert not dataset_available("mnist", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path)


def test_env_var_is_honoured(tmp_path, monkeypatch, isolated):
    arrays = _make_mnist(tmp_path / "mnist", seed=1)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    assert find_data_dir("mnist") == tmp_path / "mnist"
    _check_mnist(load_mnist(), arrays)


def test_search_order(tmp_path, monkeypatch, isolated):
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    monkeypatch.setattr(datasets, "_shared_roots", lambda: [shared])
    _make_mnist(cache / "mnist")
    assert find_data_dir("mnist", cache_dir=cache) == cache / "mnist"
    _make_mnist(shared / "mnist")
    assert find_data_dir("mnist", cache_dir=cache) == shared / "mnist"
    _make_mnist(tmp_path / "env" / "mnist")
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    assert find_data_dir("mnist", cache_dir=cache) == tmp_path / "env" / "mnist"


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown data set"):
        find_data_dir("imagenet")


def _make_cifar(directory, n=4, n_test=3, seed=0):
    """Write a tiny CIFAR-10 python-version batch set; return (X_train, y_train, X_test, y_test)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        size = n_test if name == "test_batch" else n
        X = rng.integers(0, 256, size=(size, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=size).tolist()
        with open(directory / name, "wb") as f:
            pickle.dump({b"data": X, b"labels": y, b"batch_label": name.encode()}, f)
        parts.append((X, np.array(y)))
    meta = {b"label_names": [s.encode() for s in OFFICIAL_NAMES], b"num_vis": 3072}
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    X_train = np.concatenate([X for X, _ in parts[:5]])
    y_train = np.concatenate([y for _, y in parts[:5]])
    return X_train, y_train, *parts[5]


def _check_cifar(result, expected):
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert result[0].dtype == np.uint8 and result[2].dtype == np.uint8
    assert result[1].dtype == np.int64 and result[3].dtype == np.int64


def test_cifar10_round_trip(tmp_path):
    expected = _make_cifar(tmp_path / "cifar-10-batches-py")
    result = load_cifar10(tmp_path)
    assert result[0].shape == (20, 3072) and result[2].shape == (3, 3072)
    _check_cifar(result, expected)
    assert cifar10_label_names(tmp_path) == OFFICIAL_NAMES


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({b"labels": [0]}, "lacks"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "labels"),
        ([1, 2, 3], "not a dict"),
    ],
)
def test_cifar10_invalid_batch_names_file(tmp_path, batch, match):
    _make_cifar(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(ValueError, match=match) as info:
        load_cifar10(tmp_path)
    assert "data_batch_3" in str(info.value)


def test_cifar10_truncated_pickle(tmp_path):
    _make_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------------------------
# Downloads, through local file:// URLs only
# --------------------------------------------------------------------------------------------


def _md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"eigenpro" * 1000)
    assert datasets._md5(path) == _md5_of(b"eigenpro" * 1000)


def test_download_checks_md5(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"some bytes" * 100)
    dest = tmp_path / "out" / "copy.bin"
    datasets._download(source.as_uri(), dest, _md5_of(source.read_bytes()))
    assert dest.read_bytes() == source.read_bytes()

    bad = tmp_path / "out2" / "copy.bin"
    with pytest.raises(ValueError, match="Checksum mismatch"):
        datasets._download(source.as_uri(), bad, "0" * 32)
    assert not bad.exists()
    assert list(bad.parent.iterdir()) == []  # no temporary file left behind


def test_download_missing_url_leaves_nothing(tmp_path):
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(OSError):
        datasets._download((tmp_path / "absent").as_uri(), dest, None)
    assert list(dest.parent.iterdir()) == []


def test_mnist_download_falls_back_to_second_mirror(tmp_path, monkeypatch, isolated):
    mirror = tmp_path / "mirror"
    arrays = _make_mnist(mirror)
    md5s = {p.name: datasets._md5(p) for p in mirror.iterdir()}
    mirrors = [(tmp_path / "dead").as_uri() + "/", mirror.as_uri() + "/"]
    monkeypatch.setattr(datasets, "_MNIST_FILES", md5s)
    monkeypatch.setattr(datasets, "_MNIST_MIRRORS", mirrors)
    _check_mnist(load_mnist(cache_dir=tmp_path / "cache", download=True), arrays)
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(md5s)


def test_mnist_download_reports_every_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _make_mnist(mirror)
    monkeypatch.setattr(datasets, "_MNIST_MIRRORS", [mirror.as_uri() + "/"])  # wrong md5s
    with pytest.raises(OSError, match="Checksum mismatch"):
        load_mnist(tmp_path / "target", download=True)
    assert list((tmp_path / "target").iterdir()) == []


def _tar_gz(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar10_download_and_extract(tmp_path, monkeypatch):
    expected = _make_cifar(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    members = {
        f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in (tmp_path / "src").iterdir()
    }
    _tar_gz(archive, members)
    monkeypatch.setattr(datasets, "_CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(datasets, "_CIFAR10_MD5", datasets._md5(archive))
    target = tmp_path / "data"
    _check_cifar(load_cifar10(target, download=True), expected)
    assert sorted(p.name for p in target.iterdir()) == sorted(datasets._CIFAR10_FILES)


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "cifar-10-batches-py/../../evil"])
def test_safe_extract_rejects_escaping_members(tmp_path, name):
    archive = tmp_path / "a.tar.gz"
    _tar_gz(archive, {name: b"x"})
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ValueError, match="Unsafe member"):
        datasets._safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_safe_extract_rejects_links(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="Unsafe member"):
        datasets._safe_extract(archive, tmp_path / "target")
