"""Feature extractors: timm DINO / DINOv2 ViTs (`vit.py`) and a weight-free `classic` one.

    device = resolve_device(config.device)
    backbone = create_backbone(config, device, weights_dir=settings_weights_dir)
    feats = backbone.patch_features([image])  # [(rows, cols, D) float32 tensor]

Backbone choice "auto" takes the first of `AUTO_PREFERENCE` whose weights are
found locally (config.weights is None: a file in `weights_dir`, default
~/.cache/clasp/weights, or timm's file in the Hugging Face cache):
  1. DINOv2 ViT-S/14 with registers (`dinov2_vits14_reg`), the CLASP paper's
     backbone;
  2. DINO ViT-S/16 (`dino_vits16`): about 50 ms per 224 px image on 2 CPU
     threads, a 448 px image gives a 28x28 = 784-node graph;
  3. DINO ViT-S/8 (`dino_vits8`): 3136 nodes at 448 px, about 20x the cost.
With config.weights "random" or a file, "auto" means `dino_vits16` (a file is
read as ViT-S/16 weights). "auto" never waits on a download. Without weights it
falls back to `classic` LOUDLY (warnings.warn + logging.warning), and the
returned backbone is named "classic:auto-fallback" and carries the reason in
`backbone.warnings`, so diagnostics record the fallback.

The engine reads no environment variables: `weights_dir` and `allow_download`
come from the caller's settings.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from clasp_engine.backbones.base import Backbone, WeightsInfo
from clasp_engine.backbones.classic import ClassicBackbone
from clasp_engine.backbones.vit import ViTBackbone
from clasp_engine.backbones.weights import WEIGHTS_DIR_SETTING, find_local_weights, local_weight_candidates
from clasp_engine.config import SegmenterConfig
from clasp_engine.errors import ConfigError

__all__ = [
    "AUTO_BACKBONE",
    "AUTO_PREFERENCE",
    "AUTO_FALLBACK_NAME",
    "Backbone",
    "ClassicBackbone",
    "ViTBackbone",
    "WeightsInfo",
    "auto_backbone_name",
    "create_backbone",
    "resolve_device",
]

log = logging.getLogger(__name__)

# "auto" with found weights: the first of these whose weights are present.
AUTO_PREFERENCE = ("dinov2_vits14_reg", "dino_vits16", "dino_vits8")
# "auto" with config.weights "random" or a file.
AUTO_BACKBONE = "dino_vits16"
AUTO_FALLBACK_NAME = "classic:auto-fallback"


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU -> ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA GPU is available to torch; use --device cpu (or auto)")
        return torch.device("cuda")
    raise ConfigError(f"device={name!r}: choose auto, cpu or cuda")


def auto_backbone_name(weights: str | None, weights_dir: Path | str | None = None) -> str | None:
    """The ViT "auto" stands for, or None when no preferred ViT has local weights.

    weights "random" or a file: AUTO_BACKBONE. None: the first of AUTO_PREFERENCE
    whose weights `find_local_weights` finds in `weights_dir` or the Hugging Face cache.
    """
    if weights is not None:
        return AUTO_BACKBONE
    for name in AUTO_PREFERENCE:
        if find_local_weights(name, weights_dir) is not None:
            return name
    return None


def create_backbone(
    config: SegmenterConfig,
    device: torch.device,
    weights_dir: Path | str | None = None,
    allow_download: bool = True,
) -> Backbone:
    """The backbone `config.backbone` with weights per `config.weights`, on `device`.

    Parameters
    ----------
    config : SegmenterConfig
        backbone, weights and features are read.
    device : torch.device
    weights_dir : Path, str or None
        Folder of local weights files (official names or `<timm name>.safetensors`);
        None means ~/.cache/clasp/weights. The settings fill it from CLASP_WEIGHTS_DIR.
    allow_download : bool
        Whether a named ViT without local weights may try timm's Hub download
        ("auto" never downloads).

    Returns
    -------
    Backbone
        - "classic": weight-free features (WeightsInfo(kind="none")).
        - a ViT name: see `clasp_engine.backbones.vit` (raises WeightsNotFoundError
          when no weights can be found or downloaded, ConfigError for a file that
          does not fit the model).
        - "auto": see the module docstring; "classic" with a loud warning when no
          preferred ViT has weights.
    """
    name = config.backbone
    if name == "classic":
        return ClassicBackbone(device)
    if name == "auto":
        chosen = auto_backbone_name(config.weights, weights_dir)
        if chosen is None:
            looked = "; ".join(
                f"{n}: " + " or ".join(str(p) for p in local_weight_candidates(n, weights_dir)) for n in AUTO_PREFERENCE
            )
            reason = (
                f"backbone 'auto': no weights found for {', '.join(AUTO_PREFERENCE)} (looked for {looked}, and in "
                "the Hugging Face cache); FALLING BACK to the weight-free 'classic' backbone, whose segments are "
                f"much weaker. Put the DINO / DINOv2 weights there (or set {WEIGHTS_DIR_SETTING} / --weights) "
                "to use the ViT."
            )
            warnings.warn(reason, RuntimeWarning, stacklevel=2)
            log.warning(reason)
            return ClassicBackbone(device, name=AUTO_FALLBACK_NAME, warnings=[reason])
        name = chosen
    return ViTBackbone.create(
        name, config.weights, device, features=config.features, weights_dir=weights_dir, allow_download=allow_download
    )
