"""The catalogue of ViT backbones: CLASP name, timm model, official file, official position rule.

Kept apart from the model code (`vit.py`) and the weights I/O (`weights.py`)
so that both read one table and weight discovery needs no timm import.
"""

from __future__ import annotations

from dataclasses import dataclass

from clasp_engine.errors import ConfigError


@dataclass(frozen=True)
class ViTSpec:
    """One backbone.

    Attributes
    ----------
    name : str
        CLASP name (``--backbone``).
    timm_name : str
        timm model name with its pretrained tag.
    official_file : str
        File name of the authors' release.
    interpolate_offset : float
        The official position-embedding resize: > 0 resizes by scale factor
        ``(grid + offset) / M`` (DINO and DINOv2 without registers: 0.1), 0 resizes
        to the target size (DINOv2 with registers). See `pos_embed.py`.
    interpolate_antialias : bool
        Antialiasing in that resize (official: off, except DINOv2 with registers).
    """

    name: str
    timm_name: str
    official_file: str
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False


SPECS: dict[str, ViTSpec] = {
    s.name: s
    for s in (
        ViTSpec("dino_vits8", "vit_small_patch8_224.dino", "dino_deitsmall8_pretrain.pth"),
        ViTSpec("dino_vits16", "vit_small_patch16_224.dino", "dino_deitsmall16_pretrain.pth"),
        ViTSpec("dino_vitb8", "vit_base_patch8_224.dino", "dino_vitbase8_pretrain.pth"),
        ViTSpec("dino_vitb16", "vit_base_patch16_224.dino", "dino_vitbase16_pretrain.pth"),
        ViTSpec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "dinov2_vits14_pretrain.pth"),
        # facebookresearch/dinov2 hubconf builds the register models with
        # interpolate_antialias=True, interpolate_offset=0.0 (timm's rule, too).
        ViTSpec(
            "dinov2_vits14_reg",
            "vit_small_patch14_reg4_dinov2.lvd142m",
            "dinov2_vits14_reg4_pretrain.pth",
            interpolate_offset=0.0,
            interpolate_antialias=True,
        ),
    )
}


def spec(name: str) -> ViTSpec:
    """The spec of ViT backbone `name`; ConfigError naming the choices otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise ConfigError(f"backbone={name!r}: not a ViT backbone; choose one of {', '.join(SPECS)}") from None
