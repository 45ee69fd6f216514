"""An MLR teacher: Gaussian inputs labelled by the softmax of a true weight matrix.

``x ~ N(0, L L^T)`` (``L = I_D`` by default) and ``y | x ~ Categorical(softmax(W x + b))``;
classes are not balanced (their frequencies follow the teacher). Labels are drawn by
inverting the cumulative probabilities at one uniform number per example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from theory.checks import check_dim, check_int, check_num_classes

from .dataset import Dataset, as_generator, seed_record, spawn_generators
from .mixtures import covariance_factor
from .solver import mlr_probabilities

__all__ = ["LogisticTeacher", "random_teacher"]


@dataclass(frozen=True)
class LogisticTeacher:
    """Labels ``y ~ softmax(W x + b)`` for inputs ``x = L z``, ``z ~ N(0, I_r)``; ``W`` is ``C x D``,
    ``b`` has length ``C`` (zeros by default), ``input_factor`` ``L`` is ``D x r`` (``None``: identity)."""

    W: np.ndarray
    b: np.ndarray | None = None
    input_factor: np.ndarray | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        W = np.ascontiguousarray(np.asarray(self.W, dtype=np.float64))
        if W.ndim != 2:
            raise ValueError(f"W: expected a 2-D array (num_classes x D), got shape {W.shape}")
        C = check_num_classes(W.shape[0])
        check_dim(W.shape[1], C)
        if not np.isfinite(W).all():
            raise ValueError("W: contains NaN or Inf")
        b = np.zeros(C) if self.b is None else np.asarray(self.b, dtype=np.float64)
        if b.shape != (C,) or not np.isfinite(b).all():
            raise ValueError(f"b: expected {C} finite numbers, got shape {b.shape}")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "input_factor", covariance_factor(W.shape[1], None, self.input_factor, names=("input_cov", "input_factor")))
        object.__setattr__(self, "settings", dict(self.settings))

    @property
    def num_classes(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[1]

    def sample(self, num_samples: int, seed: Any) -> Dataset:
        """``num_samples`` examples ``(x_i, y_i)`` drawn from ``seed``."""
        N = check_int("num_samples", num_samples, 1)
        return self._draw(N, as_generator(seed), {"seed": seed_record(seed)})

    def train_test(self, n_train: int, n_test: int, seed: Any) -> tuple[Dataset, Dataset]:
        """A training set of ``n_train`` and a fresh test set of ``n_test`` examples from two
        independent streams spawned from ``seed``."""
        n_train = check_int("n_train", n_train, 1)
        n_test = check_int("n_test", n_test, 1)
        train_rng, test_rng = spawn_generators(seed, 2)
        record = seed_record(seed)
        return (
            self._draw(n_train, train_rng, {"seed": record, "split": "train"}),
            self._draw(n_test, test_rng, {"seed": record, "split": "test"}),
        )

    def _draw(self, N: int, rng: np.random.Generator, record: dict) -> Dataset:
        r = self.dim if self.input_factor is None else self.input_factor.shape[1]
        Z = rng.standard_normal((N, r))
        X = Z if self.input_factor is None else Z @ self.input_factor.T
        P = mlr_probabilities(X, self.W, self.b)
        u = rng.random(N)
        labels = np.minimum((np.cumsum(P, axis=1) < u[:, None]).sum(1), self.num_classes - 1)
        return Dataset(X, labels.astype(np.int64), self.num_classes, {**self.settings, "num_samples": N, **record})


def random_teacher(
    num_classes: int, dim: int, *, scale: float, seed: Any, input_cov: Any = None, input_factor: Any = None
) -> LogisticTeacher:
    """A teacher with ``W_{cd} ~ N(0, scale^2 / D)`` i.i.d. (drawn from ``seed``), no intercept:
    with white inputs each logit has standard deviation about ``scale``."""
    C = check_num_classes(num_classes)
    D = check_dim(dim, C)
    scale_f = float(scale)
    if not np.isfinite(scale_f) or scale_f < 0:
        raise ValueError(f"scale: expected a finite number >= 0, got {scale!r}")
    W = as_generator(seed).standard_normal((C, D)) * (scale_f / np.sqrt(D))
    L = covariance_factor(D, input_cov, input_factor, names=("input_cov", "input_factor"))
    settings = {"generator": "teacher", "num_classes": C, "dim": D, "scale": scale_f, "weights_seed": seed_record(seed)}
    return LogisticTeacher(W, None, L, settings)
