"""clasp_engine.backbones: devices, weights layouts and discovery, ViT features, classic features.

All ViTs use random weights and small images (a few patches), so the file runs in seconds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clasp_engine.backbones import (
    AUTO_FALLBACK_NAME,
    Backbone,
    ClassicBackbone,
    ViTBackbone,
    create_backbone,
    resolve_device,
)
from clasp_engine.backbones import classic as classic_mod
from clasp_engine.backbones import vit as vit_mod
from clasp_engine.backbones import weights as weights_mod
from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.backbones.specs import SPECS
from clasp_engine.backbones.vit import create_vit_model
from clasp_engine.config import SegmenterConfig
from clasp_engine.errors import ConfigError, WeightsNotFoundError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path_factory, monkeypatch):
    """No real weights, no network, no Hugging Face cache: every test starts from nothing."""
    empty = tmp_path_factory.mktemp("weights")
    monkeypatch.setattr(weights_mod, "DEFAULT_WEIGHTS_DIR", empty)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _other_init(name: str) -> torch.nn.Module:
    """The same architecture with other random weights (so that loading them is observable)."""
    model = create_vit_model(name, random_init=False)  # meta: shapes only, no init cost
    gen = torch.Generator().manual_seed(1234)
    sd = {}
    for key, p in model.state_dict().items():
        noise = 0.02 * torch.randn(p.shape, generator=gen)
        sd[key] = noise + 1.0 if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else noise
    model.load_state_dict(sd, strict=True, assign=True)
    return model


_RANDOM: dict[tuple[str, str], ViTBackbone] = {}


def _random(name: str, features: str = "tokens") -> ViTBackbone:
    """A random-weights backbone, built once per module (random init costs ~1-2 s)."""
    if (name, features) not in _RANDOM:
        if features == "tokens":
            _RANDOM[(name, features)] = ViTBackbone.create(name, "random", CPU)
        else:  # same weights, other features
            base = _random(name)
            _RANDOM[(name, features)] = ViTBackbone(name, base.model, base.weights, CPU, features=features)
    return _RANDOM[(name, features)]


def _features(backbone, img: np.ndarray) -> torch.Tensor:
    return backbone.patch_features([img])[0]


# ----------------------------------------------------------------------------- devices


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu")


# ----------------------------------------------------------------------------- ViT shapes


@pytest.mark.parametrize(
    "name, patch, prefix",
    [("dino_vits16", 16, 1), ("dino_vits8", 8, 1), ("dinov2_vits14", 14, 1), ("dinov2_vits14_reg", 14, 5)],
)
def test_tokens_and_keys_shapes(name: str, patch: int, prefix: int) -> None:
    img = _image(4 * patch, 6 * patch)
    tokens, keys = _random(name, "tokens"), _random(name, "keys")
    assert isinstance(tokens, Backbone)
    assert tokens.patch_size == patch and tokens.num_prefix_tokens == prefix
    assert tokens.weights.kind == "random" and tokens.weights.describe() == "random"
    ft, fk = _features(tokens, img), _features(keys, img)
    assert ft.shape == (4, 6, 384) and fk.shape == (4, 6, 384)
    assert ft.dtype == torch.float32 and fk.dtype == torch.float32
    assert ft.device == CPU
    assert not torch.allclose(ft, fk)
    # Keys are the last block's qkv keys (middle third of the qkv output), heads concatenated.
    model = keys.model
    with torch.inference_mode():
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = (x - keys.mean) / keys.std
        h = model.patch_embed(x)
        h = model._pos_embed(h)
        h = model.norm_pre(h)
        for blk in model.blocks[:-1]:
            h = blk(h)
        qkv = model.blocks[-1].attn.qkv(model.blocks[-1].norm1(h))
        expected = qkv[0, prefix:, 384:768].reshape(4, 6, 384)
    torch.testing.assert_close(fk, expected, rtol=1e-4, atol=1e-4)


def test_mixed_sizes_keep_their_order() -> None:
    bb = _random("dino_vits16")
    a, b, c = _image(32, 48, 1), _image(48, 32, 2), _image(32, 48, 3)
    feats = bb.patch_features([a, b, c])
    assert [tuple(f.shape[:2]) for f in feats] == [(2, 3), (3, 2), (2, 3)]
    for img, f in zip((a, b, c), feats):
        torch.testing.assert_close(f, _features(bb, img), rtol=1e-4, atol=1e-4)
    feats[0].div_(2.0)  # ordinary tensors, not inference-mode ones: in-place ops work
    with pytest.raises(ValueError, match="multiple of patch size"):
        bb.patch_features([_image(30, 48)])
    both = bb.batch_features(np.stack([a, c]))  # equal sizes share one pass
    assert tuple(both.shape[:3]) == (2, 2, 3)
    torch.testing.assert_close(both[1], feats[2], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- checkpoint layouts


@pytest.fixture(scope="module")
def vits16_source() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _other_init("dino_vits16").state_dict().items()}


def _reference_features(name: str, state_dict: dict[str, torch.Tensor], img: np.ndarray) -> torch.Tensor:
    model = create_vit_model(name, random_init=False)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return _features(ViTBackbone(name, model, WeightsInfo(kind="random"), CPU), img)


def test_dino_official_plain_training_and_timm_layouts_agree(tmp_path: Path, vits16_source) -> None:
    from safetensors.torch import save_file

    img = _image(48, 64)
    expected = _reference_features("dino_vits16", vits16_source, img)
    random_feats = _features(_random("dino_vits16"), img)
    assert not torch.allclose(expected, random_feats)

    # Official release file: a plain state dict with the same key names as timm's ViT.
    plain = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vits16_source, plain)
    # DINO training checkpoint: teacher has 'backbone.' + DINOHead 'head.*'; student is DDP-wrapped.
    dino_head = {"head.mlp.0.weight": torch.zeros(8, 384), "head.last_layer.weight_g": torch.ones(8, 1)}
    training = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in vits16_source.items()}, **dino_head},
            "student": {f"module.backbone.{k}": v + 1 for k, v in vits16_source.items()},
            "epoch": 100,
        },
        training,
    )
    student_only = tmp_path / "student.pth"
    torch.save({"student": {f"module.backbone.{k}": v for k, v in vits16_source.items()}}, student_only)
    timm_file = tmp_path / "vit_small_patch16_224.dino.safetensors"
    save_file({k: v.contiguous() for k, v in vits16_source.items()}, str(timm_file))
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": vits16_source}, wrapped)

    for path in (plain, training, student_only, timm_file, wrapped):
        bb = ViTBackbone.create("dino_vits16", str(path), CPU)
        assert bb.weights.kind == "pretrained"
        assert bb.weights.source == str(path)
        assert bb.weights.sha256 == weights_mod.sha256_file(path)
        assert bb.weights.describe() == f"pretrained:{path}"
        torch.testing.assert_close(_features(bb, img), expected, rtol=1e-5, atol=1e-5)


def _to_official_dinov2(timm_sd: dict[str, torch.Tensor], registers: bool) -> dict[str, torch.Tensor]:
    """Write timm's DINOv2 state dict in the layout of Meta's release files.

    Official keys: cls_token, pos_embed (with a class-token position), mask_token,
    register_tokens (reg models), patch_embed.proj.*, blocks.N.{norm1, attn.qkv,
    attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}.*, norm.*. timm folds
    the class-token position into cls_token for register models (no_embed_class).
    """
    sd = {k: v.clone() for k, v in timm_sd.items()}
    official = {"mask_token": torch.randn(1, sd["cls_token"].shape[-1])}
    if registers:
        pos_cls = torch.randn(1, 1, sd["pos_embed"].shape[-1])
        official["register_tokens"] = sd.pop("reg_token")
        official["cls_token"] = sd.pop("cls_token") - pos_cls
        official["pos_embed"] = torch.cat([pos_cls, sd.pop("pos_embed")], dim=1)
    official.update(sd)
    return official


@pytest.mark.parametrize("name, registers", [("dinov2_vits14", False), ("dinov2_vits14_reg", True)])
def test_dinov2_official_layout_loads(tmp_path: Path, name: str, registers: bool) -> None:
    source = {k: v.clone() for k, v in _other_init(name).state_dict().items()}
    assert any(".ls1.gamma" in k for k in source)
    official = _to_official_dinov2(source, registers)
    if registers:
        assert official["pos_embed"].shape[1] == 37 * 37 + 1 and "reg_token" not in official
    path = tmp_path / SPECS[name].official_file
    torch.save(official, path)
    img = _image(42, 56)
    bb = ViTBackbone.create(name, str(path), CPU)
    torch.testing.assert_close(_features(bb, img), _reference_features(name, source, img), rtol=1e-5, atol=1e-5)


def test_wrong_checkpoints_give_clear_errors(tmp_path: Path, vits16_source) -> None:
    missing = tmp_path / "missing_key.pth"
    torch.save({k: v for k, v in vits16_source.items() if k != "norm.weight"}, missing)
    extra = tmp_path / "extra_key.pth"
    torch.save({**vits16_source, "blocks.99.attn.qkv.weight": torch.zeros(3)}, extra)
    wrong_size = tmp_path / "wrong_size.pth"
    torch.save({**vits16_source, "norm.weight": torch.ones(10)}, wrong_size)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    not_tensors = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, not_tensors)
    for path, match in [
        (missing, "missing keys"),
        (extra, "unexpected keys"),
        (wrong_size, "does not fit"),
        (text, "cannot be read"),
        (not_tensors, "no state dict"),
    ]:
        with pytest.raises(ConfigError, match=match) as info:
            ViTBackbone.create("dino_vits16", str(path), CPU)
        assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="patch size") as info:  # S/16 weights for S/8
        ViTBackbone.create("dino_vits8", str(missing.with_name("extra_key.pth")), CPU)
    assert "extra_key.pth" in str(info.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        ViTBackbone.create("dino_vits16", str(tmp_path / "nope.pth"), CPU)


# ----------------------------------------------------------------------------- discovery


def test_no_weights_anywhere_names_both_ways(monkeypatch) -> None:
    t = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        ViTBackbone.create("dino_vits16", None, CPU)
    assert time.perf_counter() - t < 5  # offline: no retry storm
    msg = str(info.value)
    assert "dino_deitsmall16_pretrain.pth" in msg and "CLASP_WEIGHTS_DIR" in msg
    assert "vit_small_patch16_224.dino" in msg and "HF_HUB_OFFLINE" in msg


def test_hub_ids_match_timm() -> None:
    timm = vit_mod.import_timm()
    for name, spec in SPECS.items():
        assert timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id == weights_mod.hf_hub_id(name)


def test_failed_download_is_not_retried(monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setitem(weights_mod._DOWNLOAD_FAILED, "timm/vit_small_patch16_224.dino", "no route to host")
    with pytest.raises(WeightsNotFoundError, match="already failed"):
        weights_mod.download_weights("dino_vits16")


def test_local_weights_discovered(tmp_path: Path, vits16_source) -> None:
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vits16_source, path)
    bb = ViTBackbone.create("dino_vits16", None, CPU, weights_dir=tmp_path)
    assert bb.weights.source == str(path) and bb.weights.sha256 == weights_mod.sha256_file(path)
    with pytest.raises(WeightsNotFoundError):  # the folder is the parameter, not a global
        ViTBackbone.create("dino_vits16", None, CPU)
    from safetensors.torch import save_file

    timm_named = tmp_path / "vit_small_patch16_224.dino.safetensors"  # timm layout, timm's name
    save_file(vits16_source, str(timm_named))
    path.unlink()
    assert ViTBackbone.create("dino_vits16", None, CPU, weights_dir=str(tmp_path)).weights.source == str(timm_named)
    auto = create_backbone(SegmenterConfig(backbone="auto", features="keys"), CPU, weights_dir=tmp_path)
    assert auto.name == "dino_vits16" and auto.weights.kind == "pretrained" and auto.features == "keys"
    assert auto.weights.sha256 == weights_mod.sha256_file(timm_named)


# ----------------------------------------------------------------------------- create_backbone


def test_auto_without_weights_falls_back_loudly(caplog) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(RuntimeWarning, match="FALLING BACK"):
        bb = create_backbone(SegmenterConfig(backbone="auto"), CPU)
    assert isinstance(bb, ClassicBackbone)
    assert bb.name == AUTO_FALLBACK_NAME and "fallback" in bb.name
    assert bb.weights.kind == "none" and bb.warnings and "classic" in bb.warnings[0]
    assert any("FALLING BACK" in r.getMessage() for r in caplog.records)


def test_create_backbone_variants(tmp_path: Path, vits16_source) -> None:
    rnd = create_backbone(SegmenterConfig(backbone="dino_vits8", weights="random"), CPU)
    assert rnd.name == "dino_vits8" and rnd.patch_size == 8 and rnd.weights.kind == "random"
    auto_random = create_backbone(SegmenterConfig(backbone="auto", weights="random"), CPU)
    assert auto_random.name == "dino_vits16" and auto_random.weights.kind == "random"
    path = tmp_path / "w.pth"
    torch.save(vits16_source, path)
    auto_file = create_backbone(SegmenterConfig(backbone="auto", weights=str(path)), CPU)
    assert auto_file.name == "dino_vits16" and auto_file.weights.source == str(path)
    classic = create_backbone(SegmenterConfig(backbone="classic"), CPU)
    assert classic.name == "classic" and classic.weights.describe() == "none" and not classic.warnings
    with pytest.raises(WeightsNotFoundError):
        create_backbone(SegmenterConfig(backbone="dinov2_vits14"), CPU)


# ----------------------------------------------------------------------------- classic


def test_classic_features_shape_and_determinism() -> None:
    bb = ClassicBackbone(CPU)
    assert isinstance(bb, Backbone) and bb.patch_size == 8
    img = _image(64, 96)
    f1 = bb.patch_features([img, img[:32]])
    f2 = ClassicBackbone(CPU).patch_features([img.copy()])
    assert f1[0].shape == (8, 12, classic_mod.FEATURE_DIM) and f1[1].shape == (4, 12, classic_mod.FEATURE_DIM)
    assert f1[0].dtype == torch.float32 and f1[0].device == CPU
    assert torch.equal(f1[0], f2[0])
    assert torch.isfinite(f1[0]).all()
    flat = ClassicBackbone(CPU).patch_features([np.full((16, 16, 3), 128, np.uint8)])[0]
    assert torch.isfinite(flat).all()
    assert flat[..., :-2].abs().max() < 1e-5  # flat image: only the position columns vary
    assert flat[..., -2:].abs().max() > 0.1
    with pytest.raises(ValueError, match="multiple of 8"):
        bb.patch_features([_image(20, 24)])


def test_classic_cosine_groups_colours() -> None:
    """Patches of the same colour have cosine ~1, different colours negative (clipped by the graph)."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 40, 40)
    img[:, 32:] = (40, 60, 200)
    img = np.clip(img.astype(int) + np.random.default_rng(0).integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    f = ClassicBackbone(CPU).patch_features([img])[0].reshape(-1, classic_mod.FEATURE_DIM)
    f = torch.nn.functional.normalize(f, dim=1)
    cos = (f @ f.T).reshape(8, 8, 8, 8)
    assert cos[2, 1, 5, 2] > 0.5  # same (left) colour region, a few patches apart
    assert cos[2, 1, 2, 6] < 0.0  # across the colour boundary


def test_rgb_to_lab_reference_values() -> None:
    lab = classic_mod.rgb_to_lab(np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0]]], np.uint8))[0]
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(lab[2], [0, 0, 0], atol=0.05)


