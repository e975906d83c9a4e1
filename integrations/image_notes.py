"""What a reader should know about an image that decoded fine: animated (only its first frame is
segmented), unreadable EXIF (its orientation could not be applied).

    notes = decode_notes(data)                     # e.g. ["animated (12 frames): only the first frame was segmented"]
    with collect_decode_warnings() as caught: ...  # the decoder's warnings, as notes

The decoder (clasp_engine.images) takes an animation's first frame without a word,
and Pillow reports corrupt EXIF as a Python warning without the file's name (once
per process at most). The segment flow attaches these notes to the image's name
in its summary and log.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator


def decode_notes(data: bytes) -> list[str]:
    """Notes from the image's header (no full decode); [] when there is nothing to say or it cannot be opened."""
    from PIL import Image

    notes = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            if getattr(img, "is_animated", False):
                frames = getattr(img, "n_frames", None)
                notes.append(f"animated ({frames} frames): only the first frame was segmented")
    except Exception:  # noqa: BLE001 - undecodable images fail in the decoder, with their reason
        pass
    return notes


@contextlib.contextmanager
def collect_decode_warnings() -> Iterator[list[str]]:
    """Record the warnings raised inside the block (every time, not once per process) as notes."""
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            yield caught
        finally:
            for w in records:
                text = " ".join(str(w.message).split())
                if "exif" in text.lower():
                    text = f"{text} (EXIF unreadable: orientation not applied)"
                caught.append(text)
