"""DINO and DINOv2 ViTs through timm: patch tokens or last-block attention keys.

Each CLASP backbone name maps to one timm model (see `SPECS`), created with
`dynamic_img_size=True` so any image whose sides are multiples of the patch size
can be fed, and normalised with the mean/std of the model's own
`pretrained_cfg`.

Features (`features=`):
  - "tokens": last-layer patch tokens after the final LayerNorm.
  - "keys":   the last block's attention keys, heads concatenated (hooked on
              `blocks[-1].attn.qkv`), as Deep Spectral Methods does.
CLS and register tokens are dropped (`num_prefix_tokens`).

Weights, in order (`resolve_weights`):
  1. `weights` is a file: load that file.
  2. `weights` is None: a local file in `weights_dir()` (env CLASP_WEIGHTS_DIR,
     default ~/.cache/clasp/weights) under the official name
     (e.g. dino_deitsmall16_pretrain.pth) or `<timm name>.safetensors`, or
     timm's file already in the Hugging Face cache;
  3. then timm's pretrained download from the Hugging Face Hub (one quick
     connection probe, no retry storm; skipped when HF_HUB_OFFLINE is set, and
     not retried in a process once it failed);
  4. else WeightsNotFoundError naming both ways.
  `weights="random"` gives a seeded random init (speed measurement only).

Accepted file layouts: the official DINO .pth (a plain state dict, or a training
checkpoint wrapped in 'teacher' / 'student' / 'model' / 'state_dict' with
'module.' / 'backbone.' prefixes), the official DINOv2 .pth (mask_token,
register_tokens, ls1.gamma ...), timm's own layout, as .pth/.bin or
.safetensors. Conversion is timm's `checkpoint_filter_fn`; loading is strict.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from clasp_engine.backbones._torchvision_compat import import_timm
from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = "~/.cache/clasp/weights"
WEIGHTS_DIR_ENV = "CLASP_WEIGHTS_DIR"
RANDOM_SEED = 0  # random init is seeded so "random" runs are reproducible


@dataclass(frozen=True)
class ViTSpec:
    name: str  # CLASP name
    timm_name: str  # timm model name with pretrained tag
    official_file: str  # file name of the authors' release


SPECS: dict[str, ViTSpec] = {
    s.name: s
    for s in (
        ViTSpec("dino_vits8", "vit_small_patch8_224.dino", "dino_deitsmall8_pretrain.pth"),
        ViTSpec("dino_vits16", "vit_small_patch16_224.dino", "dino_deitsmall16_pretrain.pth"),
        ViTSpec("dino_vitb8", "vit_base_patch8_224.dino", "dino_vitbase8_pretrain.pth"),
        ViTSpec("dino_vitb16", "vit_base_patch16_224.dino", "dino_vitbase16_pretrain.pth"),
        ViTSpec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "dinov2_vits14_pretrain.pth"),
        ViTSpec("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2.lvd142m", "dinov2_vits14_reg4_pretrain.pth"),
    )
}

# Hub downloads that failed in this process: not retried (each failure can cost ~20 s).
_DOWNLOAD_FAILED: dict[str, str] = {}
_DOWNLOAD_LOCK = threading.Lock()


# --------------------------------------------------------------------------- weights discovery


def weights_dir() -> Path:
    """Where local weights are looked for: $CLASP_WEIGHTS_DIR or ~/.cache/clasp/weights."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


def local_weight_candidates(name: str) -> list[Path]:
    """File paths checked, in order, for backbone `name` in `weights_dir()`."""
    spec = _spec(name)
    d = weights_dir()
    return [d / spec.official_file, d / f"{spec.timm_name}.safetensors"]


def find_local_weights(name: str) -> tuple[Path, str] | None:
    """A local weights file for `name` and how to describe its source, or None.

    Looks in `weights_dir()` and then in the Hugging Face cache (timm's own
    download location), never on the network.
    """
    for path in local_weight_candidates(name):
        if path.is_file():
            return path, str(path)
    hub_id = _hf_hub_id(name)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                cached = try_to_load_from_cache(hub_id, filename)
                if isinstance(cached, str) and os.path.isfile(cached):
                    return Path(cached), f"timm:{_spec(name).timm_name}"
        except Exception:  # noqa: BLE001 - a broken cache is just "not found"
            pass
    return None


