"""Matrix-free spectral numerics, class/cross-class decompositions, spectral
attribution and the closed-form MLR results (Papyan, JMLR 2020).

``theory`` depends on no other package of this project: simulations
(``simulate``) and deep networks (``deepnet``) feed it through the operator
contract of :mod:`theory.operators`.
"""
