"""Matrix-free spectral numerics on the operator contract (Papyan 2020, Appendix C).

Every routine touches the operator only through ``matmat``; vectors live in the
operator's dtype and device, while Lanczos coefficients, tridiagonal
eigenproblems and Rayleigh-Ritz Gram matrices are float64 on the CPU.

* :func:`lanczos`: Lanczos tridiagonalisation ``Q^T A Q = T`` from one or several
  independent random starts (run together as the columns of one block), with full
  reorthogonalisation (exact, ``O(m p)`` memory) or without (``O(p)`` memory);
  Gauss quadrature nodes ``theta_k`` and weights ``tau_k = S_{1k}^2`` from
  ``T = S diag(theta) S^T``.
* :func:`bounds_from_lanczos` / :func:`estimate_bounds`: the spectral interval
  ``[theta_min - r_min, theta_max + r_max]`` widened by a margin, with
  ``r = |beta_m S_{m,k}|`` the Ritz residual bounds.
* :class:`DensitySettings` and :func:`quadrature`: one set of Lanczos runs (bounds
  included) from which :meth:`Quadrature.linear` and :meth:`Quadrature.log` give the
  Gaussian-smoothed density ``phi(x) = (1/n) sum_runs sum_k tau_k N(x; theta_k, sigma^2)``
  on a linear or a log axis; :func:`spectral_density`, :func:`log_spectral_density`
  and :func:`spectral_densities` are thin wrappers.
* :func:`top_eigenpairs`: thick-restart block Lanczos with Rayleigh-Ritz; residuals,
  ``converged`` and ``num_products`` in the result.
* :func:`deflate` and :func:`bulk_density`: remove outliers ``A - Q diag(lambda) Q^T``
  and estimate the density of the rest, outliers kept as point masses ``1/p``.
* :func:`spectrum`: the record of all of it for one operator (:class:`Spectrum`).

The implementation lives in :mod:`theory.lanczos`, :mod:`theory.density`,
:mod:`theory.eigenpairs` and :mod:`theory.spectrum`; this module is the public
face that gathers them.
"""

from .density import (
    DeflatedDensity,
    DensitySettings,
    Quadrature,
    Resolution,
    SpectralDensity,
    bulk_densities,
    bulk_density,
    gaussian_smooth,
    kernel_width,
    log_spectral_density,
    quadrature,
    spectral_densities,
    spectral_density,
)
from .eigenpairs import ConvergenceWarning, Eigenpairs, deflate, top_eigenpairs
from .lanczos import (
    LanczosResult,
    SpectralBounds,
    bounds_from_lanczos,
    estimate_bounds,
    lanczos,
)
from .spectrum import Spectrum, spectrum

__all__ = [
    "ConvergenceWarning",
    "DeflatedDensity",
    "DensitySettings",
    "Eigenpairs",
    "LanczosResult",
    "Quadrature",
    "Resolution",
    "SpectralBounds",
    "SpectralDensity",
    "Spectrum",
    "bounds_from_lanczos",
    "bulk_densities",
    "bulk_density",
    "deflate",
    "estimate_bounds",
    "gaussian_smooth",
    "kernel_width",
    "lanczos",
    "log_spectral_density",
    "quadrature",
    "spectral_densities",
    "spectral_density",
    "spectrum",
    "top_eigenpairs",
]