@pytest.mark.shared_data
def test_classic_kmeans_regions_on_a_real_photo(shared_data: Path) -> None:
    from PIL import Image
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    from clasp_engine.images import load_image, resize_to_grid

    img = resize_to_grid(load_image(shared_data / "cocostuff/images/000000010005.jpg"), 448, 8)
    gt = np.asarray(Image.open(shared_data / "cocostuff/labels/000000010005.png"))
    gt = np.asarray(Image.fromarray(gt).resize((img.shape[1] // 8, img.shape[0] // 8), Image.NEAREST))
    feats = ClassicBackbone(CPU).patch_features([img])[0].numpy()
    valid = gt != 255
    k = len(np.unique(gt[valid]))
    pred = KMeans(k, n_init=4, random_state=0).fit_predict(feats.reshape(-1, feats.shape[-1])).reshape(gt.shape)
    _, pi = np.unique(pred[valid], return_inverse=True)
    _, gi = np.unique(gt[valid], return_inverse=True)
    conf = np.zeros((pi.max() + 1, gi.max() + 1))
    np.add.at(conf, (pi, gi), 1)
    r, c = linear_sum_assignment(-conf)
    accuracy = conf[r, c].sum() / valid.sum()
    assert accuracy > 0.4, accuracy  # measured ~0.55 (random labels give ~1/k)


# ----------------------------------------------------------------------------- "auto" preference


def test_auto_prefers_dinov2_reg_then_s16_then_s8(tmp_path: Path) -> None:
    from clasp_engine.backbones import AUTO_PREFERENCE, auto_backbone_name

    assert AUTO_PREFERENCE == ("dinov2_vits14_reg", "dino_vits16", "dino_vits8")
    assert auto_backbone_name(None, tmp_path) is None
    (tmp_path / "dino_vitbase8_pretrain.pth").write_bytes(b"fake")  # not in the preference list
    assert auto_backbone_name(None, tmp_path) is None
    (tmp_path / "dino_deitsmall8_pretrain.pth").write_bytes(b"fake")
    assert auto_backbone_name(None, tmp_path) == "dino_vits8"
    (tmp_path / "vit_small_patch16_224.dino.safetensors").write_bytes(b"fake")  # timm's name counts too
    assert auto_backbone_name(None, tmp_path) == "dino_vits16"
    (tmp_path / "dinov2_vits14_reg4_pretrain.pth").write_bytes(b"fake")
    assert auto_backbone_name(None, tmp_path) == "dinov2_vits14_reg"
    assert auto_backbone_name(None, tmp_path / "elsewhere") is None
    assert auto_backbone_name("random", tmp_path) == "dino_vits16"
    # create_backbone really takes the preferred file (a fake one fails to load, naming it).
    with pytest.raises(ConfigError, match="dinov2_vits14_reg4_pretrain.pth"):
        create_backbone(SegmenterConfig(backbone="auto"), CPU, weights_dir=tmp_path)


def test_auto_builds_dinov2_reg_from_its_official_file(tmp_path: Path) -> None:
    source = {k: v.clone() for k, v in _other_init("dinov2_vits14_reg").state_dict().items()}
    torch.save(_to_official_dinov2(source, registers=True), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    torch.save(source, tmp_path / "unused.pth")
    (tmp_path / "dino_deitsmall16_pretrain.pth").write_bytes(b"never read: a better backbone is present")
    bb = create_backbone(SegmenterConfig(backbone="auto"), CPU, weights_dir=tmp_path)
    assert bb.name == "dinov2_vits14_reg" and bb.patch_size == 14 and bb.num_prefix_tokens == 5
    assert bb.weights.source == str(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert _features(bb, _image(28, 42)).shape == (2, 3, 384)


def test_engine_reads_no_weights_env(tmp_path: Path, monkeypatch, vits16_source) -> None:
    """CLASP_WEIGHTS_DIR is the settings' business: the engine only takes weights_dir."""
    torch.save(vits16_source, tmp_path / "dino_deitsmall16_pretrain.pth")
    monkeypatch.setenv("CLASP_WEIGHTS_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="FALLING BACK"):
        assert create_backbone(SegmenterConfig(backbone="auto"), CPU).name == AUTO_FALLBACK_NAME
    assert create_backbone(SegmenterConfig(backbone="auto"), CPU, weights_dir=tmp_path).name == "dino_vits16"


def test_no_download_when_not_allowed(monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("a download was tried")

    monkeypatch.setattr(weights_mod, "download_weights", no_network)
    with pytest.raises(WeightsNotFoundError, match="allow_download=False"):
        ViTBackbone.create("dino_vits16", None, CPU, allow_download=False)


# ----------------------------------------------------------------------------- device execution


def test_forward_split_on_oom_matches_the_whole_batch() -> None:
    from clasp_engine.backbones.execution import forward_split_on_oom

    calls: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2 + torch.arange(x.shape[1])

    x = torch.randn(7, 5)
    splits: list[int] = []
    out = forward_split_on_oom(fn, x, on_split=splits.append)
    assert torch.equal(out, x * 2 + torch.arange(5))
    assert splits == [7, 3, 4] and calls == [7, 3, 1, 2, 4, 2, 2]
    with pytest.raises(torch.OutOfMemoryError):  # a single sample that does not fit still fails
        forward_split_on_oom(lambda t: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")), x[:1])
    with pytest.raises(ValueError):  # other errors are not retried
        forward_split_on_oom(lambda t: (_ for _ in ()).throw(ValueError("bad")), x)


def test_vit_forward_splits_a_batch_that_runs_out_of_memory(monkeypatch) -> None:
    bb = ViTBackbone.create("dino_vits16", "random", CPU, features="keys", max_batch=8)
    images = np.stack([_image(32, 48, seed) for seed in range(5)])
    whole = bb.batch_features(images)
    sizes: list[int] = []
    real = bb.model.forward_features

    def limited(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    monkeypatch.setattr(bb.model, "forward_features", limited)
    split = bb.batch_features(images)
    assert sizes == [5, 2, 3, 1, 2]
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert bb.batch_limits == {(32, 48): 2}  # 5 failed: halved; 3 (part of that 5) says nothing new
    sizes.clear()
    bb.batch_features(images[:3])  # later batches of that size start at the size that fitted
    assert sizes == [2, 1]
    assert bb.patch_features([_image(48, 32)])[0].shape == (3, 2, 384)  # other sizes are unaffected


def test_device_helpers_on_cpu(monkeypatch) -> None:
    from clasp_engine.backbones import execution

    batch = _image(8, 8)[None]
    t = execution.to_device(batch, CPU)
    assert t.dtype == torch.uint8 and t.device == CPU and torch.equal(t, torch.from_numpy(batch))
    assert execution.autocast_dtype(CPU) is None
    with execution.autocast_for(CPU):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert execution.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert execution.autocast_dtype(torch.device("cuda")) == torch.float16


def test_vit_uses_fused_attention(monkeypatch) -> None:
    bb = _random("dino_vits16")
    assert all(block.attn.fused_attn for block in bb.model.blocks)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    _features(bb, _image(32, 32))
    assert len(calls) == len(bb.model.blocks)
