"""Simulations of the class/cross-class structure: Gaussian-mixture and MLR-teacher
generators (:mod:`simulate.mixtures`, :mod:`simulate.teacher`), a Numba Newton-CG
solver for multinomial logistic regression (:mod:`simulate.solver`, kernels in
:mod:`simulate.kernels`), and the MLR empirical Fisher with its extended gradients
(:mod:`simulate.fisher`), which feed the operators and decompositions of ``theory``.
"""
