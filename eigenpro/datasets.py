"""Loaders for the MNIST and CIFAR-10 data sets in their standard on-disk formats.

Both loaders return plain NumPy arrays ``(X_train, y_train, X_test, y_test)`` with the
images flattened to rows of ``uint8`` pixels and the labels as ``int64``. The files are
looked up, in order, in:

1. the ``path`` argument, when given (then it is the only place searched);
2. ``$EIGENPRO_DATA/<folder>``, where ``EIGENPRO_DATA`` is a directory holding ``mnist/`` and
   ``cifar-10-batches-py/``;
3. the ``shared/datasets`` folder next to the project (``<repo>/../shared/datasets`` and
   ``<repo>/shared/datasets``);
4. the cache directory (``cache_dir`` argument, default ``~/.cache/eigenpro``).

With ``download=True`` missing files are fetched from the official mirrors, checked against
their published md5 sums and stored in ``path`` (when given) or the cache directory.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "cifar10_label_names",
    "dataset_available",
    "find_data_dir",
    "load_cifar10",
    "load_mnist",
]

PathLike = str | os.PathLike

ENV_VAR = "EIGENPRO_DATA"
DEFAULT_CACHE_DIR = Path("~/.cache/eigenpro")

# Folder holding each data set below EIGENPRO_DATA, shared/datasets and the cache directory.
_FOLDERS = {"mnist": "mnist", "cifar10": "cifar-10-batches-py"}

_MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
]
_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_FILES = [*_CIFAR10_TRAIN, "test_batch", "batches.meta"]
_CIFAR10_DIM = 3 * 32 * 32

#: The ten CIFAR-10 class names, in label order (as stored in ``batches.meta``).
CIFAR10_LABEL_NAMES = (
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
)

_USER_AGENT = "eigenpro-datasets"
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Locating the files
# --------------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if name not in _FOLDERS:
        raise ValueError(f"Unknown data set {name!r}; expected one of {sorted(_FOLDERS)}.")
    return name


def _shared_roots() -> list[Path]:
    """The ``shared/datasets`` folders next to the project root (parent of this package)."""
    repo = Path(__file__).resolve().parent.parent
    return [repo.parent / "shared" / "datasets", repo / "shared" / "datasets"]


def _cache_root(cache_dir: PathLike | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def _search_paths(
    name: str, path: PathLike | None = None, *, cache_dir: PathLike | None = None
) -> list[Path]:
    """Directories searched for data set ``name``, in order of priority."""
    folder = _FOLDERS[_check_name(name)]
    if path is not None:
        path = Path(path).expanduser()
        return [path, path / folder]
    roots = []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    roots += [*_shared_roots(), _cache_root(cache_dir)]
    return [root / folder for root in roots]


def _mnist_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` (gzip) or the same file uncompressed, whichever exists."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _is_complete(name: str, directory: Path) -> bool:
    if name == "mnist":
        return all(_mnist_file(directory, f) is not None for f in _MNIST_FILES)
    return all((directory / f).is_file() for f in _CIFAR10_FILES)


def find_data_dir(
    name: str, path: PathLike | None = None, *, cache_dir: PathLike | None = None
) -> Path:
    """Return the directory holding the files of a data set.

    Parameters
    ----------
    name : {"mnist", "cifar10"}
        The data set.
    path : str or path-like, optional
        Directory holding the files (e.g. ``.../mnist``), or its parent holding the standard
        folder (``mnist/`` or ``cifar-10-batches-py/``). When given, nothing else is searched.
    cache_dir : str or path-like, optional
        Cache directory searched last; default ``~/.cache/eigenpro``.

    Returns
    -------
    pathlib.Path
        The first directory in the search order that holds all the files.

    Raises
    ------
    FileNotFoundError
        If no searched directory holds all the files; the message lists the places searched.
    """
    searched = _search_paths(name, path, cache_dir=cache_dir)
    for directory in searched:
        if _is_complete(name, directory):
            return directory
    raise FileNotFoundError(_not_found_message(name, searched))


def _not_found_message(name: str, searched: list[Path]) -> str:
    places = "\n".join(f"  - {p}" for p in searched)
    env = os.environ.get(ENV_VAR)
    env_note = f"{ENV_VAR}={env}" if env else f"{ENV_VAR} is not set"
    return (
        f"{name} data not found ({env_note}). Searched:\n{places}\n"
        f"Fix: pass path=<directory with the files>, set {ENV_VAR} to a directory containing "
        f"mnist/ and cifar-10-batches-py/, or pass download=True."
    )


def dataset_available(
    name: str, path: PathLike | None = None, *, cache_dir: PathLike | None = None
) -> bool:
    """Whether the files of data set ``name`` ("mnist" or "cifar10") can be found locally.

    Parameters
    ----------
    name : {"mnist", "cifar10"}
        The data set.
    path, cache_dir : str or path-like, optional
        As in :func:`find_data_dir`.

    Returns
    -------
    bool
        True when :func:`find_data_dir` succeeds. Never downloads anything.
    """
    try:
        find_data_dir(name, path, cache_dir=cache_dir)
    except FileNotFoundError:
        return False
    return True


def _resolve(name: str, path: PathLike | None, download: bool, cache_dir: PathLike | None) -> Path:
    """Find the data set, downloading it into ``path`` or the cache when allowed."""
    try:
        return find_data_dir(name, path, cache_dir=cache_dir)
    except FileNotFoundError:
        if not download:
            raise
    if path is not None:
        target = Path(path).expanduser()
    else:
        target = _cache_root(cache_dir) / _FOLDERS[name]
    if name == "mnist":
        _download_mnist(target)
    else:
        _download_cifar10(target)
    return target


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def _md5(path: PathLike) -> str:
    """Hex md5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: PathLike, md5: str | None) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, checking its md5 sum.

    The file is written next to ``dest`` and renamed only once complete and verified, so
    ``dest`` never holds a partial or corrupt download.

    Raises
    ------
    ValueError
        If the md5 sum of the downloaded data differs from ``md5`` (the file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, desc=dest.name)
        if md5 is not None and (actual := _md5(tmp)) != md5:
            raise ValueError(
                f"Checksum mismatch for {url}: md5 {actual}, expected {md5}. "
                "The download was deleted; try again or use another mirror."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch(url: str, out, desc: str) -> None:
    """Copy the body of ``url`` into the binary file ``out`` with a progress bar."""
    from tqdm.auto import tqdm  # here: importing tqdm.auto warns in some notebooks

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _download_from_mirrors(mirrors: list[str], filename: str, dest: Path, md5: str) -> Path:
    """Try each mirror in turn; raise OSError listing every failure if none works."""
    errors = []
    for mirror in mirrors:
        try:
            return _download(mirror + filename, dest, md5)
        except (OSError, ValueError) as exc:
            errors.append(f"  - {mirror}{filename}: {exc}")
    raise OSError(f"Could not download {filename}:\n" + "\n".join(errors))


def _download_mnist(directory: Path) -> None:
    """Download the MNIST files missing from ``directory``."""
    for filename, md5 in _MNIST_FILES.items():
        if _mnist_file(directory, filename) is None:
            _download_from_mirrors(_MNIST_MIRRORS, filename, directory / filename, md5)


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar archive into ``target``, rejecting members that would escape it."""
    target = target.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            dest = (target / member.name).resolve()
            if not dest.is_relative_to(target) or member.issym() or member.islnk():
                raise ValueError(f"Unsafe member {member.name!r} in archive {archive}.")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # pragma: no cover - Python without PEP 706 filters; members checked above
            tar.extractall(target)


def _download_cifar10(directory: Path) -> None:
    """Download the CIFAR-10 python archive and put its batch files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        archive = _download(_CIFAR10_URL, Path(tmp) / "cifar-10-python.tar.gz", _CIFAR10_MD5)
        _safe_extract(archive, Path(tmp) / "extracted")
        source = Path(tmp) / "extracted" / _FOLDERS["cifar10"]
        for filename in _CIFAR10_FILES:
            if not (source / filename).is_file():
                raise ValueError(f"Archive {_CIFAR10_URL} lacks {filename}.")
            shutil.move(source / filename, directory / filename)


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Contents of ``path``, gunzipped when its name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"Corrupt gzip file {path}: {exc}") from exc


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions into an array."""
    data = _read_bytes(path)
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, no full header.")
    found, *dims = (int(v) for v in np.frombuffer(data, dtype=">i4", count=1 + ndim))
    if found != magic:
        raise ValueError(f"IDX file {path} has magic number {found}, expected {magic}.")
    if any(d < 0 for d in dims):
        raise ValueError(f"IDX file {path} has negative dimensions {dims}.")
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(
            f"IDX file {path} is truncated or corrupt: header gives dimensions {dims} "
            f"({expected} bytes of data) but it holds {len(data) - header}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_mnist_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _mnist_file(directory, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = _mnist_file(directory, f"{prefix}-labels-idx1-ubyte.gz")
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC, 3)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path} holds images of size {images.shape[1:]}, not 28 x 28.")
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels."
        )
    return images.reshape(len(images), -1), labels


def load_mnist(
    path: PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST from the four standard IDX files.

    The files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` are read either gzip-compressed
    (with a ``.gz`` suffix) or uncompressed.

    Parameters
    ----------
    path : str or path-like, optional
        Directory holding the files, or its parent holding ``mnist/``. When omitted, searched
        as described in :func:`find_data_dir`.
    download : bool, default=False
        Download the missing files (about 11 MB) from the official mirrors into ``path``, or
        else into ``cache_dir/mnist``, when they are not found.
    cache_dir : str or path-like, optional
        Cache directory; default ``~/.cache/eigenpro``.

    Returns
    -------
    X_train : ndarray of shape (60000, 784), dtype uint8
        Training images, each a row-major 28 x 28 image flattened; pixel values 0..255
        (scale with ``X / 255.0`` before fitting).
    y_train : ndarray of shape (60000,), dtype int64
        Training labels 0..9.
    X_test : ndarray of shape (10000, 784), dtype uint8
        Test images.
    y_test : ndarray of shape (10000,), dtype int64
        Test labels.

    Raises
    ------
    FileNotFoundError
        If the files are not found and ``download`` is False.
    ValueError
        If a file is corrupt or truncated; the message names the file.
    """
    directory = _resolve("mnist", path, download, cache_dir)
    X_train, y_train = _load_mnist_split(directory, "train")
    X_test, y_test = _load_mnist_split(directory, "t10k")
    return X_train, y_train, X_test, y_test


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    """Unpickle a CIFAR-10 file. Pickle can run arbitrary code: trusted files only."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"Corrupt CIFAR-10 file {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-10 file {path} holds a {type(obj).__name__}, not a dict.")
    return obj


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3072) uint8 and labels (n,) int64 of one CIFAR-10 batch file."""
    batch = _unpickle(path)
    missing = [k for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise ValueError(f"CIFAR-10 file {path} lacks the keys {missing}.")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"CIFAR-10 file {path}: b'data' is not a 2-D uint8 array.")
    if data.shape[1] != _CIFAR10_DIM:
        raise ValueError(
            f"CIFAR-10 file {path}: b'data' has shape {data.shape}, expected (n, {_CIFAR10_DIM})."
        )
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"CIFAR-10 file {path}: b'labels' are not integers ({exc}).") from exc
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(
            f"CIFAR-10 file {path}: b'labels' must be {len(data)} integers in 0..9, "
            f"got shape {labels.shape}."
        )
    return data, labels


