import gzip
import hashlib
import io
import shutil

import numpy as np
import pytest
import torch

from weightshare.core.errors import ConfigError, DataError
from weightshare.data import datasets as wsdata
from weightshare.data.config import DataConfig
from weightshare.data.datasets import Augmentation, augment_shift_flip, batches, load_data, read_cifar_binary, read_idx


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(_idx(images)), images)
    assert read_idx(_idx(np.array([3, 1, 4], dtype=np.uint8))).tolist() == [3, 1, 4]


def test_read_idx_rejects_bad_magic_and_size():
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(b"PK\x03\x04rest", "x.zip")
    with pytest.raises(DataError, match=r"short: IDX size 10 bytes, expected 11 for shape \(3,\)"):
        read_idx(_idx(np.zeros(3, dtype=np.uint8))[:-1], "short")


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_idx_dataset_from_fake_files(fake_idx, tmp_path, dataset):
    arrays = fake_idx(tmp_path, dataset)
    bundle = load_data(DataConfig(dataset=dataset, data_dir=str(tmp_path), val_size=5, download=False))
    assert bundle.name == dataset
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (25, 5, 10)
    assert float(bundle.test.x.max()) <= 1.0 and float(bundle.test.x.min()) >= 0.0
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(bundle.test.x, expected)
    assert torch.equal(bundle.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_md5_mismatch_names_the_file(fake_idx, tmp_path, dataset):
    fake_idx(tmp_path, dataset, tamper="t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match=f"{dataset}/t10k-labels-idx1-ubyte.gz: MD5 .* does not match"):
        load_data(DataConfig(dataset=dataset, data_dir=str(tmp_path), download=False))


def test_a_corrupted_fashion_mnist_file_is_refused_by_its_md5(fashion_dir, tmp_path):
    """The real MD5s: one changed label in a copy of the official files is caught, and so is a broken gzip."""
    folder = tmp_path / "fashion-mnist"
    shutil.copytree(fashion_dir / "fashion-mnist", folder)
    raw = bytearray(gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid IDX file with labels in range
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(
        DataError, match=r"train-labels-idx1-ubyte.gz: MD5 \w+ does not match the official Fashion-MNIST"
    ):
        load_data(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path), download=False))
    shutil.copy(fashion_dir / "fashion-mnist" / "train-labels-idx1-ubyte.gz", folder)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: corrupt gzip file"):
        wsdata.load_idx_arrays(wsdata.FASHION_MNIST, tmp_path, download=False)


@pytest.mark.parametrize(("dataset", "folders"), [("mnist", ["mnist", "."]), ("fashion-mnist", ["fashion-mnist"])])
def test_missing_files_say_what_to_do(tmp_path, dataset, folders):
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset=dataset, data_dir=str(tmp_path), download=False))
    text = str(info.value)
    spec = wsdata.IDX_DATASETS[dataset]
    assert text.startswith(f"{spec.title} files missing in {tmp_path / folders[0]}")
    for name in spec.md5:
        assert name in text
    assert "--data-dir" in text and "WEIGHTSHARE_DATA" in text and spec.homepage in text


def test_a_download_that_fails_or_serves_wrong_bytes_is_not_kept(fake_idx, tmp_path, monkeypatch):
    served = {"calls": []}

    def urlopen(url, timeout):
        served["calls"].append(url)
        if "s3-website" in url:
            raise OSError("no network")
        return io.BytesIO(gzip.compress(b"not the official file"))

    monkeypatch.setattr(wsdata.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="Fashion-MNIST files missing"):
        load_data(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))
    assert len(served["calls"]) == 8  # both official mirrors tried for each of the four files
    assert not (tmp_path / "fashion-mnist").exists() or not any((tmp_path / "fashion-mnist").iterdir())


