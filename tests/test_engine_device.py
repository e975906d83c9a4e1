"""The batched engine on the test device: CPU by default, CUDA with CLASP_TEST_DEVICE=cuda
(benchmarks/gpu_check.sh). The same functions run on either; on CUDA the out-of-memory split
is a real one (a backbone that allocates more than the GPU holds for large batches)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clasp_engine import SegmenterConfig
from clasp_engine.backbones.base import WeightsInfo
from clasp_engine.cluster import KMeansProblems, kmeans_batch
from clasp_engine.graph import affinity_batch, leading_eigenpairs_batch, normalised_affinity
from clasp_engine.segmenter import Segmenter

DEVICE = torch.device(os.environ.get("CLASP_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("CLASP_TEST_DEVICE=cuda but torch sees no CUDA device", allow_module_level=True)


class DeviceBackbone:
    """Per-patch mean colour and its complement, computed on the test device; optionally memory-hungry."""

    name = "device-fake"
    patch_size = 8

    def __init__(self, bytes_per_image: int = 0):
        self.weights = WeightsInfo("none")
        self.device = DEVICE
        self.bytes_per_image = bytes_per_image
        self.calls: list[int] = []

    def batch_features(self, batch: np.ndarray) -> torch.Tensor:
        self.calls.append(len(batch))
        if self.bytes_per_image:
            if DEVICE.type == "cuda":  # a real allocation: raises torch.OutOfMemoryError when it does not fit
                scratch = torch.empty(self.bytes_per_image * len(batch), dtype=torch.uint8, device=DEVICE)
                del scratch
            elif len(batch) > 2:
                raise torch.OutOfMemoryError("simulated on CPU: out of memory")
        x = torch.from_numpy(batch).to(DEVICE).float() / 255.0
        b, h, w, _ = x.shape
        p = self.patch_size
        m = x.reshape(b, h // p, p, w // p, p, 3).mean(dim=(2, 4))
        return torch.cat([m, 1 - m], dim=-1)


def scenes(count: int) -> list[np.ndarray]:
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        img = np.zeros((96, 128, 3), np.float64)
        img[:] = rng.integers(0, 256, 3)
        for _ in range(1 + i % 3):
            y, x = rng.integers(0, 60), rng.integers(0, 80)
            img[y:y + 36, x:x + 48] = rng.integers(0, 256, 3)
        out.append(np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("solver", ["auto", "dense", "subspace"])
def test_eigenpairs_on_device_match_float64_reference(solver):
    W = affinity_batch(torch.randn(4, 300, 16, generator=torch.Generator().manual_seed(0)).to(DEVICE) + 0.3)
    spectra = leading_eigenpairs_batch(W, 12, solver=solver)
    ref = torch.linalg.eigvalsh(normalised_affinity(W.double().cpu())).flip(-1)[:, :12].numpy()
    for s, r in zip(spectra, ref):
        np.testing.assert_allclose(s.eigenvalues, r, atol=2e-3)
        assert s.eigenvectors.device.type == DEVICE.type


def test_kmeans_on_device_equals_cpu():
    x = torch.nn.functional.normalize(torch.randn(6, 400, 5, generator=torch.Generator().manual_seed(1)), dim=-1)
    problems = dict(ks=torch.tensor([2, 3, 4, 5, 3, 2]), seeds=[0, 1, 2, 3, 4, 5])
    cpu, _ = kmeans_batch(KMeansProblems(points=x, **problems))
    dev, _ = kmeans_batch(KMeansProblems(points=x.to(DEVICE), **problems))
    from sklearn.metrics import adjusted_rand_score

    for a, b in zip(cpu, dev.cpu()):
        assert adjusted_rand_score(a.numpy(), b.numpy()) > 0.999


@pytest.mark.parametrize("variant", ["patch", "pixel"])
def test_batch_invariance_on_device(variant):
    imgs = scenes(8)
    seg = Segmenter(SegmenterConfig(variant=variant, max_side=128), backbone=DeviceBackbone())
    together = seg.segment_batch(imgs)
    assert seg.backbone.calls[-1] == 8
    for img, t in zip(imgs, together):
        alone = seg(img)
        assert alone.k == t.k and np.array_equal(alone.labels, t.labels)
        assert t.diagnostics.device.startswith(DEVICE.type)


def test_out_of_memory_batch_is_split_and_the_run_goes_on():
    imgs = scenes(4)
    if DEVICE.type == "cuda":
        total = torch.cuda.get_device_properties(DEVICE).total_memory
        hungry = DeviceBackbone(bytes_per_image=int(total * 0.4))  # 4 images: 1.6x the GPU; 2 fit
    else:
        hungry = DeviceBackbone(bytes_per_image=1)  # simulated: more than 2 images raise
    seg = Segmenter(SegmenterConfig(variant="patch", max_side=128), backbone=hungry)
    out = seg.segment_batch(imgs)
    assert hungry.calls[0] == 4 and max(hungry.calls[1:]) <= 2
    ref = Segmenter(SegmenterConfig(variant="patch", max_side=128), backbone=DeviceBackbone())
    for img, r in zip(imgs, out):
        assert np.array_equal(r.labels, ref(img).labels)