def load_cifar10(
    path: PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load CIFAR-10 from the "python version" batch files.

    Reads ``data_batch_1`` .. ``data_batch_5`` (training set, in that order) and
    ``test_batch``. The files are pickles: only load files from a trusted source, since
    unpickling can execute arbitrary code. Class names are given by
    :func:`cifar10_label_names`.

    Parameters
    ----------
    path : str or path-like, optional
        Directory holding the batch files, or its parent holding ``cifar-10-batches-py/``.
        When omitted, searched as described in :func:`find_data_dir`.
    download : bool, default=False
        Download the official archive (about 163 MB) into ``path``, or else into
        ``cache_dir/cifar-10-batches-py``, when the files are not found.
    cache_dir : str or path-like, optional
        Cache directory; default ``~/.cache/eigenpro``.

    Returns
    -------
    X_train : ndarray of shape (50000, 3072), dtype uint8
        Training images in the official channel-major layout: 1024 red, then 1024 green, then
        1024 blue values, each a row-major 32 x 32 image (``X.reshape(-1, 3, 32, 32)`` gives
        NCHW images). Pixel values 0..255.
    y_train : ndarray of shape (50000,), dtype int64
        Training labels 0..9.
    X_test : ndarray of shape (n_test, 3072), dtype uint8
        Test images; ``n_test`` is 10000 for the official release (a partial copy may hold
        fewer).
    y_test : ndarray of shape (n_test,), dtype int64
        Test labels.

    Raises
    ------
    FileNotFoundError
        If the files are not found and ``download`` is False.
    ValueError
        If a file lacks the expected keys or shapes; the message names the file.
    """
    directory = _resolve("cifar10", path, download, cache_dir)
    train = [_load_cifar_batch(directory / f) for f in _CIFAR10_TRAIN]
    X_train = np.concatenate([X for X, _ in train])
    y_train = np.concatenate([y for _, y in train])
    X_test, y_test = _load_cifar_batch(directory / "test_batch")
    return X_train, y_train, X_test, y_test


def cifar10_label_names(
    path: PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: PathLike | None = None,
) -> list[str]:
    """Read the CIFAR-10 class names from ``batches.meta``.

    Parameters
    ----------
    path, download, cache_dir
        As in :func:`load_cifar10`.

    Returns
    -------
    list of str
        The ten class names in label order (``"airplane"`` .. ``"truck"``, see
        :data:`CIFAR10_LABEL_NAMES`).

    Raises
    ------
    FileNotFoundError
        If the files are not found and ``download`` is False.
    ValueError
        If ``batches.meta`` lacks ``b"label_names"``.
    """
    meta_path = _resolve("cifar10", path, download, cache_dir) / "batches.meta"
    meta = _unpickle(meta_path)
    if b"label_names" not in meta:
        raise ValueError(f"CIFAR-10 file {meta_path} lacks the key b'label_names'.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
