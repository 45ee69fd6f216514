"""One spectrum record for every operator (Papyan 2020, Sec. 2 and Appendix C).

:func:`spectrum` splits the spectrum of a symmetric operator ``A`` of size ``p`` as
``(1/p) sum_{i<=k} delta(lambda_i) + ((p-k)/p) phi_bulk``: the top ``k`` eigenpairs
(:func:`theory.eigenpairs.top_eigenpairs`, with residuals and ``converged``) are the
outliers, point masses ``1/p`` each, and ``phi_bulk`` is the density of
``(I - QQ^T) A (I - QQ^T)`` on the complement of their eigenvectors, on a linear
and a log axis, from one set of Lanczos runs (:func:`theory.density.quadrature`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import check_int
from .density import DensitySettings, SpectralDensity, bulk_quadrature, density_settings
from .eigenpairs import Eigenpairs, top_eigenpairs
from .operators import CountedOperator, as_operator
from .results import to_jsonable

__all__ = ["Spectrum", "spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """The spectrum of one operator: outliers and the deflated bulk.

    ``top``: the ``k`` top eigenpairs (``top.converged``, ``top.residuals``);
    ``outliers``: their eigenvalues, descending, point masses of weight
    ``outlier_weight = 1/p``; ``density`` / ``log_density``: the bulk density on
    the complement of their eigenvectors (each integrates to one; times
    ``bulk_weight = (p-k)/p`` for its share of the whole), from one quadrature;
    ``point_mass``: the bulk's value when the bulk has zero width (the deflated
    operator is ``c I`` on the complement, e.g. zero), else None; ``warnings``: what
    the estimate could not resolve; ``num_products``: product columns of ``A``
    used in all (eigenpairs, densities and symmetry probes); ``settings``: the
    density settings used.
    """

    name: str
    size: int
    dtype: str
    top: Eigenpairs
    outliers: np.ndarray
    outlier_weight: float
    bulk_weight: float
    density: SpectralDensity
    log_density: SpectralDensity
    point_mass: float | None
    num_products: int
    settings: DensitySettings
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``json.dumps`` (eigenvectors left out)."""
        return to_jsonable(self)


def spectrum(
    op: object,
    k: int,
    settings: DensitySettings | None = None,
    *,
    name: str = "",
    check_symmetry: bool = True,
    show_progress: bool = False,
    **eigen_options: Any,
) -> Spectrum:
    """Top-``k`` eigenpairs of ``op`` and the linear and log densities of the rest.

    ``eigen_options`` (``which``, ``tol``, ``max_iterations``, ...) go to
    :func:`theory.eigenpairs.top_eigenpairs` (with ``seed=settings.seed``); the
    bulk comes from ``settings.num_repeats`` Lanczos runs of ``settings.num_steps``
    steps started in the complement of the ``k`` eigenvectors.
    """
    settings = density_settings(settings)
    op = as_operator(op)
    k = check_int("k", k, 1, op.size - 2, what="(outliers; at least 2 dimensions must remain for the bulk)")
    check_int("num_steps", settings.num_steps, 2, op.size, what="(the operator's dimension)")
    counted = CountedOperator(op)
    top = top_eigenpairs(counted, k, seed=settings.seed, check_symmetry=check_symmetry, show_progress=show_progress,
                         **eigen_options)
    _, values, q = bulk_quadrature(counted, top, settings, check_symmetry=False, show_progress=show_progress)
    linear, log = q.linear(), q.log()
    notes = (log.resolution.warning,) if log.resolution.warning else ()
    return Spectrum(
        name=str(name),
        size=op.size,
        dtype=str(op.dtype),
        top=top,
        outliers=np.sort(values)[::-1].copy(),
        outlier_weight=1.0 / op.size,
        bulk_weight=(op.size - k) / op.size,
        density=linear,
        log_density=log,
        point_mass=q.point_mass,
        num_products=counted.columns,
        settings=settings,
        warnings=notes,
    )
