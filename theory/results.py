"""Frozen result records and their conversion to JSON-ready plain values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

__all__ = ["to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Plain Python values (dicts, lists, floats, str) for ``obj``.

    Dataclasses become dicts of their fields, numpy arrays and torch tensors
    become (nested) lists, non-finite floats become ``None``, ``torch.dtype`` and
    ``torch.device`` their names. Fields whose dataclass metadata has
    ``json=False`` (for example eigenvector blocks of size p) are left out.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_jsonable(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("json", True)
        }
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    return obj
