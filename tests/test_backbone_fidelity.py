"""The project's ViT features equal the official DINO / DINOv2 reference code at non-square sizes.

The reference here is written out from the authors' code (facebookresearch/dino
and facebookresearch/dinov2, `vision_transformer.py`): the official
`interpolate_pos_encoding` formulas and a plain pre-norm ViT forward read
straight from a state dict in the official key layout. Nothing is imported from
those repositories. Weights are random (no real weights on this machine), in
the official layouts, with a position table large enough that the resize rule
shows in the features.

Run as a script to print the fidelity figures (timm's resize rule vs this
project's, each against the official formula):
    python tests/test_backbone_fidelity.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.backbones.vit import ViTBackbone, create_vit_model

CPU = torch.device("cpu")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- the official formulas


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, npatch: int, w: int, h: int, patch: int) -> torch.Tensor:
    """facebookresearch/dino `VisionTransformer.interpolate_pos_encoding` (x is B, C, w, h: w = rows)."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch
    h0 = h // patch
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def dinov2_interpolate_pos_encoding(
    pos_embed: torch.Tensor, npatch: int, w: int, h: int, patch: int, offset: float, antialias: bool
) -> torch.Tensor:
    """facebookresearch/dinov2 `DinoVisionTransformer.interpolate_pos_encoding`.

    The hub builds ViT-S/14 with interpolate_offset=0.1, interpolate_antialias=False,
    and the register models with 0.0 and True.
    """
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch
    h0 = h // patch
    M = int(math.sqrt(N))
    assert N == M * M
    kwargs = {}
    if offset:
        sx = float(w0 + offset) / M
        sy = float(h0 + offset) / M
        kwargs["scale_factor"] = (sx, sy)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def official_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, family: str, patch: int, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official DINO / DINOv2 forward from an official-layout state dict.

    x: normalised (B, 3, H, W). family: "dino", "dinov2" or "dinov2_reg".
    Returns (patch tokens after the final norm, last block's keys with heads
    concatenated), both (B, rows*cols, D), class and register tokens dropped.
    """
    B, _, w, h = x.shape
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    D = t.shape[-1]
    t = torch.cat((sd["cls_token"].expand(B, -1, -1), t), dim=1)
    npatch = t.shape[1] - 1
    if family == "dino":
        t = t + dino_interpolate_pos_encoding(sd["pos_embed"], npatch, w, h, patch)
    else:
        reg = family == "dinov2_reg"
        t = t + dinov2_interpolate_pos_encoding(
            sd["pos_embed"], npatch, w, h, patch, offset=0.0 if reg else 0.1, antialias=reg
        )
    n_reg = 0
    if family == "dinov2_reg":
        regs = sd["register_tokens"]
        n_reg = regs.shape[1]
        t = torch.cat((t[:, :1], regs.expand(B, -1, -1), t[:, 1:]), dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    keys = None
    for i in range(depth):
        p = f"blocks.{i}."
        N = t.shape[1]
        y = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        qkv = qkv.reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (D // heads) ** -0.5, qkv[1], qkv[2]
        keys = k.transpose(1, 2).reshape(B, N, D)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, N, D)
        y = F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        t = t + (y * sd[p + "ls1.gamma"] if p + "ls1.gamma" in sd else y)
        y = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + (y * sd[p + "ls2.gamma"] if p + "ls2.gamma" in sd else y)
    t = F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    skip = 1 + n_reg
    return t[:, skip:], keys[:, skip:]


# ----------------------------------------------------------------------------- checkpoints in the official layouts

MODELS = {  # CLASP name: (family, patch, heads)
    "dino_vits8": ("dino", 8, 6),
    "dino_vits16": ("dino", 16, 6),
    "dino_vitb8": ("dino", 8, 12),
    "dino_vitb16": ("dino", 16, 12),
    "dinov2_vits14": ("dinov2", 14, 6),
    "dinov2_vits14_reg": ("dinov2_reg", 14, 6),
}


def official_checkpoint(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-init state dict in the authors' key layout for `name`.

    Shapes come from the timm model (meta device, no init cost); values are
    seeded noise, with the position table at std 0.5 so that how it is resized
    changes the features clearly.
    """
    family = MODELS[name][0]
    timm_sd = create_vit_model(name, random_init=False).state_dict()
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, p in timm_sd.items():
        std = 0.5 if key == "pos_embed" else 0.05
        value = std * torch.randn(p.shape, generator=gen)
        sd[key] = value + 1.0 if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else value
    if family == "dino":
        return sd  # DINO's release uses timm's key names
    official = {"mask_token": torch.zeros(1, sd["cls_token"].shape[-1])}
    if family == "dinov2_reg":  # timm folds the class position into cls_token; the release does not
        official["register_tokens"] = sd.pop("reg_token")
        official["pos_embed"] = torch.cat([0.5 * torch.randn(1, 1, sd["pos_embed"].shape[-1], generator=gen),
                                           sd.pop("pos_embed")], dim=1)
    official.update(sd)
    return official


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalised(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def fidelity(ours: torch.Tensor, official: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, smallest per-patch cosine) between (N, D) feature sets."""
    ours, official = ours.reshape(-1, ours.shape[-1]).double(), official.reshape(-1, official.shape[-1]).double()
    cos = F.cosine_similarity(ours, official, dim=1)
    return float((ours - official).abs().max()), float(cos.min())


def compare(name: str, path, h: int, w: int) -> dict[str, tuple[float, float]]:
    """Fidelity of the project's tokens and keys, and of timm's resize rule, vs the official forward."""
    sd = torch.load(path, weights_only=True)
    family, patch, heads = MODELS[name]
    img = _image(h, w, seed=h + w)
    with torch.inference_mode():
        ref_tokens, ref_keys = official_forward(sd, _normalised(img), family, patch, heads)
    rows, cols = h // patch, w // patch
    tokens_bb = ViTBackbone.create(name, str(path), CPU)
    keys_bb = ViTBackbone(name, tokens_bb.model, tokens_bb.weights, CPU, features="keys")
    assert tokens_bb.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert tokens_bb.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    out = {}
    for rule in ("", " (timm rule)"):
        if rule:
            del tokens_bb.model._pos_embed  # back to timm's own resize (the method of its class)
        for features, bb, ref in (("tokens", tokens_bb, ref_tokens), ("keys", keys_bb, ref_keys)):
            ours = bb.patch_features([img])[0]
            assert ours.shape == (rows, cols, ref.shape[-1])
            out[features + rule] = fidelity(ours, ref[0])
    return out


# ----------------------------------------------------------------------------- tests

# Non-square sizes, neither the training grid nor a multiple of it; (H, W) multiples of the patch.
CASES = [
    ("dino_vits16", 224, 320),
    ("dino_vits16", 448, 336),
    ("dinov2_vits14", 224, 322),
    ("dinov2_vits14", 448, 336),
    ("dinov2_vits14_reg", 224, 322),
    ("dino_vits8", 64, 96),
    ("dino_vitb16", 96, 64),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("official")
    paths = {}
    for name in {c[0] for c in CASES}:
        paths[name] = d / f"{name}.pth"
        torch.save(official_checkpoint(name), paths[name])
    return paths


@pytest.mark.parametrize("name, h, w", CASES)
def test_features_equal_the_official_forward(checkpoints, name: str, h: int, w: int) -> None:
    figures = compare(name, checkpoints[name], h, w)
    for features in ("tokens", "keys"):
        max_abs, min_cos = figures[features]
        assert max_abs < 2e-4, (name, features, figures)
        assert min_cos > 1 - 1e-7, (name, features, figures)
    if MODELS[name][0] != "dinov2_reg":
        # The test can tell the rules apart: timm's resize is off by far more than float noise here.
        assert figures["tokens (timm rule)"][0] > 1e-2, figures
    else:
        # Meta's register models use timm's rule (offset 0, antialias on): equal either way.
        assert figures["tokens (timm rule)"][0] < 2e-4, figures


def test_training_grid_is_left_as_is(checkpoints) -> None:
    """At the training grid the official code adds the table unchanged; so does the project."""
    figures = compare("dino_vits16", checkpoints["dino_vits16"], 224, 224)
    assert figures["tokens"][0] < 2e-4 and figures["tokens (timm rule)"][0] < 2e-4


if __name__ == "__main__":  # print the fidelity figures: python tests/test_backbone_fidelity.py [NAME ...]
    import sys
    import tempfile
    from pathlib import Path

    sizes = [(224, 320), (448, 336), (320, 224)]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'model':18} {'size':>8}  {'features':8}  {'timm rule: max|d|  1-min cos':>30}  "
              f"{'official: max|d|  1-min cos':>30}")
        for name in sys.argv[1:] or MODELS:
            patch = MODELS[name][1]
            path = Path(tmp) / f"{name}.pth"
            torch.save(official_checkpoint(name), path)
            for h, w in sizes:
                h, w = h // patch * patch, w // patch * patch
                f = compare(name, path, h, w)
                for feat in ("tokens", "keys"):
                    (bd, bc), (ad, ac) = f[f"{feat} (timm rule)"], f[feat]
                    print(f"{name:18} {h:>4}x{w:<4} {feat:8}  {bd:14.2e} {1 - bc:15.2e}  {ad:14.2e} {1 - ac:15.2e}",
                          flush=True)
