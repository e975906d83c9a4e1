"""DINO and DINOv2 ViTs through timm: patch tokens or last-block attention keys.

Each CLASP backbone name maps to one timm model (see `specs.SPECS`), created
with `dynamic_img_size=True` so any image whose sides are multiples of the
patch size can be fed, normalised with the mean/std of the model's own
`pretrained_cfg`, and with position embeddings resized the official way
(`pos_embed.py`), so that features equal the authors' reference code at every
size.

Features (`features=`):
  - "tokens": last-layer patch tokens after the final LayerNorm.
  - "keys":   the last block's attention keys, heads concatenated (hooked on
              `blocks[-1].attn.qkv`), as Deep Spectral Methods does.
CLS and register tokens are dropped (`num_prefix_tokens`).

Weights: see `weights.py` (discovery, download, checkpoint layouts). Device
execution (autocast, pinned copies, out-of-memory splits): `execution.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clasp_engine.backbones._torchvision_compat import import_timm
from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.backbones.execution import autocast_for, forward_split_on_oom, to_device
from clasp_engine.backbones.pos_embed import use_official_pos_embed
from clasp_engine.backbones.specs import SPECS, ViTSpec, spec
from clasp_engine.backbones.weights import load_checkpoint_into, resolve_weights
from clasp_engine.errors import ConfigError

__all__ = ["SPECS", "ViTBackbone", "ViTSpec", "create_vit_model"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0  # random init is seeded so "random" runs are reproducible


def create_vit_model(name: str, random_init: bool = True) -> torch.nn.Module:
    """The timm model for `name`: no classifier, dynamic image size, official position resize, eval mode.

    random_init=True: weights drawn from timm's init with a fixed seed (reproducible).
    random_init=False: parameters on the meta device (no memory, no init cost, ~10x
    faster to build); fill them with `weights.load_checkpoint_into`, which assigns
    the checkpoint's tensors.
    Attention uses torch's fused `scaled_dot_product_attention` (timm's fused path)
    whatever timm's global default is.
    """
    timm = import_timm()
    s = spec(name)
    kwargs = dict(pretrained=False, num_classes=0, dynamic_img_size=True)
    if not random_init:
        with torch.device("meta"):
            model = timm.create_model(s.timm_name, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(s.timm_name, **kwargs)
    for block in model.blocks:
        block.attn.fused_attn = True
    use_official_pos_embed(model, s.interpolate_offset, s.interpolate_antialias)
    return model.eval()


class ViTBackbone:
    """A DINO / DINOv2 ViT producing (rows, cols, D) patch features. See the module docstring.

    Parameters
    ----------
    name : str
        CLASP backbone name.
    model : torch.nn.Module
        The timm model from `create_vit_model`, weights loaded.
    weights : WeightsInfo
        What the weights are (recorded in diagnostics).
    device : torch.device
        Where the forward runs; features are returned there.
    features : {"tokens", "keys"}
    max_batch : int
        Most images of one size per forward. A batch that runs out of device
        memory is split in halves and retried; the size that fitted is then
        used for later batches of that image size.
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        weights: WeightsInfo,
        device: torch.device,
        features: str = "tokens",
        max_batch: int = 8,
    ):
        if features not in ("tokens", "keys"):
            raise ConfigError(f"features={features!r}: choose 'tokens' or 'keys'")
        if max_batch < 1:
            raise ConfigError(f"max_batch={max_batch}: must be at least 1")
        self.name = name
        self.weights = weights
        self.device = torch.device(device)
        self.features = features
        self.max_batch = max_batch
        self.warnings: list[str] = []
        self.model = model.eval().requires_grad_(False).to(self.device)
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        cfg = model.pretrained_cfg
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        attn = model.blocks[-1].attn
        self.num_heads = int(attn.num_heads)
        self.feature_dim = int(model.embed_dim)
        self._qkv: torch.Tensor | None = None
        # Largest batch that fitted, per image size (h, w), after an out-of-memory split.
        self.batch_limits: dict[tuple[int, int], int] = {}
        if features == "keys":
            attn.qkv.register_forward_hook(self._keep_qkv)

    @classmethod
    def create(
        cls,
        name: str,
        weights: str | None,
        device: torch.device,
        features: str = "tokens",
        weights_dir: Path | str | None = None,
        allow_download: bool = True,
        max_batch: int = 8,
    ) -> "ViTBackbone":
        """Build backbone `name` with its weights resolved by `weights.resolve_weights`.

        weights_dir: folder of local weights (None: ~/.cache/clasp/weights);
        allow_download: whether timm's Hub download may be tried.
        """
        path, info = resolve_weights(name, weights, weights_dir=weights_dir, allow_download=allow_download)
        model = create_vit_model(name, random_init=path is None)
        if path is not None:
            load_checkpoint_into(model, path)
        return cls(name, model, info, device, features, max_batch=max_batch)

    def _keep_qkv(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._qkv = output

    def patch_features(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """(rows, cols, D) float32 features per image on `device`, one image at a time.

        Batching images of one size is the segmenter's job (`Segmenter.segment_batch`),
        which calls `batch_features`; this is the convenience for a few images.
        """
        return [self.batch_features(img[None])[0] for img in images]

    def batch_features(self, batch: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images of one size -> (B, rows, cols, D) float32 on `device`.

        One forward pass, split into smaller ones on out-of-memory (the size that fitted is
        remembered for later batches of that image size).
        """
        if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"expected (B, H, W, 3) uint8 images, got {batch.shape} {batch.dtype}")
        h, w = int(batch.shape[1]), int(batch.shape[2])
        if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
            raise ValueError(f"{h}x{w} is not a multiple of patch size {self.patch_size}; "
                             "use clasp_engine.images.resize_to_grid")
        rows, cols = h // self.patch_size, w // self.patch_size
        parts = []
        for start in range(0, len(batch), self.batch_limits.get((h, w), self.max_batch)):
            chunk = batch[start : start + self.batch_limits.get((h, w), self.max_batch)]
            parts.append(self._forward(chunk))
        # clone() outside inference mode: callers may modify the result in place.
        return torch.cat(parts).reshape(len(batch), rows, cols, -1).clone()

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, rows*cols, D) float32 patch features, split on out-of-memory."""
        size = (int(batch.shape[1]), int(batch.shape[2]))

        def remember(n: int) -> None:
            # Halve the limit for this size when a batch within it failed; the halves that a
            # larger failed batch was split into say nothing new.
            if n <= self.batch_limits.get(size, self.max_batch):
                self.batch_limits[size] = max(1, n // 2)

        with torch.inference_mode():
            x = to_device(batch, self.device)
            return forward_split_on_oom(self._forward_tensor, x, on_split=remember)

    def _forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on the device -> (B, rows*cols, D) float32 (autocast on CUDA)."""
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        with autocast_for(self.device):
            tokens = self.model.forward_features(x)
            if self.features == "keys":
                qkv, self._qkv = self._qkv, None
                assert qkv is not None, "qkv hook did not fire"
                b, n, _ = qkv.shape
                # (B, N, 3, heads, head_dim) -> keys with heads concatenated: (B, N, heads*head_dim)
                tokens = qkv.reshape(b, n, 3, self.num_heads, -1)[:, :, 1].reshape(b, n, -1)
        return tokens[:, self.num_prefix_tokens :].float()