def test_a_missing_file_is_downloaded_into_the_data_directory(fake_idx, tmp_path, monkeypatch):
    arrays = fake_idx(tmp_path / "source", "fashion-mnist")
    (tmp_path / "source" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "upstream.gz")
    upstream = (tmp_path / "upstream.gz").read_bytes()
    monkeypatch.setattr(wsdata.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(upstream))
    bundle = load_data(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "source"), val_size=5))
    assert torch.equal(bundle.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    assert (tmp_path / "source" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_real_mnist(mnist_dir, tmp_path):
    # raw (uncompressed) files are accepted too
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name in wsdata.MNIST.md5:
        with gzip.open(mnist_dir / "mnist" / f"{name}.gz") as src, open(raw_dir / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    bundle = load_data(DataConfig(dataset="mnist", data_dir=str(raw_dir), download=False))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    assert bundle.train.y.bincount().tolist()[0] > 5000
    standard = load_data(DataConfig(dataset="mnist", data_dir=str(mnist_dir), normalize="standard", download=False))
    assert abs(float(standard.train.x.mean())) < 0.02 and abs(float(standard.train.x.std()) - 1) < 0.02
    # the same seed gives the same validation split
    assert torch.equal(bundle.val.y, standard.val.y)


def test_real_fashion_mnist(fashion_dir):
    """Debian's re-gzipped files pass the MD5 check of the uncompressed originals; 6,000 / 1,000 images a class."""
    for name, md5 in wsdata.FASHION_MNIST.md5.items():
        assert (
            hashlib.md5(gzip.decompress((fashion_dir / "fashion-mnist" / f"{name}.gz").read_bytes())).hexdigest() == md5
        )
    bundle = load_data(DataConfig(dataset="fashion-mnist", data_dir=str(fashion_dir), download=False))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.test.y.bincount().tolist() == [1000] * 10
    assert (bundle.train.y.bincount() + bundle.val.y.bincount()).tolist() == [6000] * 10
    assert float(bundle.train.x.min()) == 0.0 and float(bundle.train.x.max()) == 1.0
    standard = load_data(
        DataConfig(dataset="fashion-mnist", data_dir=str(fashion_dir), normalize="standard", download=False)
    )
    assert abs(float(standard.train.x.mean())) < 0.02 and abs(float(standard.train.x.std()) - 1) < 0.02


def _cifar_records(n: int, label_bytes: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, label_bytes)).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    return np.concatenate([labels, pixels], 1).tobytes(), labels[:, -1], pixels.reshape(n, 3, 32, 32)


def test_cifar_binary_parsing():
    raw, labels, pixels = _cifar_records(4, 1)
    x, y = read_cifar_binary(raw, 1)
    assert np.array_equal(x, pixels) and np.array_equal(y, labels)
    raw100, labels100, _ = _cifar_records(3, 2)
    assert np.array_equal(read_cifar_binary(raw100, 2)[1], labels100)  # the fine label (second byte)
    with pytest.raises(DataError, match="whole number of 3073-byte"):
        read_cifar_binary(raw[:-1], 1, "data_batch_1.bin")


def test_cifar10_bundle_from_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(_cifar_records(4, 1, i)[0])
    (folder / "test_batch.bin").write_bytes(_cifar_records(5, 1, 9)[0])
    bundle = load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=4))
    assert (len(bundle.train), len(bundle.val), len(bundle.test), bundle.num_classes) == (16, 4, 5, 10)
    assert bundle.augment == Augmentation(4, flip=True) and bundle.input_shape == (3, 32, 32)
    assert load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=4, augment=False)).augment is None
    with pytest.raises(ConfigError, match="'shift' is 2, but cifar10 has its own augmentation"):
        load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=4, shift=2))
    with pytest.raises(DataError, match="cifar-100-binary"):
        load_data(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))


def test_augment_shift_and_flip_preserve_content():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_shift_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    # a shift by at most 4 pixels keeps the centre 24x24 block (possibly flipped)
    for i in range(2):
        centre = x[i, :, 4:28, 4:28]
        assert any(
            torch.equal(out[i, :, 4 + dy : 28 + dy, 4 + dx : 28 + dx], c)
            for c in (centre, centre.flip(2))
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        )


def test_grayscale_shift_moves_each_digit_without_mirroring_it():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 1] = 1.0  # one lit pixel, left of centre: a mirror image would light column 6
    out = augment_shift_flip(x, torch.Generator().manual_seed(0), pad=1, flip=False)
    rows, cols = out[:, 0].flatten(1).argmax(1).div(8, rounding_mode="floor"), out[:, 0].flatten(1).argmax(1) % 8
    assert torch.equal(out.flatten(1).sum(1), torch.ones(64))  # nothing lost: a 1-pixel shift keeps column 1 inside
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {0, 1, 2}  # every shift in [-1, 1] drawn


def test_shift_setting_reaches_the_training_batches_only(digits):
    shifted = load_data(DataConfig(dataset="digits", shift=1))
    assert shifted.augment == Augmentation(1) and digits.augment is None
    plain = next(batches(shifted.train, 50, shuffle=True, seed=3))[0]
    moved = next(batches(shifted.train, 50, shuffle=True, seed=3, augment=shifted.augment))[0]
    assert torch.equal(plain.sum((1, 2, 3)) >= moved.sum((1, 2, 3)), torch.ones(50, dtype=torch.bool))
    assert not torch.equal(plain, moved) and torch.equal(shifted.test.x, digits.test.x)
    # scaled to mean 0 / std 1, the border uncovered by a shift is still black, not the mean grey
    standard = load_data(DataConfig(dataset="digits", shift=1, normalize="standard"))
    black = float(standard.train.x.min())  # every digits image has black pixels
    assert standard.augment.fill == pytest.approx(black) and black < -0.5
    border = standard.augment(torch.full((64, 1, 8, 8), 5.0), torch.Generator().manual_seed(0))
    assert border.unique().tolist() == pytest.approx([black, 5.0])


def test_digits_split_is_fixed(digits):
    again = load_data(DataConfig(dataset="digits"))
    assert torch.equal(digits.test.y, again.test.y)
    assert digits.input_shape == (1, 8, 8)


def test_batches_cover_every_example_once(digits):
    seen = torch.cat([y for _, y in batches(digits.train, 100, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == sorted(digits.train.y.tolist())
    first = next(batches(digits.train, 100, shuffle=True, seed=3))[1]
    assert torch.equal(first, next(batches(digits.train, 100, shuffle=True, seed=3))[1])
