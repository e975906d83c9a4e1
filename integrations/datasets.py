"""Reading a labelled dataset folder (the format of ../shared/data and the held-out set).

Layout::

    DATASET/images/<id>.(jpg|jpeg|png)
    DATASET/labels/<id>.png          single-channel class ids (255 = ignore) or region ids
    DATASET/classes.txt              `index<TAB>name`, class datasets only
    DATASET/labels_all/<id>_<k>.png  every annotator, class-agnostic datasets (BSDS500)

A folder with `classes.txt` is a *class* dataset (Hungarian mIoU / accuracy).
One without it is *class-agnostic* (region measures: covering / PRI / VI) and
is scored against every annotator in `labels_all/` when that folder exists,
else against `labels/`.

Images are decoded in stored pixel order (no EXIF rotation), because that is
the order the label maps were drawn in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clasp_engine.errors import InvalidImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """The folder is not a dataset in the expected layout (the message says what is missing)."""


class PairError(ValueError):
    """One image / label pair cannot be scored (unreadable, size mismatch ...). The pair is skipped."""

    def __init__(self, image_id: str, reason: str):
        self.image_id = image_id
        self.reason = reason
        super().__init__(f"{image_id}: {reason}")


@dataclass(frozen=True)
class Pair:
    image_id: str
    image_path: Path
    label_paths: tuple[Path, ...]  # one per annotator (class datasets: exactly one)


@dataclass
class Dataset:
    root: Path
    kind: str  # "class" | "region"
    pairs: list[Pair]
    class_names: list[str] = field(default_factory=list)
    # ids that have an image but no label map (or the reverse), reported and skipped
    unpaired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def read_classes(path: Path) -> list[str]:
    """`classes.txt`: `index<TAB>name` per line; returns names indexed 0..max index."""
    names: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t", 1)
        if len(parts) != 2:
            parts = line.split(None, 1)
        try:
            idx = int(parts[0])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}:{lineno}: expected 'index<TAB>name', got {line!r}") from None
        if idx < 0 or idx >= 255:
            raise DatasetError(f"{path}:{lineno}: class index {idx} outside 0..254 (255 is the ignore value)")
        names[idx] = parts[1].strip() if len(parts) > 1 else str(idx)
    if not names:
        raise DatasetError(f"{path}: no classes listed")
    n = max(names) + 1
    return [names.get(i, str(i)) for i in range(n)]


def open_dataset(root: str | Path) -> Dataset:
    """List the pairs of a dataset folder (nothing is decoded yet)."""
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no images/ folder; expected images/<id>.jpg|png and labels/<id>.png")
    if not labels_dir.is_dir():
        raise DatasetError(f"{root}: no labels/ folder; expected labels/<id>.png next to images/")

    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            images.setdefault(p.stem, p)
    labels = {p.stem: p for p in sorted(labels_dir.glob("*.png")) if p.is_file()}

    classes_file = root / "classes.txt"
    kind = "class" if classes_file.is_file() else "region"
    class_names = read_classes(classes_file) if kind == "class" else []

    annotators: dict[str, list[Path]] = {}
    all_dir = root / "labels_all"
    if kind == "region" and all_dir.is_dir():
        pattern = re.compile(r"^(.*)_(\d+)$")
        found: dict[str, list[tuple[int, Path]]] = {}
        for p in all_dir.glob("*.png"):
            m = pattern.match(p.stem)
            if m:
                found.setdefault(m.group(1), []).append((int(m.group(2)), p))
        annotators = {k: [p for _, p in sorted(v)] for k, v in found.items()}

    pairs, unpaired = [], []
    for image_id, image_path in images.items():
        if image_id in annotators:
            pairs.append(Pair(image_id, image_path, tuple(annotators[image_id])))
        elif image_id in labels:
            pairs.append(Pair(image_id, image_path, (labels[image_id],)))
        else:
            unpaired.append((image_id, "no label map in labels/"))
    for label_id in sorted(set(labels) - set(images)):
        unpaired.append((label_id, "label map without an image in images/"))
    if not pairs and not unpaired:
        raise DatasetError(f"{root}: images/ holds no .jpg / .png files")
    return Dataset(root=root, kind=kind, pairs=pairs, class_names=class_names, unpaired=unpaired)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB in stored pixel order. Raises InvalidImageError."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except FileNotFoundError:
        raise InvalidImageError(str(path), "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(str(path), f"cannot be decoded as an image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header only. Raises InvalidImageError."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()
            return h, w
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImageError(str(path), f"cannot be decoded as an image ({exc})") from None


def read_label_map(path: Path) -> np.ndarray:
    """A single-channel label PNG as a 2-D integer array. Raises InvalidImageError."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "P", "1"):
                arr = np.asarray(im if im.mode != "1" else im.convert("L"))
            elif im.mode.startswith("I"):
                arr = np.asarray(im).astype(np.int64)
            elif im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im)[..., :3]
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise InvalidImageError(str(path), "colour label map; expected single-channel ids (mode L)")
                arr = rgb[..., 0]
            else:
                raise InvalidImageError(str(path), f"label map of mode {im.mode}; expected single-channel ids")
            return np.ascontiguousarray(arr)
    except InvalidImageError:
        raise
    except FileNotFoundError:
        raise InvalidImageError(str(path), "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidImageError(str(path), f"cannot be decoded as a label map ({exc})") from None


def load_labels(pair: Pair, shape: tuple[int, int]) -> list[np.ndarray]:
    """Every annotator's map of a pair, checked against the image's (height, width). Raises PairError."""
    out = []
    for p in pair.label_paths:
        try:
            lab = read_label_map(p)
        except InvalidImageError as exc:
            raise PairError(pair.image_id, f"unreadable label map {p.name}: {exc.reason}") from None
        if lab.shape != tuple(shape):
            raise PairError(
                pair.image_id,
                f"label map {p.name} is {lab.shape[1]}×{lab.shape[0]} but the image is {shape[1]}×{shape[0]}",
            )
        out.append(lab)
    return out


def prediction_path(pred_dir: Path, image_id: str) -> Path:
    return Path(pred_dir) / f"{image_id}.png"


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """Save a label map as a PNG (8-bit when it fits, else 16-bit)."""
    labels = np.asarray(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.min() >= 0 and labels.max() <= 255:
        Image.fromarray(labels.astype(np.uint8)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)
