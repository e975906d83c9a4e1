"""CLASP engine: training-free region proposals by adaptive spectral clustering.

Pure functions over arrays plus small dataclasses; no I/O beyond decoding an
image it is handed. Typical use::

    from clasp_engine import Segmenter, SegmenterConfig
    seg = Segmenter(SegmenterConfig(backbone="classic"))
    result = seg("photo.jpg")          # -> Segmentation
    result.labels                      # (H, W) label map, 0..K-1
    result.diagnostics.to_dict()       # K, eigengaps, silhouettes, timings ...
"""

__version__ = "0.1.0"

from clasp_engine.config import SegmenterConfig  # noqa: E402
from clasp_engine.errors import (  # noqa: E402
    ClaspError,
    ConfigError,
    InvalidImageError,
    WeightsNotFoundError,
)
from clasp_engine.result import Diagnostics, Segment, Segmentation  # noqa: E402


def __getattr__(name: str):
    # Segmenter pulls in torch/timm; import it lazily so `import clasp_engine`
    # stays cheap for code that only needs the result types.
    if name == "Segmenter":
        from clasp_engine.segmenter import Segmenter

        return Segmenter
    raise AttributeError(name)


__all__ = [
    "__version__",
    "ClaspError",
    "ConfigError",
    "Diagnostics",
    "InvalidImageError",
    "Segment",
    "Segmentation",
    "Segmenter",
    "SegmenterConfig",
    "WeightsNotFoundError",
]
