"""Import timm on a CPU-only torch whose torchvision wheel is a CUDA build.

Why: the torchvision wheels on the package registry are CUDA builds. Next to the
CPU torch pinned in pyproject.toml, `import torchvision` (which `import timm`
does unconditionally) fails with `RuntimeError: operator torchvision::nms does
not exist`, because the compiled extension that registers the operator schemas
cannot load. Defining the two missing schemas lets the Python side of
torchvision import, and timm's ViTs work; only `torchvision.ops.nms` itself
stays unusable (CLASP never calls it). The workaround is applied only when the
import actually fails that way; on a matching torch/torchvision pair it does
nothing. See shared/STACK-NOTES.md, "timm on a CPU-only torch".
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType

import torch

_LOCK = threading.Lock()
_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def import_timm() -> ModuleType:
    """`import timm`, defining torchvision's missing operator schemas first if needed."""
    global _LIBRARY
    with _LOCK:
        try:
            import timm
        except RuntimeError as exc:
            if "operator torchvision::nms does not exist" not in str(exc):
                raise
            # The failed import left half-initialised modules behind; drop them and retry.
            for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
                del sys.modules[name]
            _LIBRARY = torch.library.Library("torchvision", "DEF")
            _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            import timm
        return timm
