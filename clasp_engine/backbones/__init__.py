"""Feature extractors: timm DINO / DINOv2 ViTs (`vit.py`) and a weight-free `classic` one.

    device = resolve_device(config.device)
    backbone = create_backbone(config, device)
    feats = backbone.patch_features([image])  # [(rows, cols, D) float32 tensor]

Backbone choice "auto" means DINO ViT-S/16 (`dino_vits16`) when its weights
are available locally (a file given in config.weights, a file in
$CLASP_WEIGHTS_DIR / ~/.cache/clasp/weights, or timm's file in the Hugging Face
cache). ViT-S/16 is the default because it is the cheapest DINO model that
still gives good spectral segments: about 50 ms per 224 px image on 2 CPU
threads, and a 448 px image gives a 28x28 = 784-node graph, where S/8 costs
about 20x more and gives 3136 nodes. "auto" never waits on a download. Without
weights it falls back to `classic` LOUDLY (warnings.warn + logging.warning),
and the returned backbone is named "classic:auto-fallback" and carries the
reason in `backbone.warnings`, so diagnostics record the fallback.
"""

from __future__ import annotations

import logging
import warnings

import torch

from clasp_engine.backbones.base import Backbone, WeightsInfo
from clasp_engine.backbones.classic import ClassicBackbone
from clasp_engine.backbones.vit import SPECS, ViTBackbone, find_local_weights, weights_dir
from clasp_engine.config import SegmenterConfig
from clasp_engine.errors import ConfigError

__all__ = [
    "AUTO_BACKBONE",
    "AUTO_FALLBACK_NAME",
    "Backbone",
    "ClassicBackbone",
    "ViTBackbone",
    "WeightsInfo",
    "create_backbone",
    "resolve_device",
]

log = logging.getLogger(__name__)

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


def create_backbone(config: SegmenterConfig, device: torch.device) -> Backbone:
    """The backbone `config.backbone` with weights per `config.weights`, on `device`.

    - "classic": weight-free features (WeightsInfo(kind="none")).
    - a ViT name: see `clasp_engine.backbones.vit` (raises WeightsNotFoundError
      when no weights can be found or downloaded, ConfigError for a file that
      does not fit the model).
    - "auto": dino_vits16 when config.weights is "random" or a file, or when
      its weights are found locally; otherwise "classic" with a loud warning.
    """
    name = config.backbone
    if name == "classic":
        return ClassicBackbone(device)
    if name == "auto":
        if config.weights is None and find_local_weights(AUTO_BACKBONE) is None:
            reason = (
                f"backbone 'auto': no {AUTO_BACKBONE} weights found (looked in {weights_dir()} for "
                f"{SPECS[AUTO_BACKBONE].official_file} and in the Hugging Face cache); FALLING BACK to the "
                "weight-free 'classic' backbone, whose segments are much weaker. Put the DINO weights there "
                "(or set CLASP_WEIGHTS_DIR / --weights) to use the ViT."
            )
            warnings.warn(reason, RuntimeWarning, stacklevel=2)
            log.warning(reason)
            return ClassicBackbone(device, name=AUTO_FALLBACK_NAME, warnings=[reason])
        name = AUTO_BACKBONE
    return ViTBackbone.create(name, config.weights, device, features=config.features)
