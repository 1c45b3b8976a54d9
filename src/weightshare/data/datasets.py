"""Data sets as in-memory tensors: MNIST, Fashion-MNIST (IDX files), CIFAR-10/100 (binary), digits (built in).

Every data set is loaded once into float32 tensors and fed by index
permutations (:func:`batches`), so an epoch of data loading costs a few tensor
gathers, far below the model's own time. The validation split is carved from the
training set with a fixed seed; the test set is only ever used for reporting.

MNIST and Fashion-MNIST share one path (:class:`IdxDataset`): their files are looked for
in ``data_dir/mnist/`` (MNIST also in ``data_dir/``) or ``data_dir/fashion-mnist/``
(gzip'ed or raw), downloaded there when missing and the network is there; ``data_dir``
defaults to ``$WEIGHTSHARE_DATA``, else the user cache. The MD5 of each uncompressed
file is checked against the official values.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightshare.core.errors import ConfigError, DataError
from weightshare.core.io import atomic_write_bytes
from weightshare.data.config import DataConfig

__all__ = [
    "DataError",
    "Split",
    "Augmentation",
    "DataBundle",
    "IdxDataset",
    "IDX_DATASETS",
    "load_data",
    "load_idx_arrays",
    "batches",
    "read_idx",
    "resolve_data_dir",
]


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format data set: four IDX files, the MD5 of each uncompressed file, where to get them.

    The MD5s are of the *uncompressed* files, so any gzip of the right bytes passes (Debian's
    re-gzipped Fashion-MNIST files do, although their .gz bytes differ from upstream's).
    """

    name: str
    title: str
    md5: dict[str, str]
    mirrors: tuple[str, ...]
    homepage: str
    mean_std: tuple[tuple[float, ...], tuple[float, ...]]
    # Folders of the data directory searched, in order; the first one receives downloads.
    folders: tuple[str, ...]


