"""Overlay pictures of segmented images, written next to the results for people to look at.

An overlay is a view of a result, not the result (the masks are in SQL), so a
failure to write one is reported per image and never stops the batch.
"""

from __future__ import annotations

import re
from pathlib import Path
import numpy as np

from clasp_engine.errors import reason_of


def overlay_name(image_id: int, uri: str) -> str:
    """`<image id>-<file stem>.jpg`: sortable by id, recognisable by name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(uri.rstrip("/").split("?")[0]).stem)[:60].strip("._")
    return f"{image_id:06d}-{stem or 'image'}.jpg"


def write_overlays(directory: Path, images: list[tuple[int, str, np.ndarray, np.ndarray]]) -> dict[int, str]:
    """Write the overlay of each (image id, uri, RGB image, label map) as a JPEG in `directory`.

    Returns image id -> why its overlay could not be written (an unwritable or full
    folder fails every image, with that error).
    """
    from PIL import Image

    from clasp_engine.render import overlay

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - PermissionError, a file in the way, read-only disk
        reason = f"{directory}: {reason_of(exc)}"
        return {image_id: reason for image_id, *_ in images}
    failed = {}
    for image_id, uri, image, labels in images:
        try:
            Image.fromarray(overlay(image, labels)).save(directory / overlay_name(image_id, uri), quality=85)
        except Exception as exc:  # noqa: BLE001 - one overlay never sinks the batch's results
            failed[image_id] = reason_of(exc)
    return failed

