"""Labelled data sets of the simulations and the checks every consumer runs on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from theory.checks import check_num_classes

__all__ = [
    "Dataset",
    "as_generator",
    "spawn_generators",
    "seed_record",
    "check_features",
    "check_labels",
]


def check_features(X: Any, name: str = "X") -> np.ndarray:
    """``X`` as a C-contiguous float64 ``N x D`` array with ``N, D >= 1`` and finite entries."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty 2-D array (N x D), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return X


def check_labels(labels: Any, num_samples: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as a contiguous int64 vector of length ``N`` with values in ``0 .. C-1``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != num_samples:
        raise ValueError(f"{name}: expected a 1-D array of length {num_samples}, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name}: expected class indices in 0..{num_classes - 1} (num_classes={num_classes}), "
            f"got values in {int(arr.min())}..{int(arr.max())}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_generator(seed: Any) -> np.random.Generator:
    """A numpy ``Generator`` from an int seed, a ``SeedSequence`` or a ``Generator`` (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(
            f"seed: expected a non-negative int, a numpy SeedSequence or Generator, got {seed!r}"
        )
    return np.random.default_rng(int(seed))


def spawn_generators(seed: Any, count: int) -> list[np.random.Generator]:
    """``count`` independent generators spawned from ``seed`` (int, SeedSequence or Generator)."""
    if isinstance(seed, np.random.Generator):
        return seed.spawn(count)
    if not isinstance(seed, np.random.SeedSequence):
        as_generator(seed)  # validates the seed
        seed = np.random.SeedSequence(int(seed))
    return [np.random.default_rng(s) for s in seed.spawn(count)]


def seed_record(seed: Any) -> int | None:
    """The int seed for a settings record (``None`` when a Generator or SeedSequence was passed)."""
    return int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None


@dataclass(frozen=True)
class Dataset:
    """Examples ``X`` (N x D, float64) with class labels (N, int64, in ``0..C-1``).

    ``settings`` records how the data were made (generator, sizes, SNR, seed) as
    plain values. Construction validates shapes, finiteness and the label range.
    """

    X: np.ndarray
    labels: np.ndarray
    num_classes: int
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        num_classes = check_num_classes(self.num_classes)
        X = check_features(self.X)
        labels = check_labels(self.labels, X.shape[0], num_classes)
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "settings", dict(self.settings))

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]
