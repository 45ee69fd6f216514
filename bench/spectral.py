"""Overhead of the spectral core over the products it performs, and a side-by-side
run of curvlinops' ``papyan2020traces`` density estimator.

For each operator (p = 10^6 by default) the script times ``spectral_density`` and
``top_eigenpairs`` and, inside the same call, the time spent in the operator's
products; the overhead is ``total / products - 1``. Operators with a known
spectrum ``D`` (a Marchenko-Pastur-like bulk plus three spikes):

* ``diagonal``: ``A = diag(D)``, a product of about a millisecond;
* ``householder``: ``A = H diag(D) H`` with ``H`` a product of Householder
  reflections, a product of roughly ten times that.

Run: ``python bench/spectral.py [--size 1000000] [--num-steps 128]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from theory.operators import CountedOperator, SymmetricOperator
from theory.spectral import (
    gaussian_smooth,
    kernel_width,
    spectral_density,
    top_eigenpairs,
)


class Diagonal(SymmetricOperator):
    def __init__(self, d: torch.Tensor):
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d[:, None]

    def _matmat(self, V):
        return self.d * V


class Householder(SymmetricOperator):
    """``H diag(d) H`` with ``H = H_1 ... H_r``, ``H_i = I - 2 u_i u_i^T``."""

    def __init__(self, d: torch.Tensor, num_reflections: int, seed: int = 0):
        super().__init__(d.numel(), d.dtype, d.device)
        g = torch.Generator().manual_seed(seed)
        U = torch.randn(d.numel(), num_reflections, generator=g, dtype=d.dtype)
        self.U = U / U.norm(dim=0)
        self.d = d[:, None]

    def _reflect(self, V, order):
        for i in order:
            u = self.U[:, i : i + 1]
            V = V - 2.0 * u @ (u.T @ V)
        return V

    def _matmat(self, V):
        r = range(self.U.shape[1])
        return self._reflect(self.d * self._reflect(V, reversed(r)), r)


def spectrum(p: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(p, 4, generator=g, dtype=torch.float64)
    d = (z**2).mean(dim=1)  # chi^2_4 / 4: a bulk on [0, ~5]
    d[:3] = torch.tensor([40.0, 25.0, 15.0], dtype=torch.float64)
    return d


def l1_to_truth(grid: np.ndarray, density: np.ndarray, sigma: float, eigenvalues: np.ndarray) -> float:
    """L1 distance to the exact eigenvalues smoothed with the kernel ``sigma``
    (eigenvalues binned at sigma/50 first, so that a million points are cheap)."""
    width = sigma / 50
    edges = np.arange(eigenvalues.min() - width, eigenvalues.max() + 2 * width, width)
    counts, edges = np.histogram(eigenvalues, bins=edges)
    keep = counts > 0
    centers = 0.5 * (edges[1:] + edges[:-1])[keep]
    truth = gaussian_smooth(centers, counts[keep] / eigenvalues.size, sigma, grid)
    return float(np.trapezoid(np.abs(density - truth), grid))


def curvlinops_adapter(op: SymmetricOperator):
    """curvlinops' ``PyTorchLinearOperator`` around one of ours (or None if not installed)."""
    try:
        from curvlinops._torch_base import PyTorchLinearOperator
    except ImportError:
        return None

    class Adapter(PyTorchLinearOperator):
        def __init__(self):
            super().__init__([(op.size,)], [(op.size,)])

        def _matmat(self, X):
            return [op.matmat(X[0])]

        def _adjoint(self):
            return self

        @property
        def device(self):
            return op.device

        @property
        def dtype(self):
            return op.dtype

    return Adapter()


def row(name: str, timed: CountedOperator, total: float, extra: str = "") -> str:
    return (
        f"{name:<38s} {total:8.3f} s  products {timed.seconds:8.3f} s ({timed.columns:5d} columns, "
        f"{timed.calls:4d} calls)  overhead {total / timed.seconds - 1:7.1%}  {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--reflections", type=int, default=3)
    args = parser.parse_args()
    p, m = args.size, args.num_steps
    d = spectrum(p)
    eigenvalues = d.numpy()
    print(f"p = {p}, num_steps = {m}, torch threads = {torch.get_num_threads()}, float64\n")
    for name, base in (("diagonal", Diagonal(d)), (f"householder x{args.reflections}", Householder(d, args.reflections))):
        timed = CountedOperator(base)
        v = torch.randn(p, 1, dtype=torch.float64)
        timed.matmat(v)
        t1 = timed.seconds
        print(f"== {name}: one product {1e3 * t1:.2f} ms")
        for label, kw in (
            ("spectral_density fast, 1 start", dict(num_repeats=1)),
            ("spectral_density fast, 10 starts", dict(num_repeats=10)),
            ("spectral_density reorthogonalized, 1", dict(num_repeats=1, reorthogonalize=True)),
        ):
            timed.reset()
            t = time.perf_counter()
            res = spectral_density(timed, num_steps=m, seed=0, **kw)
            total = time.perf_counter() - t
            err = l1_to_truth(res.grid, res.density, res.sigma, eigenvalues)
            print(row(label, timed, total, f"L1 {err:.3f}"))
        timed.reset()
        t = time.perf_counter()
        pairs = top_eigenpairs(timed, 3, tol=1e-8, seed=0)
        total = time.perf_counter() - t
        rel = np.max(np.abs(pairs.eigenvalues - np.array([40.0, 25.0, 15.0])) / 15.0)
        print(row("top_eigenpairs k=3", timed, total, f"{pairs.num_iterations} it, rel err {rel:.1e}"))

        adapter = curvlinops_adapter(timed)
        if adapter is None:
            print("curvlinops-for-pytorch not installed: side-by-side run skipped (pip install '.[bench]')")
            continue
        from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum

        for reps in (1, 10):
            timed.reset()
            torch.manual_seed(0)
            t = time.perf_counter()
            grid, dens = lanczos_approximate_spectrum(adapter, m, num_repeats=reps, kappa=3.0, margin=0.05)
            total = time.perf_counter() - t
            grid, dens = grid.numpy(), dens.numpy()
            sigma = kernel_width(m, 3.0, 0.5 * (grid[-1] - grid[0]))
            err = l1_to_truth(grid, dens, sigma, eigenvalues)
            mass = np.trapezoid(dens, grid)
            print(row(f"curvlinops papyan2020traces, {reps} start", timed, total, f"L1 {err:.3f} (mass {mass:.3f})"))
        print()


if __name__ == "__main__":
    main()
