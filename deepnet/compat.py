"""Compatibility step for importing torchvision next to a CPU-only torch.

Every torchvision wheel on these machines is a CUDA build. Next to a CPU-only
torch its compiled operators do not load, and ``import torchvision`` fails in
its fake-tensor registrations with ``RuntimeError: operator torchvision::nms
does not exist``. Declaring the schemas of the two operators it registers
there (``nms`` and ``qnms``, without kernels) lets the import finish; models,
transforms and datasets then work. ``torchvision.ops`` and ``torchvision.io``
do not (they need the compiled kernels).
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

__all__ = ["import_torchvision"]

# Kept alive for the life of the process: dropping the Library object would
# remove the schemas again.
_SCHEMAS: list[torch.library.Library] = []


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, importing it the plain way when that works.

    Only when the plain import fails with the missing-``nms`` error are the two
    schemas declared in a ``torch.library.Library("torchvision", "FRAGMENT")``
    and the import repeated; any other import error propagates unchanged.
    """
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        # Forget the half-imported package so that the second import runs it again.
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        if not _SCHEMAS:
            library = torch.library.Library("torchvision", "FRAGMENT")
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _SCHEMAS.append(library)
        import torchvision
    return torchvision
