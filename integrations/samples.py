"""Sample photos bundled with dependencies, used by the demo (nothing is copied into the repo).

- scikit-learn: `china.jpg`, `flower.jpg` (see sklearn/datasets/images/README.txt for licences)
- matplotlib: `grace_hopper.jpg` (US Navy photo, public domain)
"""

from __future__ import annotations

from pathlib import Path


def sample_image_paths() -> list[Path]:
    import matplotlib.cbook
    import sklearn.datasets

    sk_dir = Path(sklearn.datasets.__file__).parent / "images"
    paths = sorted(sk_dir.glob("*.jpg"))
    paths.append(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return [p for p in paths if p.is_file()]