def download_weights(name: str) -> Path:
    """Download timm's pretrained weights file for `name` (Hugging Face Hub), once per process.

    Fails fast: refuses when HF_HUB_OFFLINE is set, probes the endpoint with one
    short connection first (huggingface_hub would otherwise retry for ~20 s),
    and remembers a failure so later calls in this process fail at once.
    Raises WeightsNotFoundError with the reason.
    """
    spec = _spec(name)
    hub_id = _hf_hub_id(name)
    if not hub_id:
        raise WeightsNotFoundError(f"timm has no Hub download for {spec.timm_name}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise WeightsNotFoundError("HF_HUB_OFFLINE is set, so timm's download was not tried")
    with _DOWNLOAD_LOCK:
        if hub_id in _DOWNLOAD_FAILED:
            raise WeightsNotFoundError(f"timm's download already failed in this process: {_DOWNLOAD_FAILED[hub_id]}")
        try:
            from huggingface_hub import constants, hf_hub_download

            host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
            port = urlparse(constants.ENDPOINT).port or 443
            with socket.create_connection((host, port), timeout=5):
                pass
            return Path(hf_hub_download(hub_id, "model.safetensors"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not downloadable here"
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            _DOWNLOAD_FAILED[hub_id] = reason
            raise WeightsNotFoundError(f"timm's download of {hub_id} failed ({reason})") from exc


def resolve_weights(name: str, weights: str | None) -> tuple[Path | None, WeightsInfo]:
    """Which weights file to load for backbone `name`, and how to record it.

    weights: None (discover), "random", or a file path. Returns (path, info);
    path is None for "random".
    """
    spec = _spec(name)
    if weights == "random":
        return None, WeightsInfo(kind="random")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {weights} for {name} does not exist (or is not a file); "
                f"pass the path of {spec.official_file} or {spec.timm_name}.safetensors"
            )
        return path, WeightsInfo(kind="pretrained", source=str(path), sha256=sha256_file(path))
    found = find_local_weights(name)
    if found is not None:
        path, source = found
        return path, WeightsInfo(kind="pretrained", source=source, sha256=sha256_file(path))
    try:
        path = download_weights(name)
    except WeightsNotFoundError as exc:
        looked = " or ".join(str(p) for p in local_weight_candidates(name))
        raise WeightsNotFoundError(
            f"no pretrained weights for {name}: put the official file at {looked} "
            f"(or set {WEIGHTS_DIR_ENV} to the folder holding it, or pass --weights PATH), "
            f"or allow timm's download of {spec.timm_name} from the Hugging Face Hub; {exc}. "
            "Use backbone 'classic' to run without weights."
        ) from exc
    return path, WeightsInfo(kind="pretrained", source=f"timm:{spec.timm_name}", sha256=sha256_file(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- checkpoint loading


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or torch checkpoint file into a flat state dict (no conversion)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any decoding failure the same way
        raise ConfigError(
            f"weights file {path}: cannot be read as a PyTorch or safetensors checkpoint ({exc}); "
            "pass an official DINO/DINOv2 .pth or a timm .safetensors file"
        ) from exc
    return unwrap_checkpoint(obj, path)


def unwrap_checkpoint(obj: Any, path: Path | str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Take the backbone's state dict out of a plain or training-checkpoint layout.

    Unwraps 'teacher' (preferred, as DINO evaluates the teacher), 'student',
    'model' or 'state_dict'; strips 'module.' (DistributedDataParallel); when
    keys carry 'backbone.' keeps only those (drops DINO's projection head); and
    drops a classification 'head.*' (CLASP uses no classifier).
    """
    for key in ("teacher", "student", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path}: holds no state dict of tensors; pass a model checkpoint")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def load_checkpoint_into(model: torch.nn.Module, path: Path) -> None:
    """Convert (timm's checkpoint_filter_fn) and load a checkpoint strictly into `model` (floats as float32)."""
    import_timm()
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = read_checkpoint(path)
    # timm would silently resample a patch embedding of another size (e.g. S/16 weights
    # into S/8); for CLASP that is a wrong file, not a conversion.
    proj = sd.get("patch_embed.proj.weight")
    expected = tuple(model.patch_embed.proj.weight.shape[-2:])
    if proj is not None and proj.ndim == 4 and tuple(proj.shape[-2:]) != expected:
        raise ConfigError(
            f"weights file {path} has patch size {tuple(proj.shape[-2:])} but the model expects {expected}; "
            "check that it belongs to the chosen backbone"
        )
    try:
        sd = checkpoint_filter_fn(dict(sd), model)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        # assign=True: a model built on the meta device takes the checkpoint's tensors as they are.
        result = model.load_state_dict(sd, strict=False, assign=True)
    except Exception as exc:  # noqa: BLE001 - size mismatches etc.
        raise ConfigError(
            f"weights file {path} does not fit {type(model).__name__} "
            f"({_first_line(exc)}); check that it belongs to the chosen backbone"
        ) from exc
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ConfigError(
            f"weights file {path} does not match the model: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}; "
            "check that it belongs to the chosen backbone"
        )
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ConfigError(f"weights file {path} left some model tensors unset; check that it is a full checkpoint")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[:3])[:500]


# --------------------------------------------------------------------------- the backbone


def create_vit_model(name: str, random_init: bool = True) -> torch.nn.Module:
    """The timm model for `name`: no classifier, dynamic image size, in eval mode.

    random_init=True: weights drawn from timm's init with a fixed seed (reproducible).
    random_init=False: parameters on the meta device (no memory, no init cost, ~10x
    faster to build); fill them with `load_checkpoint_into`, which assigns the
    checkpoint's tensors.
    """
    timm = import_timm()
    spec = _spec(name)
    kwargs = dict(pretrained=False, num_classes=0, dynamic_img_size=True)
    if not random_init:
        with torch.device("meta"):
            return timm.create_model(spec.timm_name, **kwargs).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = timm.create_model(spec.timm_name, **kwargs)
    return model.eval()


class ViTBackbone:
    """A DINO / DINOv2 ViT producing (rows, cols, D) patch features. See the module docstring."""

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
        if features == "keys":
            attn.qkv.register_forward_hook(self._keep_qkv)

    @classmethod
    def create(cls, name: str, weights: str | None, device: torch.device, features: str = "tokens") -> "ViTBackbone":
        """Build backbone `name` with its weights resolved as described in the module docstring."""
        path, info = resolve_weights(name, weights)
        model = create_vit_model(name, random_init=path is None)
        if path is not None:
            load_checkpoint_into(model, path)
        return cls(name, model, info, device, features)

    def _keep_qkv(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._qkv = output

    def patch_features(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """(rows, cols, D) float32 features per image on `device`; equal sizes share a forward pass."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
            h, w = img.shape[:2]
            if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
                raise ValueError(f"image {i}: {h}x{w} is not a multiple of patch size {self.patch_size}; "
                                 "use clasp_engine.images.resize_to_grid")
            groups.setdefault((h, w), []).append(i)
        for (h, w), idx in groups.items():
            rows, cols = h // self.patch_size, w // self.patch_size
            for start in range(0, len(idx), self.max_batch):
                chunk = idx[start : start + self.max_batch]
                feats = self._forward(np.stack([images[i] for i in chunk]))
                for j, i in enumerate(chunk):
                    # clone() outside inference mode: callers may modify the result in place.
                    out[i] = feats[j].reshape(rows, cols, -1).clone()
        return out  # type: ignore[return-value]

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, rows*cols, D) float32 patch features."""
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self.mean) / self.std
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
                if self.device.type == "cuda"
                else contextlib.nullcontext()
            )
            with autocast:
                tokens = self.model.forward_features(x)
                if self.features == "keys":
                    qkv, self._qkv = self._qkv, None
                    assert qkv is not None, "qkv hook did not fire"
                    b, n, _ = qkv.shape
                    # (B, N, 3, heads, head_dim) -> keys with heads concatenated: (B, N, heads*head_dim)
                    tokens = qkv.reshape(b, n, 3, self.num_heads, -1)[:, :, 1].reshape(b, n, -1)
            return tokens[:, self.num_prefix_tokens :].float()


def _spec(name: str) -> ViTSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ConfigError(f"backbone={name!r}: not a ViT backbone; choose one of {', '.join(SPECS)}") from None


def _hf_hub_id(name: str) -> str:
    """timm's Hugging Face Hub repository for `name` (timm's pretrained_cfg.hf_hub_id for
    every model in SPECS, checked in tests); spelled out so discovery needs no timm import."""
    return f"timm/{_spec(name).timm_name}"
