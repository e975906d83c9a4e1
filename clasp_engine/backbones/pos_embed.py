"""Position embeddings resized the way the official DINO / DINOv2 code does, hooked into timm's ViT.

Why not timm's own rule: timm resizes the patch position grid with
`F.interpolate(size=target, mode="bicubic", antialias=True)`. The official
DINO code (facebookresearch/dino, `interpolate_pos_encoding`) and DINOv2
without registers (interpolate_offset=0.1, interpolate_antialias=False)
resize by *scale factor* `(grid + 0.1) / M` with antialias off. Bicubic
sampling follows the scale factor, not the output size, and antialiased
bicubic uses another kernel, so every size other than the training grid gave
other features. Measured with random weights in the official layouts
(`python tests/test_backbone_fidelity.py`), patch tokens vs the official
formula at 224x320, 448x336 and 320x224 (keys alike):
    timm's rule:  max abs diff 0.18-0.33 (DINO S/8, S/16, B/8, B/16), 0.66-1.16
                  (DINOv2 S/14); smallest per-patch cosine 0.9945-0.9988 (DINO),
                  0.965-0.985 (DINOv2)
    this module:  max abs diff <= 6e-6, 1 - smallest cosine < 5e-9 (float noise)
DINOv2 with registers is built by Meta with offset 0 and antialias on, which
is timm's rule; it goes through the same function with those settings.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F


def resize_patch_pos_embed(
    patch_pos: torch.Tensor, grid: tuple[int, int], offset: float, antialias: bool
) -> torch.Tensor:
    """Resize a square (1, M*M, D) patch position table to `grid` = (rows, cols) the official way.

    offset > 0: bicubic by scale factor ((rows + offset) / M, (cols + offset) / M),
    as DINO and DINOv2 (without registers). offset == 0: bicubic to the size
    (rows, cols), as DINOv2 with registers. Returns (1, rows*cols, D) in the
    dtype of `patch_pos`, computed in float32. The training grid itself is
    returned unchanged (the official code returns its table as is there).
    """
    rows, cols = grid
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"position table of {n} patches is not square; cannot resize it the official way")
    if (rows, cols) == (m, m):
        return patch_pos
    table = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = (float(rows + offset) / m, float(cols + offset) / m)
        out = F.interpolate(table, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        out = F.interpolate(table, size=(rows, cols), mode="bicubic", antialias=antialias)
    if tuple(out.shape[-2:]) != (rows, cols):  # the +offset guards against exactly this
        raise RuntimeError(f"position resize gave {tuple(out.shape[-2:])}, expected {(rows, cols)}")
    return out.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(patch_pos.dtype)


def use_official_pos_embed(model: torch.nn.Module, offset: float, antialias: bool) -> torch.nn.Module:
    """Make a timm VisionTransformer (dynamic_img_size) add position embeddings the official way.

    Replaces the instance's `_pos_embed` (called by timm's `forward_features`);
    everything else, class/register tokens included, stays timm's. Returns `model`.
    """
    if not getattr(model, "dynamic_img_size", False) or model.pos_embed is None:
        raise ValueError("official position resize needs a timm ViT built with dynamic_img_size=True")

    def _pos_embed(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, rows, cols, c = x.shape  # patch_embed output in NHWC with dynamic_img_size
        n_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        prefix_pos, patch_pos = self.pos_embed[:, :n_prefix], self.pos_embed[:, n_prefix:]
        pos = resize_patch_pos_embed(patch_pos, (rows, cols), offset, antialias)
        x = x.reshape(b, rows * cols, c)
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(b, -1, -1))
        if self.no_embed_class:  # DINOv2 with registers: the class position is folded into cls_token
            x = x + pos
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        else:  # DINO, DINOv2: the table has a class-token position
            x = torch.cat(to_cat + [x], dim=1) if to_cat else x
            x = x + torch.cat([prefix_pos, pos], dim=1)
        return self.pos_drop(x)

    model._pos_embed = types.MethodType(_pos_embed, model)
    return model
