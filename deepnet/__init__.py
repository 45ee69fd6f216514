"""Deep networks as a source of the toolkit's matrices: real data sets, the
paper's networks, deterministic training, and (in ``deepnet.operators``)
matrix-free Hessian / G / E products over a data set.

Command line: ``python -m deepnet train ...`` and ``python -m deepnet spectrum ...``.
"""
