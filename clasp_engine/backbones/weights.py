"""Weights for the ViT backbones: finding, fingerprinting (sha256), reading and loading checkpoints.

The engine reads no environment variables: the folder of local weights and
whether a download may be tried are parameters (`weights_dir`,
`allow_download`), filled by the caller from its settings.

Weights, in order (`resolve_weights`):
  1. `weights` is a file: load that file.
  2. `weights` is None: a local file in `weights_dir` (default
     ~/.cache/clasp/weights) under the official name (e.g.
     dino_deitsmall16_pretrain.pth) or `<timm name>.safetensors`, or timm's file
     already in the Hugging Face cache;
  3. then, when `allow_download`, timm's pretrained download from the Hugging
     Face Hub (one quick connection probe, no retry storm; skipped when
     huggingface_hub is in offline mode, HF_HUB_OFFLINE, and not retried in a
     process once it failed);
  4. else WeightsNotFoundError naming both ways.
  `weights="random"` gives a seeded random init (speed measurement only).

Accepted file layouts: the official DINO .pth (a plain state dict, or a training
checkpoint wrapped in 'teacher' / 'student' / 'model' / 'state_dict' with
'module.' / 'backbone.' prefixes), the official DINOv2 .pth (mask_token,
register_tokens, ls1.gamma ...), timm's own layout, as .pth/.bin or
.safetensors. Conversion is timm's `checkpoint_filter_fn`; loading is strict.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from clasp_engine.backbones._torchvision_compat import import_timm
from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.backbones.specs import spec
from clasp_engine.errors import ConfigError, WeightsNotFoundError

DEFAULT_WEIGHTS_DIR = Path("~/.cache/clasp/weights")
# How users set the folder (read by the settings, not here); named in error messages.
WEIGHTS_DIR_SETTING = "CLASP_WEIGHTS_DIR"

# Hub downloads that failed in this process: not retried (each failure can cost ~20 s).
_DOWNLOAD_FAILED: dict[str, str] = {}
_DOWNLOAD_LOCK = threading.Lock()


# --------------------------------------------------------------------------- discovery


def weights_folder(weights_dir: Path | str | None = None) -> Path:
    """The folder local weights are looked for in: `weights_dir`, or ~/.cache/clasp/weights when None."""
    return Path(weights_dir if weights_dir is not None else DEFAULT_WEIGHTS_DIR).expanduser()


def local_weight_candidates(name: str, weights_dir: Path | str | None = None) -> list[Path]:
    """File paths checked, in order, for backbone `name` in `weights_folder(weights_dir)`."""
    s = spec(name)
    d = weights_folder(weights_dir)
    return [d / s.official_file, d / f"{s.timm_name}.safetensors"]


def find_local_weights(name: str, weights_dir: Path | str | None = None) -> tuple[Path, str] | None:
    """A local weights file for `name` and how to describe its source, or None.

    Looks in `weights_folder(weights_dir)` and then in the Hugging Face cache
    (timm's own download location), never on the network.
    """
    for path in local_weight_candidates(name, weights_dir):
        if path.is_file():
            return path, str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(hf_hub_id(name), filename)
            if isinstance(cached, str) and os.path.isfile(cached):
                return Path(cached), f"timm:{spec(name).timm_name}"
    except Exception:  # noqa: BLE001 - a broken cache is just "not found"
        pass
    return None


def hf_hub_id(name: str) -> str:
    """timm's Hugging Face Hub repository for `name` (timm's pretrained_cfg.hf_hub_id for
    every model in SPECS, checked in tests); spelled out so discovery needs no timm import."""
    return f"timm/{spec(name).timm_name}"


def download_weights(name: str) -> Path:
    """Download timm's pretrained weights file for `name` (Hugging Face Hub), once per process.

    Fails fast: refuses when huggingface_hub is in offline mode (its
    HF_HUB_OFFLINE), probes the endpoint with one short connection first
    (huggingface_hub would otherwise retry for ~20 s), and remembers a failure
    so later calls in this process fail at once. Raises WeightsNotFoundError
    with the reason.
    """
    hub_id = hf_hub_id(name)
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise WeightsNotFoundError("HF_HUB_OFFLINE is set, so timm's download was not tried")
    with _DOWNLOAD_LOCK:
        if hub_id in _DOWNLOAD_FAILED:
            raise WeightsNotFoundError(f"timm's download already failed in this process: {_DOWNLOAD_FAILED[hub_id]}")
        try:
            from huggingface_hub import hf_hub_download

            host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
            port = urlparse(constants.ENDPOINT).port or 443
            with socket.create_connection((host, port), timeout=5):
                pass
            return Path(hf_hub_download(hub_id, "model.safetensors"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not downloadable here"
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            _DOWNLOAD_FAILED[hub_id] = reason
            raise WeightsNotFoundError(f"timm's download of {hub_id} failed ({reason})") from exc


def resolve_weights(
    name: str,
    weights: str | None,
    weights_dir: Path | str | None = None,
    allow_download: bool = True,
) -> tuple[Path | None, WeightsInfo]:
    """Which weights file to load for backbone `name`, and how to record it.

    Parameters
    ----------
    name : str
        A ViT backbone name (see `specs.SPECS`).
    weights : str or None
        None (discover, see the module docstring), "random", or a file path.
    weights_dir : Path, str or None
        Folder of local weights; None means ~/.cache/clasp/weights.
    allow_download : bool
        Whether timm's Hub download may be tried when nothing is found locally.

    Returns
    -------
    (path, info)
        path is None for "random".
    """
    s = spec(name)
    if weights == "random":
        return None, WeightsInfo(kind="random")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {weights} for {name} does not exist (or is not a file); "
                f"pass the path of {s.official_file} or {s.timm_name}.safetensors"
            )
        return path, WeightsInfo(kind="pretrained", source=str(path), sha256=sha256_file(path))
    found = find_local_weights(name, weights_dir)
    if found is not None:
        path, source = found
        return path, WeightsInfo(kind="pretrained", source=source, sha256=sha256_file(path))
    try:
        if not allow_download:
            raise WeightsNotFoundError("downloads are switched off (allow_download=False)")
        path = download_weights(name)
    except WeightsNotFoundError as exc:
        looked = " or ".join(str(p) for p in local_weight_candidates(name, weights_dir))
        raise WeightsNotFoundError(
            f"no pretrained weights for {name}: put the official file at {looked} "
            f"(or set {WEIGHTS_DIR_SETTING} to the folder holding it, or pass --weights PATH), "
            f"or allow timm's download of {s.timm_name} from the Hugging Face Hub; {exc}. "
            "Use backbone 'classic' to run without weights."
        ) from exc
    return path, WeightsInfo(kind="pretrained", source=f"timm:{s.timm_name}", sha256=sha256_file(path))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (recorded with every result as the weights' identity)."""
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
