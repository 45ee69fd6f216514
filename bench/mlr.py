"""Numba kernels of simulate against the best vectorised numpy / torch (BLAS) formulation
of the same formula, measured in the same run.

    python bench/mlr.py [--threads T] [--repeats R] [--quick]

Rows: the fused loss+gradient kernel; the Fisher (= Hessian) product on blocks of
k = 1, 2, 4, 16 columns (``mlr_fisher`` with ``backend="numba"`` against
``backend="torch"``) and on one C x D direction against numpy; the Newton-CG solver end to end against the same Newton-CG
driven by BLAS from Python and against scikit-learn; many small problems fitted in
parallel. Compile time is excluded (every function runs once before timing); each
time is the minimum over R repeats. ``speedup`` is reference time / Numba time
(> 1: Numba faster).

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (set it to override): with the
OpenMP default (threads spin while waiting), a parallel region on a machine that
has more runnable processes than cores costs a scheduler time slice (about 100 ms
measured on a loaded 2-core machine, against 2.6 ms with ``PASSIVE``), for Numba's
``omp`` layer and torch alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=None, help="threads for numba, torch and numpy's BLAS (default: each library's own)")
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--quick", action="store_true", help="small sizes only")
ARGS = parser.parse_args()
# Thread pools read these when they start, so they are set before numpy, numba and torch load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if ARGS.threads:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(ARGS.threads)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from simulate import kernels  # noqa: E402
from simulate.fisher import mlr_fisher  # noqa: E402
from simulate.mixtures import canonical_mixture  # noqa: E402
from simulate.solver import fit_mlr, fit_mlr_many, mlr_loss_grad  # noqa: E402


def best_time(fn, repeats):
    fn()  # warm-up: compilation and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# -- references: the same formulas with BLAS matrix products ----------------


def numpy_loss_grad(X, Y, W, penalty):
    """Mean cross-entropy and its gradient: Z = X W^T, P = softmax(Z), G = (P - Y)^T X / N."""
    Z = X @ W.T
    Z -= Z.max(1, keepdims=True)
    E = np.exp(Z)
    s = E.sum(1, keepdims=True)
    P = E / s
    N = X.shape[0]
    loss = (np.log(s[:, 0]) - (Z * Y).sum(1)).mean() + 0.5 * penalty * (W * W).sum()
    return loss, (P - Y).T @ X / N + penalty * W, P


def numpy_curvature(X, P, M):
    """(1/N) sum_i A(p_i) M x_i x_i^T for M (C x D): U = X M^T, R = P*(U - <P,U>), R^T X / N."""
    U = X @ M.T
    R = P * (U - (P * U).sum(1, keepdims=True))
    return R.T @ X / X.shape[0]


def numpy_newton_cg(X, labels, C, penalty, tol, max_iter=100, max_cg=250):
    """The Newton-CG of simulate.solver (same forcing term, same Armijo rule) with BLAS kernels."""
    N, D = X.shape
    Y = np.eye(C)[labels]
    W = np.zeros((C, D))
    f, G, P = numpy_loss_grad(X, Y, W, penalty)
    for _ in range(max_iter):
        gnorm = np.sqrt((G * G).sum())
        if gnorm <= tol:
            break
        d, r = np.zeros_like(W), -G
        z, rr = r.copy(), (r * r).sum()
        for _ in range(max_cg):
            h = numpy_curvature(X, P, z) + penalty * z
            curv = (z * h).sum()
            if curv <= 0:
                break
            a = rr / curv
            d += a * z
            r -= a * h
            rr_new = (r * r).sum()
            if np.sqrt(rr_new) <= min(0.5, np.sqrt(gnorm)) * gnorm:
                break
            z = r + (rr_new / rr) * z
            rr = rr_new
        slope, step = (G * d).sum(), 1.0
        for _ in range(40):
            ft, Gt, Pt = numpy_loss_grad(X, Y, W + step * d, penalty)
            if ft <= f + 1e-4 * step * slope or (ft - f <= 8 * np.finfo(float).eps * abs(f) and (Gt * Gt).sum() < gnorm**2):
                break
            step *= 0.5
        W, f, G, P = W + step * d, ft, Gt, Pt
    return W, np.sqrt((G * G).sum())


# -- the table ---------------------------------------------------------------

rows = []


def row(kernel, size, t_numba, t_ref, ref_name, note=""):
    rows.append((kernel, size, t_numba * 1e3, ref_name, t_ref * 1e3, t_ref / t_numba, note))
    k, s, tn, rn, tr, sp, nt = rows[-1]
    print(f"{k:<24} {s:<22} {tn:>10.3f} {rn:<24} {tr:>10.3f} {sp:>8.2f}  {nt}", flush=True)


def main():
    args = ARGS
    threads = numba.get_num_threads()
    R = args.repeats
    print(
        f"numba {numba.__version__}, torch {torch.__version__}, numpy {np.__version__}; numba {threads} / torch "
        f"{torch.get_num_threads()} thread(s) (BLAS: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}) "
        f"of {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; min of {R} repeats; times in ms"
    )
    print(f"{'kernel':<24} {'size':<22} {'numba':>10} {'reference':<24} {'ref':>10} {'speedup':>8}")

    sizes = [(3, 50, 1000), (10, 200, 500)] if args.quick else [(3, 50, 1000), (10, 200, 500), (10, 1000, 500), (10, 100, 5000)]
    for C, D, n in sizes:
        data = canonical_mixture(C, D, 4.0).sample(n, seed=0)
        X, y, N = data.X, data.labels, data.num_samples
        W = np.random.default_rng(1).standard_normal((C, D)) * 0.1
        size = f"N={N} D={D} C={C}"
        Y = np.eye(C)[y]
        Pb, Gb, gbb = np.empty((N, C)), np.empty((C, D)), np.empty(C)
        zero_b = np.zeros(C)
        loss_grad = kernels.loss_grad_par if kernels.use_parallel(N, C * D) else kernels.loss_grad_ser
        t_nb = best_time(lambda: loss_grad(X, y, W, zero_b, Pb, Gb, gbb), R)
        t_np = best_time(lambda: numpy_loss_grad(X, Y, W, 0.0), R)
        Xt, Wt, yt = torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(y)

        def torch_loss_grad():
            Z = Xt @ Wt.T
            loss = torch.nn.functional.cross_entropy(Z, yt)
            P = torch.softmax(Z, 1)
            P[torch.arange(N), yt] -= 1
            return loss, P.T @ Xt / N

        t_t = best_time(torch_loss_grad, R)
        assert abs(mlr_loss_grad(X, y, W)[0] - numpy_loss_grad(X, Y, W, 0.0)[0]) < 1e-12
        row("loss+grad", size, t_nb, t_np, "numpy BLAS")
        row("loss+grad", size, t_nb, t_t, "torch BLAS")

        P = Pb.copy()
        op = mlr_fisher(X, W, backend="numba")
        op_blas = mlr_fisher(X, W, backend="torch")  # U = X M, R = P*(U - <P,U>), X^T R: width kC
        for k in (1, 2, 4, 16):
            V = torch.randn(C * D, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
            t_nb = best_time(lambda: op.matmat(V), R)
            t_t = best_time(lambda: op_blas.matmat(V), R)
            assert (op.matmat(V) - op_blas.matmat(V)).abs().max() < 1e-12 * V.abs().max()
            row(f"Fisher product k={k}", size, t_nb, t_t, "torch BLAS")
        M = np.random.default_rng(2).standard_normal((C, D))
        Mk, vb, out, outb = M[None].copy(), np.zeros((1, C)), np.empty((1, C, D)), np.empty((1, C))
        curvature = kernels.curvature_product_par if kernels.use_parallel(N, C * D) else kernels.curvature_product_ser
        t_nb = best_time(lambda: curvature(X, P, Mk, vb, out, outb), R)
        t_np = best_time(lambda: numpy_curvature(X, P, M), R)
        row("Hessian-vector (kernel)", size, t_nb, t_np, "numpy BLAS")

    # -- the solver end to end ------------------------------------------------
    penalty, tol = 1e-3, 1e-8
    solver_sizes = [(3, 50, 500), (10, 100, 200)] if args.quick else [(3, 50, 500), (10, 100, 200), (10, 200, 1000)]
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        LogisticRegression = None
    for C, D, n in solver_sizes:
        data = canonical_mixture(C, D, 2.0).sample(n, seed=0)
        X, y, N = data.X, data.labels, data.num_samples
        size = f"N={N} D={D} C={C}"
        fit = fit_mlr(X, y, C, penalty=penalty, tol=tol)
        t_nb = best_time(lambda: fit_mlr(X, y, C, penalty=penalty, tol=tol), max(3, R // 2))
        W_np, g_np = numpy_newton_cg(X, y, C, penalty, tol)
        assert np.abs(W_np - fit.W).max() < 10 * tol / penalty
        t_np = best_time(lambda: numpy_newton_cg(X, y, C, penalty, tol), max(3, R // 2))
        note = f"{fit.iterations} Newton / {fit.cg_iterations} CG steps, |g|={fit.grad_norm:.1e}"
        row("Newton-CG solver", size, t_nb, t_np, "same Newton-CG, numpy", note)
        if LogisticRegression is not None:
            sk = LogisticRegression(C=1 / (N * penalty), fit_intercept=False, solver="lbfgs", tol=tol, max_iter=1000)
            t_sk = best_time(lambda: sk.fit(X, y), max(3, R // 2))
            g_sk = np.sqrt((mlr_loss_grad(X, y, sk.coef_, penalty=penalty)[1] ** 2).sum())
            row("Newton-CG solver", size, t_nb, t_sk, "sklearn lbfgs", f"sklearn |g|={g_sk:.1e}")

    # -- many small problems --------------------------------------------------
    many_sizes = [(3, 10, 20, 64)] if args.quick else [(3, 10, 20, 256), (10, 20, 20, 64)]
    for C, D, n, B in many_sizes:
        mix = canonical_mixture(C, D, 2.0)
        sets = [mix.sample(n, seed=s) for s in range(B)]
        Xs, ys = np.stack([d.X for d in sets]), np.stack([d.labels for d in sets])
        size = f"{B} x (N={C * n} D={D} C={C})"
        t_nb = best_time(lambda: fit_mlr_many(Xs, ys, C, penalty=1e-2, tol=tol), max(3, R // 2))
        t_loop = best_time(lambda: [fit_mlr(Xs[m], ys[m], C, penalty=1e-2, tol=tol) for m in range(B)], max(3, R // 2))
        t_np = best_time(lambda: [numpy_newton_cg(Xs[m], ys[m], C, 1e-2, tol) for m in range(B)], 3)
        row("many problems", size, t_nb, t_loop, "fit_mlr loop (Numba)")
        row("many problems", size, t_nb, t_np, "Newton-CG numpy loop")
        if LogisticRegression is not None:
            sk = LogisticRegression(C=1 / (C * n * 1e-2), fit_intercept=False, solver="lbfgs", tol=tol, max_iter=1000)
            t_sk = best_time(lambda: [sk.fit(Xs[m], ys[m]) for m in range(B)], 3)
            row("many problems", size, t_nb, t_sk, "sklearn lbfgs loop")
    print(f"numba threading layer: {numba.threading_layer()}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")


if __name__ == "__main__":
    main()