MNIST = IdxDataset(
    name="mnist",
    title="MNIST",
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    homepage="http://yann.lecun.com/exdb/mnist/",
    mean_std=((0.1307,), (0.3081,)),
    folders=("mnist", ""),
)
# Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): MNIST's file names and format, clothing instead of digits.
# Mean and standard deviation of the 60,000 training images' pixels in [0, 1], measured on the files.
FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    mean_std=((0.2860,), (0.3530,)),
    folders=("fashion-mnist",),
)
IDX_DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Split:
    """Inputs (float32, N×C×H×W) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Augmentation:
    """Random shift of every training image by up to ``shift`` pixels, plus a horizontal flip; the uncovered
    border takes ``fill``, the value a black pixel has after the data set's scaling."""

    shift: int
    flip: bool = False
    fill: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment_shift_flip(x, generator, pad=self.shift, flip=self.flip, fill=self.fill)


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    augment: Augmentation | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$WEIGHTSHARE_DATA``, else ``~/.cache/weightshare`` (XDG)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("WEIGHTSHARE_DATA"):
        return Path(os.environ["WEIGHTSHARE_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "weightshare"


# --- IDX ---------------------------------------------------------------------------


def read_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): magic, dims, then big-endian data.

    >>> read_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
    [7, 8, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"{source}: not an IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{source}: IDX size {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx_file(root: Path, spec: IdxDataset, name: str) -> Path | None:
    for folder in spec.folders:
        for candidate in (root / folder / name, root / folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _gunzip(raw: bytes, source: str) -> bytes:
    """``raw`` itself, or its gunzipped content when it is a gzip stream."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{source}: corrupt gzip file ({exc})") from None


def _download_idx(root: Path, spec: IdxDataset, name: str) -> Path | None:
    """Fetch ``name.gz`` from the first mirror that serves the right bytes; None when none does."""
    target = root / spec.folders[0] / f"{name}.gz"
    for mirror in spec.mirrors:
        try:
            with urllib.request.urlopen(mirror + f"{name}.gz", timeout=20) as response:
                payload = response.read()
            raw = _gunzip(payload, mirror + name)
        except (OSError, DataError):
            continue
        if hashlib.md5(raw).hexdigest() == spec.md5[name]:
            atomic_write_bytes(target, payload)
            return target
    return None


def _missing_idx_message(root: Path, spec: IdxDataset, missing: list[str]) -> str:
    folders = [str(root / folder) for folder in spec.folders]
    where = folders[0] + "".join(f" (or {folder})" for folder in folders[1:])
    names = "\n".join(f"  {n}.gz" for n in spec.md5)
    return (
        f"{spec.title} files missing in {where}: {', '.join(missing)}.\n"
        f"Download was not possible. Put the four official files there (gzip'ed or raw):\n{names}\n"
        f"from {spec.homepage} or a mirror, or point --data-dir / $WEIGHTSHARE_DATA at a directory whose "
        f"{spec.folders[0]}/ folder holds them."
    )


def load_idx_arrays(
    spec: IdxDataset, data_dir: str | os.PathLike | None = None, download: bool = True
) -> dict[str, np.ndarray]:
    """The four arrays of an MNIST-format data set, MD5-checked; downloads missing files when allowed."""
    root = resolve_data_dir(data_dir)
    arrays, missing = {}, []
    for name, md5 in spec.md5.items():
        path = _find_idx_file(root, spec, name) or (_download_idx(root, spec, name) if download else None)
        if path is None:
            missing.append(name)
            continue
        raw = _gunzip(path.read_bytes(), str(path))
        digest = hashlib.md5(raw).hexdigest()
        if digest != md5:
            raise DataError(
                f"{path}: MD5 {digest} does not match the official {spec.title} {name} ({md5}); replace the file"
            )
        arrays[name] = read_idx(raw, str(path))
    if missing:
        raise DataError(_missing_idx_message(root, spec, missing))
    return arrays


# --- CIFAR (official binary versions: plain bytes, no pickle) ------------------------


def read_cifar_binary(data: bytes, label_bytes: int, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label byte(s) + 3072 pixel bytes (R, G, B planes of 32×32).

    CIFAR-10 has one label byte; CIFAR-100 two (coarse, fine) and we keep the fine one.
    """
    record = label_bytes + 3072
    if len(data) % record:
        raise DataError(f"{source}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records")
    table = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return table[:, label_bytes:].reshape(-1, 3, 32, 32), table[:, label_bytes - 1].astype(np.int64)


def _cifar_files(root: Path, name: str) -> tuple[list[Path], list[Path], int]:
    if name == "cifar10":
        folder = root / "cifar-10-batches-bin"
        return [folder / f"data_batch_{i}.bin" for i in range(1, 6)], [folder / "test_batch.bin"], 1
    folder = root / "cifar-100-binary"
    return [folder / "train.bin"], [folder / "test.bin"], 2


def load_cifar_arrays(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    root = resolve_data_dir(data_dir)
    train_files, test_files, label_bytes = _cifar_files(root, name)
    missing = [str(p) for p in train_files + test_files if not p.is_file()]
    if missing:
        url = "https://www.cs.toronto.edu/~kriz/cifar.html"
        raise DataError(
            f"{name} binary files missing: {', '.join(missing)}. Download the *binary version* from {url} "
            f"and extract it into {root}."
        )
    out = {}
    for key, files in (("train", train_files), ("test", test_files)):
        parts = [read_cifar_binary(p.read_bytes(), label_bytes, str(p)) for p in files]
        out[f"{key}_x"] = np.concatenate([p[0] for p in parts])
        out[f"{key}_y"] = np.concatenate([p[1] for p in parts])
    return out


# --- assembling splits ---------------------------------------------------------------


def _normalise(x: torch.Tensor, mode: str, mean_std: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    if mode == "standard":
        mean = torch.tensor(mean_std[0]).view(1, -1, 1, 1)
        std = torch.tensor(mean_std[1]).view(1, -1, 1, 1)
        return (x - mean) / std
    return x


def _carve_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    if val_size >= len(y):
        raise DataError(f"val_size {val_size} leaves no training data (only {len(y)} training examples)")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _bundle_idx(cfg: DataConfig) -> DataBundle:
    spec = IDX_DATASETS[cfg.dataset]
    arrays = load_idx_arrays(spec, cfg.data_dir, cfg.download)

    def images(name: str) -> torch.Tensor:
        x = torch.from_numpy(arrays[name].astype(np.float32) / 255.0).unsqueeze(1)
        return _normalise(x, cfg.normalize, spec.mean_std)

    train_y = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    test_y = torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    train, val = _carve_validation(images("train-images-idx3-ubyte"), train_y, cfg.val_size, cfg.split_seed)
    test = Split(images("t10k-images-idx3-ubyte"), test_y)
    return DataBundle(spec.name, train, val, test, 10, augment=_shift_only(cfg, spec.mean_std))


def _bundle_cifar(cfg: DataConfig) -> DataBundle:
    arrays = load_cifar_arrays(cfg.dataset, cfg.data_dir)
    mean_std = CIFAR_MEAN_STD[cfg.dataset]

    def images(key: str) -> torch.Tensor:
        x = torch.from_numpy(arrays[key].astype(np.float32) / 255.0)
        # CIFAR is always normalised per channel (the WRN recipe); "pixels" has no meaning there.
        return _normalise(x, "standard", mean_std)

    train, val = _carve_validation(images("train_x"), torch.from_numpy(arrays["train_y"]), cfg.val_size, cfg.split_seed)
    test = Split(images("test_x"), torch.from_numpy(arrays["test_y"]))
    classes = 10 if cfg.dataset == "cifar10" else 100
    if cfg.shift:
        raise ConfigError(
            f"setting 'shift' is {cfg.shift}, but {cfg.dataset} has its own augmentation (4-pixel shift and flip): "
            "use 'augment' (--augment / --no-augment) and leave 'shift' at 0"
        )
    return DataBundle(
        cfg.dataset, train, val, test, classes, augment=Augmentation(4, flip=True) if cfg.augment else None
    )


def _bundle_digits(cfg: DataConfig) -> DataBundle:
    """scikit-learn's 1,797 8×8 digits: fixed 1,257 / 180 / 360 train/val/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    mean_std = ((float(x.mean()),), (float(x.std()),))
    x = _normalise(x, cfg.normalize, mean_std)
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test_idx, val_idx, train_idx = perm[:360], perm[360:540], perm[540:]
    split = lambda idx: Split(x[idx.sort().values], y[idx.sort().values])  # noqa: E731
    return DataBundle(
        "digits", split(train_idx), split(val_idx), split(test_idx), 10, augment=_shift_only(cfg, mean_std)
    )


def _shift_only(cfg: DataConfig, mean_std: tuple[tuple[float, ...], tuple[float, ...]]) -> Augmentation | None:
    # Digits are not mirror-symmetric, so the grayscale sets only shift (LeCun et al. 1998 trained on
    # distorted digits; a 1-2 pixel translation is the mildest of those distortions).
    if not cfg.shift:
        return None
    black = _normalise(torch.zeros(1, 1, 1, 1), cfg.normalize, mean_std)
    return Augmentation(cfg.shift, fill=float(black))


def load_data(cfg: DataConfig | None = None) -> DataBundle:
    """Load a data set as train / validation / test splits.

    >>> bundle = load_data(DataConfig(dataset="digits"))
    >>> len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape
    (1257, 180, 360, (1, 8, 8))
    """
    cfg = cfg or DataConfig()
    if cfg.dataset in IDX_DATASETS:
        return _bundle_idx(cfg)
    if cfg.dataset in ("cifar10", "cifar100"):
        return _bundle_cifar(cfg)
    if cfg.dataset == "digits":
        return _bundle_digits(cfg)
    known = ", ".join(["digits", *IDX_DATASETS, "cifar10", "cifar100"])
    raise DataError(f"unknown dataset {cfg.dataset!r}; known: {known}")


# --- batches -------------------------------------------------------------------------


def augment_shift_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True, fill: float = 0.0
) -> torch.Tensor:
    """The usual CIFAR augmentation, vectorised: random ±``pad``-pixel shift (border ``fill``) + horizontal flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        out[flipped] = out[flipped].flip(3)
    return out


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment: Augmentation | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches from in-memory tensors; the order depends only on ``seed`` (resume-safe)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        x = split.x[idx]
        if augment is not None:
            x = augment(x, generator)
        yield x, split.y[idx]
