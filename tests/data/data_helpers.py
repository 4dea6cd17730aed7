"""Writers of small data files in the exact on-disk formats, a local HTTP server, and the shared real data paths."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import pickle
import struct
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

# CI has ../shared beside the clone; the library itself never assumes it.
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
MNIST_5K_DIR = SHARED_DATA / "mnist-5k"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte idx file: big-endian uint32 magic (2051 for 3-D, 2049 for 1-D), the dims, the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = {3: 2051, 1: 2049}[array.ndim]
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *array.shape))
    return header + array.tobytes()


def write_file(path: Path, data: bytes, gz: bool | None = None) -> Path:
    """Write ``data``, gzip-compressed when ``gz`` (default: when the name ends in .gz)."""
    gz = path.suffix == ".gz" if gz is None else gz
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_mnist_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 uint8 images (using all of 0..255) and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 7, gz: bool = True, seed: int = 0) -> dict:
    """The four MNIST files with random content in ``folder``. Returns ``{split: (images, labels)}``."""
    out = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = make_mnist_like(n, seed + i)
        suffix = ".gz" if gz else ""
        write_file(folder / (IDX_NAMES[split][0] + suffix), idx_bytes(images))
        write_file(folder / (IDX_NAMES[split][1] + suffix), idx_bytes(labels))
        out[split] = (images, labels)
    return out


def cifar_batch(n: int, seed: int) -> tuple[dict, np.ndarray, list[int]]:
    """A CIFAR-10 batch dict as in the real files: b'data' uint8 (n, 3072), b'labels' a list of ints."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    return batch, data, labels


class Py2Pickler(pickle._Pickler):
    """Writes protocol-2 pickles the way Python 2 wrote CIFAR-10: every str/bytes as a Python 2 ``str``
    (SHORT_BINSTRING / BINSTRING, which ``encoding="bytes"`` reads back as bytes; Python 3's protocol 2 would route
    bytes through ``_codecs.encode`` instead), and numpy's ``_reconstruct`` named as numpy 1.x named it,
    ``numpy.core.multiarray`` (``legacy_numpy_name=False``: ``numpy._core.multiarray``, as numpy 2 names it)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file: io.BufferedIOBase, legacy_numpy_name: bool = True) -> None:
        super().__init__(file, protocol=2)
        self.legacy_numpy_name = legacy_numpy_name

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(raw)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(opcode + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray" if self.legacy_numpy_name else "numpy._core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def dump_py2_style(obj: object, path: Path, legacy_numpy_name: bool = True) -> None:
    """Pickle ``obj`` into ``path`` as the real CIFAR-10 files are pickled (see :class:`Py2Pickler`)."""
    buf = io.BytesIO()
    Py2Pickler(buf, legacy_numpy_name).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar(folder: Path, n_train: int = 2, n_test: int = 3, meta_names: list[bytes] | None = None) -> dict:
    """data_batch_1..5 (``n_train`` images each), test_batch and batches.meta in ``folder``.
    Returns ``{split: (data (N, 3072), labels)}``."""
    train = [cifar_batch(n_train, seed) for seed in range(5)]
    for i, (batch, _, _) in enumerate(train, 1):
        dump_py2_style(batch, folder / f"data_batch_{i}")
    test_batch, test_data, test_labels = cifar_batch(n_test, 99)
    dump_py2_style(test_batch, folder / "test_batch")
    names = CIFAR_NAMES if meta_names is None else meta_names
    dump_py2_style({b"label_names": names, b"num_cases_per_batch": n_train, b"num_vis": 3072}, folder / "batches.meta")
    return {
        "train": (np.concatenate([b[1] for b in train]), sum((b[2] for b in train), [])),
        "test": (test_data, test_labels),
    }


class _Handler(SimpleHTTPRequestHandler):
    """Serves files; under ``/short/`` it announces the full length, sends half and hangs up."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/short/"):
            body = (Path(self.directory) / self.path[len("/short/") :]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL ``http://127.0.0.1:PORT/``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
