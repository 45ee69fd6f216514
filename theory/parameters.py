"""The two parameter orders of a linear classifier and the map between them
(docs/math.md#parameter-order).

``theory`` and ``simulate`` list ``W`` (C x D) as in Lemma 8.1 of Papyan 2020: in
``D`` blocks of size ``C``, ``W[c, d]`` at index ``d*C + c`` (``W.T.reshape(-1)``).
Torch (``nn.Linear(D, C).weight``, ``deepnet``) lists it row by row, ``W[c, d]`` at
``c*D + d`` (``W.reshape(-1)``). ``perm = paper_order(C, D)`` has
``perm[d*C + c] = c*D + d``, so ``v_paper = v_torch[perm]`` and
``A_paper = A_torch[perm][:, perm]``.
"""

from __future__ import annotations

import torch

from .checks import check_int
from .operators import SymmetricOperator, as_operator

__all__ = ["PermutedOperator", "paper_order", "torch_order"]


def paper_order(num_classes: int, dim: int) -> torch.Tensor:
    """``perm`` (length ``C D``) with ``perm[d*C + c] = c*D + d``: torch-ordered
    vectors to the paper's order by ``v[perm]``."""
    C = check_int("num_classes", num_classes, 1)
    D = check_int("dim", dim, 1)
    return torch.arange(C * D).reshape(C, D).T.reshape(-1)


def torch_order(num_classes: int, dim: int) -> torch.Tensor:
    """The inverse of :func:`paper_order`: paper-ordered vectors to torch's order by ``v[perm]``."""
    return torch.argsort(paper_order(num_classes, dim))


class PermutedOperator(SymmetricOperator):
    """``B = A[perm][:, perm]``, that is ``B[i, j] = A[perm[i], perm[j]]``, without
    forming a matrix: ``B V = (A V[inv])[perm]`` with ``inv`` the inverse permutation.

    ``PermutedOperator(G_torch, paper_order(C, D))`` is a torch-ordered ``nn.Linear``
    operator in the paper's order.
    """

    def __init__(self, base: object, perm: torch.Tensor):
        base = as_operator(base)
        perm = torch.as_tensor(perm)
        if perm.shape != (base.size,) or perm.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"perm: expected an integer tensor of shape ({base.size},), got {perm.dtype} {tuple(perm.shape)}")
        if not bool((torch.sort(perm).values == torch.arange(base.size, device=perm.device)).all()):
            raise ValueError(f"perm: expected a permutation of 0..{base.size - 1}")
        super().__init__(base.size, base.dtype, base.device)
        self.base = base
        self.perm = perm.to(device=base.device, dtype=torch.int64)
        self.inverse = torch.argsort(self.perm)

    def _product(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, scale = self.base.matmat_with_scale(V[self.inverse])
        return out[self.perm], scale

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(V)[0]
